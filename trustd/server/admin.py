"""The admin API on the admin Unix socket (0600): what the ``trustd`` CLI calls.

Only the socket's owner or root gets in; the kernel says who the caller is
(SO_PEERCRED), and that identity is the actor of every audit event.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from trustd import durations, peercred
from trustd.ca.issuer import IssuedSvid
from trustd.errors import InvalidArgumentError
from trustd.server.audit_hook import Actor
from trustd.server.core import ServerCore
from trustd.server.rpc import JsonService, run_blocking
from trustd.store.base import AgentRecord, AuthorityRecord

SERVICE = "trustd.admin.v1.Admin"


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def authority_json(r: AuthorityRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "state": r.state,
        "tainted": r.tainted,
        "revoked": r.revoked,
        "not_before": _iso(r.not_before),
        "not_after": _iso(r.not_after),
        "key_backend": r.key_ref.backend,
        "key_algorithm": r.key_ref.algorithm.value,
        "subject": r.certificate.subject.rfc4514_string(),
        "upstream": bool(r.upstream_roots),
    }


def agent_json(a: AgentRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "spiffe_id": a.spiffe_id,
        "serial": a.serial,
        "not_after": _iso(a.not_after),
        "joined_at": _iso(a.joined_at),
        "last_seen": _iso(a.last_seen),
        "evicted": a.evicted,
        "hostname": a.hostname,
    }


def svid_json(s: IssuedSvid) -> dict[str, Any]:
    return {
        "spiffe_id": str(s.spiffe_id),
        "serial": s.serial,
        "not_after": _iso(s.not_after),
        "authority_id": s.authority_id,
        "chain_pem": s.chain_pem().decode(),
    }


def _ttl(doc: dict[str, Any], key: str = "ttl") -> dt.timedelta | None:
    value = doc.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidArgumentError(f"invalid {key}")
    if isinstance(value, int | float):
        try:
            return dt.timedelta(seconds=value)
        except (OverflowError, ValueError):
            raise InvalidArgumentError(f"{key} is out of range") from None
    try:
        return durations.parse(str(value))
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _token_ttl(doc: dict[str, Any]) -> dt.timedelta:
    """The asked TTL, or 10 minutes when none was given (a zero TTL is refused, not defaulted)."""
    ttl = _ttl(doc)
    return dt.timedelta(minutes=10) if ttl is None else ttl


def _str(doc: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = doc.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidArgumentError(f"{key} is required")
    return value


def _list(doc: dict[str, Any], key: str) -> list[str]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError(f"{key} must be a list of strings")
    return value


class AdminService(JsonService):
    service_name = SERVICE

    def __init__(
        self, core: ServerCore, *, executor: Executor | None, socket_path: Path, owner_uid: int
    ) -> None:
        super().__init__()
        self.core = core
        self.executor = executor
        self.socket_path = socket_path
        self.owner_uid = owner_uid
        c = core
        run = self._run

        async def entry_create(s: Any, d: dict[str, Any]) -> Any:
            e = await run(
                lambda: c.create_entry(
                    self.actor(s),
                    spiffe_id=_str(d, "spiffe_id"),
                    selectors=_list(d, "selectors"),
                    ttl=_ttl(d),
                    dns_names=_list(d, "dns_names"),
                    agent_id=_str(d, "agent_id", required=False) or None,
                )
            )
            return e.to_json()

        async def entry_list(s: Any, d: dict[str, Any]) -> Any:
            return {"entries": [e.to_json() for e in await run(c.store.list_entries)]}

        async def entry_show(s: Any, d: dict[str, Any]) -> Any:
            return (await run(lambda: c.store.get_entry(_str(d, "id")))).to_json()

        async def entry_delete(s: Any, d: dict[str, Any]) -> Any:
            return (await run(lambda: c.delete_entry(self.actor(s), _str(d, "id")))).to_json()

        async def svid_mint(s: Any, d: dict[str, Any]) -> Any:
            svid = await run(
                lambda: c.mint(
                    self.actor(s),
                    spiffe_id=_str(d, "spiffe_id"),
                    csr=_str(d, "csr_pem").encode(),
                    ttl=_ttl(d),
                    dns_names=_list(d, "dns_names"),
                )
            )
            out = svid_json(svid)
            out["bundle_pem"] = c.bundle().to_pem().decode()
            return out

        async def jwt_svid_mint(s: Any, d: dict[str, Any]) -> Any:
            svid = await run(
                lambda: c.mint_jwt(
                    self.actor(s),
                    spiffe_id=_str(d, "spiffe_id"),
                    audience=_list(d, "audience"),
                    ttl=_ttl(d),
                )
            )
            return {
                "spiffe_id": str(svid.spiffe_id),
                "audience": list(svid.audience),
                "token": svid.token,
                "kid": svid.key_id,
                "jti": svid.jti,
                "issued_at": _iso(svid.issued_at),
                "expires_at": _iso(svid.expires_at),
            }

        async def bundle_show(s: Any, d: dict[str, Any]) -> Any:
            b = await run(c.bundle)
            return {
                "trust_domain": str(b.trust_domain),
                "sequence": b.sequence,
                "pem": b.to_pem().decode(),
                "spiffe": b.to_spiffe_json(),
            }

        async def authority_list(s: Any, d: dict[str, Any]) -> Any:
            recs = await run(c.authorities.records)
            return {"authorities": [authority_json(r) for r in recs]}

        def authority(op: str) -> Any:
            async def fn(s: Any, d: dict[str, Any]) -> Any:
                aid = _str(d, "id", required=op in ("taint", "revoke"))
                rec = await run(
                    lambda: c.authority_op(self.actor(s), op, aid, force=bool(d.get("force")))
                )
                return authority_json(rec)

            return fn

        async def authority_blockers(s: Any, d: dict[str, Any]) -> Any:
            aid = _str(d, "id")
            records = await run(lambda: c.authorities.blockers(aid))
            return {
                "certificates": [
                    {
                        "serial": r.serial,
                        "spiffe_id": r.spiffe_id,
                        "not_after": _iso(r.not_after),
                        "holder": r.caller,
                        "entry_id": r.entry_id,
                        "issued_at": _iso(r.issued_at),
                        "reissued_by_agents": r.entry_id is not None,
                    }
                    for r in records
                ]
            }

        async def token_create(s: Any, d: dict[str, Any]) -> Any:
            token, expires = await run(lambda: c.create_token(self.actor(s), _token_ttl(d)))
            return {"token": token, "expires_at": _iso(expires)}

        async def agent_list(s: Any, d: dict[str, Any]) -> Any:
            return {"agents": [agent_json(a) for a in await run(c.store.list_agents)]}

        async def agent_evict(s: Any, d: dict[str, Any]) -> Any:
            aid = _str(d, "id")
            await run(lambda: c.evict_agent(self.actor(s), aid))
            return {"id": aid, "evicted": True}

        async def status(s: Any, d: dict[str, Any]) -> Any:
            ok, reason = await run(c.readiness)
            return {"ready": ok, "reason": reason, "trust_domain": str(c.trust_domain)}

        for name, fn in {
            "EntryCreate": entry_create,
            "EntryList": entry_list,
            "EntryShow": entry_show,
            "EntryDelete": entry_delete,
            "SvidMint": svid_mint,
            "JwtSvidMint": jwt_svid_mint,
            "BundleShow": bundle_show,
            "AuthorityList": authority_list,
            "AuthorityPrepare": authority("prepare"),
            "AuthorityActivate": authority("activate"),
            "AuthorityTaint": authority("taint"),
            "AuthorityRevoke": authority("revoke"),
            "AuthorityBlockers": authority_blockers,
            "TokenCreate": token_create,
            "AgentList": agent_list,
            "AgentEvict": agent_evict,
            "Status": status,
        }.items():
            self.unary(name, fn)

    async def _run(self, fn: Any) -> Any:
        return await run_blocking(self.executor, fn)

    def actor(self, stream: grpclib.server.Stream[Any, Any]) -> Actor:
        cred = peercred.from_grpclib_stream(stream)
        if cred is None:
            return Actor(kind="unix", id="unknown", addr=str(self.socket_path))
        return Actor.unix(uid=cred.uid, addr=str(self.socket_path))

    async def authorize(self, stream: grpclib.server.Stream[Any, Any], method: str) -> None:
        cred = peercred.from_grpclib_stream(stream)
        if cred is None or cred.uid not in (self.owner_uid, 0):
            raise GRPCError(
                Status.PERMISSION_DENIED,
                "only the server's owner or root may use the admin socket",
            )

    def on_result(self, method: str, code: Status) -> None:
        self.core.metrics.admin_requests.labels(method=method, code=code.name).inc()
