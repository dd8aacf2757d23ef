"""What the CLI prints for each admin API message: the rows ``-o table|wide|json|yaml``
render (``trustd.cli.output.emit``). Keys and their order are the CLI's output
format, kept exactly as scripts know it; the values come from the typed messages.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.convert import entry_of, proxy_status_of, time_of
from trustd.api.types.v1 import types_pb2


def iso(ts: Timestamp) -> str:
    """RFC 3339 UTC with a ``Z``, as every CLI time is printed."""
    return time_of(ts).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def federation(msg: pb.Federation) -> dict[str, Any]:
    doc = json.loads(msg.bundle.spiffe_bundle) if msg.bundle.spiffe_bundle else {}
    keys = doc.get("keys", [])
    return {
        "trust_domain": msg.trust_domain,
        "endpoint_url": msg.endpoint_url,
        "profile": msg.profile,
        "endpoint_spiffe_id": msg.endpoint_spiffe_id or None,
        "sequence": msg.bundle.sequence,
        "x509_authorities": sum(1 for k in keys if k.get("use") == "x509-svid"),
        "jwt_authorities": sum(1 for k in keys if k.get("use") == "jwt-svid"),
        "refreshed_at": iso(msg.refreshed_at) if msg.HasField("refreshed_at") else None,
        "next_refresh_at": iso(msg.next_refresh_at),
        "last_error": msg.last_error or None,
        "created_at": iso(msg.created_at),
        "bundle": doc,
    }


def federations(msg: pb.ListFederationsResponse) -> dict[str, Any]:
    return {"federations": [federation(f) for f in msg.federations]}


def entry(msg: types_pb2.Entry) -> dict[str, Any]:
    return dict(entry_of(msg).to_json())


def entries(msg: pb.ListEntriesResponse) -> dict[str, Any]:
    return {"entries": [entry(e) for e in msg.entries]}


def authority(a: pb.Authority) -> dict[str, Any]:
    return {
        "id": a.id,
        "state": a.state,
        "tainted": a.tainted,
        "revoked": a.revoked,
        "not_before": iso(a.not_before),
        "not_after": iso(a.not_after),
        "key_backend": a.key_backend,
        "key_algorithm": a.key_algorithm,
        "subject": a.subject,
        "upstream": a.upstream,
    }


def authorities(msg: pb.ListAuthoritiesResponse) -> dict[str, Any]:
    return {"authorities": [authority(a) for a in msg.authorities]}


def blockers(msg: pb.ListBlockersResponse) -> dict[str, Any]:
    return {
        "certificates": [
            {
                "serial": b.serial,
                "spiffe_id": b.spiffe_id,
                "not_after": iso(b.not_after),
                "holder": b.holder,
                "entry_id": b.entry_id if b.HasField("entry_id") else None,
                "issued_at": iso(b.issued_at),
                "reissued_by_agents": b.HasField("entry_id"),
            }
            for b in msg.certificates
        ]
    }


def agent(a: pb.Agent) -> dict[str, Any]:
    return {
        "id": a.id,
        "spiffe_id": a.spiffe_id,
        "serial": a.serial,
        "not_after": iso(a.not_after),
        "joined_at": iso(a.joined_at),
        "last_seen": iso(a.last_seen),
        "evicted": a.evicted,
        "hostname": a.hostname,
    }


def agents(msg: pb.ListAgentsResponse) -> dict[str, Any]:
    return {"agents": [agent(a) for a in msg.agents]}


def evicted(msg: pb.EvictAgentResponse) -> dict[str, Any]:
    return {"id": msg.id, "evicted": msg.evicted}


def token(msg: pb.CreateTokenResponse) -> dict[str, Any]:
    return {"token": msg.token, "expires_at": iso(msg.expires_at)}


def minted_x509(msg: pb.MintX509SvidResponse) -> dict[str, Any]:
    s = msg.svid
    return {
        "spiffe_id": s.spiffe_id,
        "serial": s.serial,
        "not_after": iso(s.not_after),
        "authority_id": s.authority_id,
    }


def minted_jwt(msg: pb.MintJwtSvidResponse) -> dict[str, Any]:
    s = msg.svid
    return {
        "spiffe_id": s.spiffe_id,
        "audience": list(s.audience),
        "token": s.token,
        "kid": s.key_id,
        "jti": s.jti,
        "issued_at": iso(s.issued_at),
        "expires_at": iso(s.expires_at),
    }


def bundle(msg: pb.BundleResponse) -> dict[str, Any]:
    return {
        "trust_domain": msg.bundle.trust_domain,
        "sequence": msg.bundle.sequence,
        "pem": msg.pem.decode(),
        "spiffe": json.loads(msg.bundle.spiffe_bundle),
    }


def applied(msg: pb.ApplyPolicyResponse) -> dict[str, Any]:
    return {
        "version": msg.version,
        "hash": msg.hash,
        "published": msg.published,
        "forcedReasons": list(msg.forced_reasons),
        "diff": list(msg.diff),
    }


def policy_diff(msg: pb.DiffPolicyResponse) -> dict[str, Any]:
    return {
        "empty": msg.empty,
        "lines": list(msg.lines),
        "changes": [
            {"ref": c.ref, "change": c.change, "fields": list(c.fields)} for c in msg.changes
        ],
        "clientTlsOffGlobal": list(msg.client_tls_off_global) or None,
    }


def policy_show(msg: pb.ShowPolicyResponse) -> dict[str, Any]:
    out: dict[str, Any] = {
        "spiffeId": msg.spiffe_id,
        "policyVersion": msg.policy_version,
        "policyHash": msg.policy_hash,
        "clientTlsOffGlobal": msg.client_tls_off_global,
    }
    if msg.HasField("port"):
        peer = msg.peer_authentication
        out["port"] = msg.port
        out["peerAuthentication"] = {
            "mode": peer.mode,
            "source": peer.source,
            "instanceModes": list(peer.instance_modes),
        }
        if peer.HasField("overrides"):
            out["peerAuthentication"]["overrides"] = peer.overrides
    out["authorizationPolicies"] = list(msg.authorization_policies)
    out["clientTlsPolicies"] = list(msg.client_tls_policies)
    out["overlays"] = list(msg.overlays)
    return out


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def _status_row(e: pb.Enforcement) -> dict[str, Any]:
    head = {"proxyId": e.proxy_id, "spiffeId": e.spiffe_id, "side": e.side}
    if e.side == "server":
        return {
            **head, "port": e.port, "enforced": _opt(e, "enforced"), "policy": _opt(e, "wanted"),
            "plaintextTotal": e.plaintext_total, "tlsTotal": e.tls_total,
            "plaintextSinceMode": e.plaintext_since_mode, "agrees": e.agrees,
        }  # fmt: skip
    return {
        **head, "destination": _opt(e, "destination"), "port": e.port,
        "enforced": _opt(e, "enforced"), "policy": _opt(e, "wanted"),
        "mtlsTotal": e.mtls_total, "plaintextTotal": e.plaintext_total, "agrees": e.agrees,
    }  # fmt: skip


def policy_status(msg: pb.PolicyStatusResponse) -> dict[str, Any]:
    return {
        "version": msg.version,
        "hash": msg.hash,
        "objects": list(msg.objects),
        "clientTlsOffGlobal": msg.client_tls_off_global,
        "pending": msg.pending,
        "proxies": [proxy_status_of(p).to_json() for p in msg.proxies],
        "enforcement": [_status_row(e) for e in msg.enforcement],
        "converged": msg.converged,
    }


def _rollout_row(e: pb.Enforcement) -> dict[str, Any]:
    head = {"proxyId": e.proxy_id, "spiffeId": e.spiffe_id, "side": e.side}
    if e.side == "server":
        return {
            **head, "port": e.port, "enforced": _opt(e, "enforced"), "wanted": _opt(e, "wanted"),
            "plaintextSinceMode": e.plaintext_since_mode, "ok": e.ok, "text": e.text,
        }  # fmt: skip
    return {
        **head, "destination": _opt(e, "destination"), "port": e.port,
        "enforced": _opt(e, "enforced"), "wanted": _opt(e, "wanted"), "ok": e.ok, "text": e.text,
    }  # fmt: skip


def rollout(msg: pb.RolloutStatusResponse) -> dict[str, Any]:
    return {
        "id": msg.id,
        "state": msg.state,
        "step": msg.step,
        "stepIndex": msg.step_index,
        "phase": msg.phase,
        "target": msg.target,
        "selector": msg.selector,
        "canary": msg.canary,
        "canaryInstances": list(msg.canary_instances),
        "policyVersion": _opt(msg, "policy_version"),
        "waitingFor": list(msg.waiting_for),
        "notEnforced": list(msg.not_enforced),
        "enforcement": [_rollout_row(e) for e in msg.enforcement],
        "reason": _opt(msg, "reason"),
        "startedAt": time_of(msg.started_at).isoformat(),
        "updatedAt": time_of(msg.updated_at).isoformat(),
    }


def verified(msg: pb.VerifyAuditResponse) -> dict[str, Any]:
    return {
        "ok": msg.ok,
        "first_bad_seq": _opt(msg, "first_bad_seq"),
        "problem": msg.problem,
        "events_checked": msg.events_checked,
        "first_seq": _opt(msg, "first_seq"),
        "last_seq": _opt(msg, "last_seq"),
        "checkpoints_checked": msg.checkpoints_checked,
        "last_checkpoint_seq": _opt(msg, "last_checkpoint_seq"),
        "head_seq": _opt(msg, "head_seq"),
        **({"server_id": msg.server_id} if msg.server_id else {}),
        **(
            {
                "servers": [
                    {
                        "server_id": o.server_id,
                        "ok": o.ok,
                        "first_bad_seq": _opt(o, "first_bad_seq"),
                        "problem": o.problem,
                        "events_checked": o.events_checked,
                        "first_seq": _opt(o, "first_seq"),
                        "last_seq": _opt(o, "last_seq"),
                        "checkpoints_checked": o.checkpoints_checked,
                        "last_checkpoint_seq": _opt(o, "last_checkpoint_seq"),
                    }
                    for o in msg.servers
                ]
            }
            if msg.servers
            else {}
        ),
    }
