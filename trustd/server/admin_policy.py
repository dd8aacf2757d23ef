"""Admin API methods for policy and rollouts (SPEC §8), on the same admin service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trustd import durations
from trustd.errors import InvalidArgumentError
from trustd.policy.effective import PolicySet
from trustd.policy.errors import PolicyValidationError
from trustd.policy.hub import ApplyResult, merge_objects
from trustd.policy.loader import load_text
from trustd.policy.safety import diff
from trustd.policy.status import ProxyStatus
from trustd.server.policy_plane import STATUS_MAX_AGE, PolicyPlane
from trustd.spiffeid import SpiffeId

if TYPE_CHECKING:
    from trustd.server.admin import AdminService


def _documents(d: dict[str, Any]) -> list[Any]:
    files = d.get("files")
    if not isinstance(files, list) or not files:
        raise InvalidArgumentError("no policy documents: pass -f FILE")
    objects: list[Any] = []
    problems: list[str] = []
    for f in files:
        try:
            objects.extend(load_text(str(f.get("text", "")), source=str(f.get("name", "<input>"))))
        except PolicyValidationError as exc:
            problems.extend(exc.problems)
    if problems:
        raise PolicyValidationError(problems)
    return objects


def _apply_json(result: ApplyResult) -> dict[str, Any]:
    return {
        "version": result.policy.version,
        "hash": result.policy.content_hash,
        "published": result.published,
        "forcedReasons": list(result.forced_reasons),
        "diff": result.diff.lines(),
    }


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


def register(admin: AdminService, plane: PolicyPlane) -> None:
    def actor(s: Any) -> Any:
        return admin.actor(s)

    async def apply(s: Any, d: dict[str, Any]) -> Any:
        result = plane.apply(
            actor(s),
            _documents(d),
            prune=bool(d.get("prune")),
            force=bool(d.get("force")),
            dry_run=bool(d.get("dry_run")),
        )
        return _apply_json(result)

    async def show(s: Any, d: dict[str, Any]) -> Any:
        sid = SpiffeId.parse(str(d.get("spiffe_id", "")))
        port = d.get("port")
        return plane.current().show(sid, int(port) if port is not None else None)

    async def diff_(s: Any, d: dict[str, Any]) -> Any:
        current = plane.current()
        objects = _documents(d)
        proposed = objects if d.get("prune") else list(merge_objects(current.objects, objects))
        change = diff(current, proposed)
        return {"empty": change.is_empty, "lines": change.lines(), **change.to_json()}

    async def status(s: Any, d: dict[str, Any]) -> Any:
        ps = plane.current()
        statuses = plane.hub.statuses(max_age=STATUS_MAX_AGE)
        proxies = [st.to_json() for st in statuses]
        rows = enforcement(ps, statuses)
        return {
            "version": ps.version,
            "hash": ps.content_hash,
            "objects": [o.ref for o in ps.objects],
            "clientTlsOffGlobal": ps.client_tls_off_global,
            "pending": bool(ps.pending),
            "proxies": proxies,
            "enforcement": rows,
            "converged": all(p.get("ackedVersion", 0) >= ps.version for p in proxies)
            and all(r["agrees"] for r in rows),
        }

    async def client_tls(s: Any, d: dict[str, Any]) -> Any:
        result = plane.client_tls_off(actor(s), bool(d.get("off")), force=bool(d.get("force")))
        return _apply_json(result)

    def rollout(command: str) -> Any:
        async def fn(s: Any, d: dict[str, Any]) -> Any:
            kwargs: dict[str, Any] = {}
            if command == "start":
                kwargs = {
                    "selector": str(d.get("selector", "")),
                    "target": str(d.get("target", "")),
                    "canary": int(d.get("canary") or 0),
                }
                if d.get("step_timeout"):
                    try:
                        kwargs["step_timeout"] = durations.parse(str(d["step_timeout"]))
                    except ValueError as exc:
                        raise InvalidArgumentError(str(exc)) from None
            return plane.rollout(actor(s), command, **kwargs).to_json()

        return fn

    for name, fn in {
        "PolicyApply": apply,
        "PolicyShow": show,
        "PolicyDiff": diff_,
        "PolicyStatus": status,
        "PolicyClientTls": client_tls,
        "RolloutStart": rollout("start"),
        "RolloutStatus": rollout("status"),
        "RolloutPause": rollout("pause"),
        "RolloutResume": rollout("resume"),
        "RolloutAbort": rollout("abort"),
    }.items():
        admin.unary(name, fn)
