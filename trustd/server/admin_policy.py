"""Admin API methods for policy and rollouts (SPEC §8), on the same admin service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from grpclib.server import Stream

from trustd import durations
from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.convert import proxy_status_message, timestamp
from trustd.api.edge import Edge, unary
from trustd.audit.events import Actor
from trustd.errors import InvalidArgumentError, UnavailableError
from trustd.policy.effective import PolicySet
from trustd.policy.errors import PolicyValidationError
from trustd.policy.hub import ApplyResult, merge_objects
from trustd.policy.loader import load_text
from trustd.policy.rollout import RolloutStatus
from trustd.policy.safety import PolicyDiff, diff
from trustd.policy.status import ProxyStatus
from trustd.server.policy_plane import STATUS_MAX_AGE, PolicyPlane
from trustd.spiffeid import SpiffeId


def _documents(files: Sequence[pb.PolicyFile]) -> list[Any]:
    if not files:
        raise InvalidArgumentError("no policy documents: pass -f FILE")
    objects: list[Any] = []
    problems: list[str] = []
    for f in files:
        try:
            objects.extend(load_text(f.text, source=f.name or "<input>"))
        except PolicyValidationError as exc:
            problems.extend(exc.problems)
    if problems:
        raise PolicyValidationError(problems)
    return objects


def _applied(result: ApplyResult) -> pb.ApplyPolicyResponse:
    return pb.ApplyPolicyResponse(
        version=result.policy.version,
        hash=result.policy.content_hash,
        published=result.published,
        forced_reasons=list(result.forced_reasons),
        diff=result.diff.lines(),
    )


def enforcement(ps: PolicySet, statuses: Sequence[ProxyStatus]) -> list[pb.Enforcement]:
    """Per server port and per client destination: what the proxy reports it enforces
    against what the current policy says (``agrees`` False once it has acknowledged the
    current version and still enforces something else: the wire and ``policy show`` differ)."""
    rows: list[pb.Enforcement] = []
    for st in statuses:
        current = st.acked_version >= ps.version
        for ib in st.inbound:
            want = ps.peer_mode(st.spiffe_id, ib.port, st.proxy_id).value
            rows.append(pb.Enforcement(
                proxy_id=st.proxy_id, spiffe_id=str(st.spiffe_id), side="server", port=ib.port,
                enforced=ib.mode, wanted=want, plaintext_total=ib.plaintext_total,
                tls_total=ib.tls_total, plaintext_since_mode=ib.plaintext_since_mode,
                agrees=ib.mode == want or not current,
            ))  # fmt: skip
        for dest in st.destinations:
            transport = ps.client_transport(
                st.spiffe_id, dest.spiffe_id, dest.port, st.proxy_id
            ).value
            rows.append(pb.Enforcement(
                proxy_id=st.proxy_id, spiffe_id=str(st.spiffe_id), side="client",
                destination=str(dest.spiffe_id), port=dest.port, enforced=dest.transport,
                wanted=transport, mtls_total=dest.mtls_total,
                plaintext_total=dest.plaintext_total,
                agrees=dest.transport == transport or not current,
            ))  # fmt: skip
    return rows


def _rollout_row(row: Mapping[str, Any]) -> pb.Enforcement:
    """One row of the rollout engine's enforcement table."""
    return pb.Enforcement(
        proxy_id=str(row.get("proxyId", "")),
        spiffe_id=str(row.get("spiffeId", "")),
        side=str(row.get("side", "")),
        port=int(row.get("port") or 0),
        destination=row.get("destination"),
        enforced=row.get("enforced"),
        wanted=row.get("wanted"),
        plaintext_since_mode=int(row.get("plaintextSinceMode") or 0),
        ok=bool(row.get("ok")),
        text=str(row.get("text", "")),
    )


def rollout_message(st: RolloutStatus) -> pb.RolloutStatusResponse:
    return pb.RolloutStatusResponse(
        id=st.id,
        state=st.state.value,
        step=st.step,
        step_index=st.step_index,
        phase=st.phase,
        target=st.target.value,
        selector=st.selector,
        canary=st.canary,
        canary_instances=list(st.canary_instances),
        policy_version=st.policy_version,
        waiting_for=list(st.waiting_for),
        not_enforced=list(st.not_enforced),
        enforcement=[_rollout_row(e) for e in st.enforcement],
        reason=st.reason,
        started_at=timestamp(st.started_at),
        updated_at=timestamp(st.updated_at),
    )


def diff_message(change: PolicyDiff) -> pb.DiffPolicyResponse:
    return pb.DiffPolicyResponse(
        empty=change.is_empty,
        lines=change.lines(),
        changes=[
            pb.PolicyChange(ref=c.ref, change=c.change, fields=list(c.fields))
            for c in change.objects
        ],
        client_tls_off_global=list(change.client_tls_off_global or ()),
    )


def show_message(shown: Mapping[str, Any]) -> pb.ShowPolicyResponse:
    """``PolicySet.show``'s answer as its message."""
    peer = shown.get("peerAuthentication")
    return pb.ShowPolicyResponse(
        spiffe_id=shown["spiffeId"],
        policy_version=shown["policyVersion"],
        policy_hash=shown["policyHash"],
        client_tls_off_global=shown["clientTlsOffGlobal"],
        port=shown.get("port"),
        peer_authentication=None
        if peer is None
        else pb.PeerAuthenticationDecision(
            mode=peer["mode"],
            source=peer["source"],
            instance_modes=peer["instanceModes"],
            overrides=peer.get("overrides"),
        ),
        authorization_policies=shown["authorizationPolicies"],
        client_tls_policies=shown["clientTlsPolicies"],
        overlays=shown["overlays"],
    )


class PolicyAdmin(Edge):
    """The admin API's policy and rollout methods (SPEC §8), mixed into AdminService."""

    policy: PolicyPlane | None

    def actor(self, stream: Stream[Any, Any]) -> Actor:
        raise NotImplementedError

    def _plane(self) -> PolicyPlane:
        if self.policy is None:
            raise UnavailableError("this server has no policy plane")
        return self.policy

    @unary
    async def PolicyApply(
        self, s: Stream[Any, Any], req: pb.ApplyPolicyRequest
    ) -> pb.ApplyPolicyResponse:
        result = self._plane().apply(
            self.actor(s),
            _documents(req.files),
            prune=req.prune,
            force=req.force,
            dry_run=req.dry_run,
        )
        return _applied(result)

    @unary
    async def PolicyShow(
        self, s: Stream[Any, Any], req: pb.ShowPolicyRequest
    ) -> pb.ShowPolicyResponse:
        sid = SpiffeId.parse(req.spiffe_id)
        port = req.port if req.HasField("port") else None
        return show_message(self._plane().current().show(sid, port))

    @unary
    async def PolicyDiff(
        self, s: Stream[Any, Any], req: pb.DiffPolicyRequest
    ) -> pb.DiffPolicyResponse:
        current = self._plane().current()
        objects = _documents(req.files)
        proposed = objects if req.prune else list(merge_objects(current.objects, objects))
        change = diff(current, proposed)
        return diff_message(change)

    @unary
    async def PolicyStatus(self, s: Stream[Any, Any], req: pb.Empty) -> pb.PolicyStatusResponse:
        plane = self._plane()
        ps = plane.current()
        statuses = plane.hub.statuses(max_age=STATUS_MAX_AGE)
        rows = enforcement(ps, statuses)
        return pb.PolicyStatusResponse(
            version=ps.version,
            hash=ps.content_hash,
            objects=[o.ref for o in ps.objects],
            client_tls_off_global=ps.client_tls_off_global,
            pending=bool(ps.pending),
            proxies=[proxy_status_message(st) for st in statuses],
            enforcement=rows,
            converged=all(st.acked_version >= ps.version for st in statuses)
            and all(r.agrees for r in rows),
        )

    @unary
    async def PolicyClientTls(
        self, s: Stream[Any, Any], req: pb.ClientTlsRequest
    ) -> pb.ApplyPolicyResponse:
        return _applied(self._plane().client_tls_off(self.actor(s), req.off, force=req.force))

    async def _rollout(
        self, s: Stream[Any, Any], command: str, req: pb.StartRolloutRequest | None = None
    ) -> pb.RolloutStatusResponse:
        kwargs: dict[str, Any] = {}
        if req is not None:
            kwargs = {"selector": req.selector, "target": req.target, "canary": req.canary}
            if req.step_timeout:
                try:
                    kwargs["step_timeout"] = durations.parse(req.step_timeout)
                except ValueError as exc:
                    raise InvalidArgumentError(str(exc)) from None
        return rollout_message(await self._plane().rollout_async(self.actor(s), command, **kwargs))

    @unary
    async def RolloutStart(
        self, s: Stream[Any, Any], req: pb.StartRolloutRequest
    ) -> pb.RolloutStatusResponse:
        return await self._rollout(s, "start", req)

    @unary
    async def RolloutStatus(self, s: Stream[Any, Any], req: pb.Empty) -> pb.RolloutStatusResponse:
        return await self._rollout(s, "status")

    @unary
    async def RolloutPause(self, s: Stream[Any, Any], req: pb.Empty) -> pb.RolloutStatusResponse:
        return await self._rollout(s, "pause")

    @unary
    async def RolloutResume(self, s: Stream[Any, Any], req: pb.Empty) -> pb.RolloutStatusResponse:
        return await self._rollout(s, "resume")

    @unary
    async def RolloutAbort(self, s: Stream[Any, Any], req: pb.Empty) -> pb.RolloutStatusResponse:
        return await self._rollout(s, "abort")
