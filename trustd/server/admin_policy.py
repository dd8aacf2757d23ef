"""Admin API methods for policy and rollouts (SPEC §8), on the same admin service."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from grpclib.server import Stream

from trustd import durations
from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.edge import Edge
from trustd.audit.events import Actor
from trustd.errors import InvalidArgumentError, UnavailableError
from trustd.policy.effective import PolicySet
from trustd.policy.errors import PolicyValidationError
from trustd.policy.hub import ApplyResult, merge_objects
from trustd.policy.loader import load_text
from trustd.policy.safety import diff
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


def _report(doc: Any) -> pb.PolicyReport:
    return pb.PolicyReport(document=json.dumps(doc, default=str).encode())


def enforcement(ps: PolicySet, statuses: Sequence[ProxyStatus]) -> list[dict[str, Any]]:
    """Per server port and per client destination: what the proxy reports it enforces
    against what the current policy says (``agrees`` False once it has acknowledged the
    current version and still enforces something else: the wire and ``policy show`` differ)."""
    rows: list[dict[str, Any]] = []
    for st in statuses:
        current = st.acked_version >= ps.version
        for ib in st.inbound:
            want = ps.peer_mode(st.spiffe_id, ib.port, st.proxy_id).value
            rows.append({
                "proxyId": st.proxy_id, "spiffeId": str(st.spiffe_id), "side": "server",
                "port": ib.port, "enforced": ib.mode, "policy": want,
                "plaintextTotal": ib.plaintext_total, "tlsTotal": ib.tls_total,
                "plaintextSinceMode": ib.plaintext_since_mode,
                "agrees": ib.mode == want or not current,
            })  # fmt: skip
        for dest in st.destinations:
            transport = ps.client_transport(
                st.spiffe_id, dest.spiffe_id, dest.port, st.proxy_id
            ).value
            rows.append({
                "proxyId": st.proxy_id, "spiffeId": str(st.spiffe_id), "side": "client",
                "destination": str(dest.spiffe_id), "port": dest.port,
                "enforced": dest.transport, "policy": transport,
                "mtlsTotal": dest.mtls_total, "plaintextTotal": dest.plaintext_total,
                "agrees": dest.transport == transport or not current,
            })  # fmt: skip
    return rows


class PolicyAdmin(Edge):
    """The admin API's policy and rollout methods (SPEC §8), mixed into AdminService."""

    policy: PolicyPlane | None

    def actor(self, stream: Stream[Any, Any]) -> Actor:
        raise NotImplementedError

    def _plane(self) -> PolicyPlane:
        if self.policy is None:
            raise UnavailableError("this server has no policy plane")
        return self.policy

    async def PolicyApply(
        self, stream: Stream[pb.ApplyPolicyRequest, pb.ApplyPolicyResponse]
    ) -> None:
        async def apply(s: Stream[Any, Any], req: pb.ApplyPolicyRequest) -> pb.ApplyPolicyResponse:
            result = self._plane().apply(
                self.actor(s),
                _documents(req.files),
                prune=req.prune,
                force=req.force,
                dry_run=req.dry_run,
            )
            return _applied(result)

        await self.unary(stream, "PolicyApply", apply)

    async def PolicyShow(self, stream: Stream[pb.ShowPolicyRequest, pb.PolicyReport]) -> None:
        async def show(s: Stream[Any, Any], req: pb.ShowPolicyRequest) -> pb.PolicyReport:
            sid = SpiffeId.parse(req.spiffe_id)
            port = req.port if req.HasField("port") else None
            return _report(self._plane().current().show(sid, port))

        await self.unary(stream, "PolicyShow", show)

    async def PolicyDiff(self, stream: Stream[pb.DiffPolicyRequest, pb.DiffPolicyResponse]) -> None:
        async def diff_(s: Stream[Any, Any], req: pb.DiffPolicyRequest) -> pb.DiffPolicyResponse:
            current = self._plane().current()
            objects = _documents(req.files)
            proposed = objects if req.prune else list(merge_objects(current.objects, objects))
            change = diff(current, proposed)
            return pb.DiffPolicyResponse(
                empty=change.is_empty,
                lines=change.lines(),
                changes=json.dumps(change.to_json(), default=str).encode(),
            )

        await self.unary(stream, "PolicyDiff", diff_)

    async def PolicyStatus(self, stream: Stream[pb.Empty, pb.PolicyReport]) -> None:
        async def status(s: Stream[Any, Any], req: pb.Empty) -> pb.PolicyReport:
            plane = self._plane()
            ps = plane.current()
            statuses = plane.hub.statuses(max_age=STATUS_MAX_AGE)
            proxies = [st.to_json() for st in statuses]
            rows = enforcement(ps, statuses)
            return _report({
                "version": ps.version,
                "hash": ps.content_hash,
                "objects": [o.ref for o in ps.objects],
                "clientTlsOffGlobal": ps.client_tls_off_global,
                "pending": bool(ps.pending),
                "proxies": proxies,
                "enforcement": rows,
                "converged": all(p.get("ackedVersion", 0) >= ps.version for p in proxies)
                and all(r["agrees"] for r in rows),
            })  # fmt: skip

        await self.unary(stream, "PolicyStatus", status)

    async def PolicyClientTls(
        self, stream: Stream[pb.ClientTlsRequest, pb.ApplyPolicyResponse]
    ) -> None:
        async def switch(s: Stream[Any, Any], req: pb.ClientTlsRequest) -> pb.ApplyPolicyResponse:
            return _applied(self._plane().client_tls_off(self.actor(s), req.off, force=req.force))

        await self.unary(stream, "PolicyClientTls", switch)

    async def _rollout(self, stream: Stream[Any, pb.PolicyReport], command: str) -> None:
        async def step(s: Stream[Any, Any], req: Any) -> pb.PolicyReport:
            kwargs: dict[str, Any] = {}
            if isinstance(req, pb.StartRolloutRequest):
                kwargs = {"selector": req.selector, "target": req.target, "canary": req.canary}
                if req.step_timeout:
                    try:
                        kwargs["step_timeout"] = durations.parse(req.step_timeout)
                    except ValueError as exc:
                        raise InvalidArgumentError(str(exc)) from None
            return _report(self._plane().rollout(self.actor(s), command, **kwargs).to_json())

        await self.unary(stream, f"Rollout{command.capitalize()}", step)

    async def RolloutStart(self, stream: Stream[pb.StartRolloutRequest, pb.PolicyReport]) -> None:
        await self._rollout(stream, "start")

    async def RolloutStatus(self, stream: Stream[pb.Empty, pb.PolicyReport]) -> None:
        await self._rollout(stream, "status")

    async def RolloutPause(self, stream: Stream[pb.Empty, pb.PolicyReport]) -> None:
        await self._rollout(stream, "pause")

    async def RolloutResume(self, stream: Stream[pb.Empty, pb.PolicyReport]) -> None:
        await self._rollout(stream, "resume")

    async def RolloutAbort(self, stream: Stream[pb.Empty, pb.PolicyReport]) -> None:
        await self._rollout(stream, "abort")
