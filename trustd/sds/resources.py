"""SDS resource names and the Envoy ``Secret`` messages built for them (SPEC §6).

- ``default``: the caller's first SVID, as ``tls_certificate`` (PEM chain and
  PKCS#8 PEM key, ``inline_bytes``);
- ``ROOTCA``: the agent's own trust bundle as ``validation_context.trusted_ca``;
- ``ALL``: the own bundle and every federated bundle the caller is entitled to
  (its entries' ``federates_with``), as a SPIFFE certificate validator (each
  trust domain verified only against its own CAs);
- ``spiffe://TD/path``: that SVID, when the caller is entitled to it;
- ``spiffe://TD``: that trust domain's bundle as ``trusted_ca`` (a foreign one
  only when one of the caller's entries federates with it).

Each name that resolves to nothing is refused on its own (a ``Refusal``, with a
reason from ``REASONS``) and the other names are still served:

- ``unknown``: none of the forms above, or a trust domain with no bundle (yet) or
  whose bundle the caller is not entitled to (the same answer either way);
- ``malformed``: a ``spiffe://`` name that is not a valid SPIFFE ID;
- ``not_entitled``: a SPIFFE ID that is not one of the caller's (the same
  whether or not another workload holds it);
- ``no_identity``: ``default`` for a caller no registration entry matches.

A name the caller may not have never yields a byte of another identity. A
request fails as a whole (``Resolution.failure``: the first refusal's
status) only when it names nothing else, i.e. every name is ``not_entitled``,
``no_identity`` or ``malformed``. Any other request is answered with what
resolves and leaves the refused names out, as an xDS server leaves out the
resources it does not have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import (
    common_pb2,
    secret_pb2,
    tls_spiffe_validator_config_pb2,
)
from google.protobuf import any_pb2

from trustd.agent.cache import AgentCache
from trustd.agent.errors import (
    BadResourceNameError,
    NoIdentityError,
    NotEntitledError,
    UnknownResourceError,
)
from trustd.agent.keys import Svid
from trustd.bundle import Bundle
from trustd.entries import RegistrationEntry
from trustd.errors import InvalidArgumentError, TrustdError
from trustd.spiffeid import SCHEME, SpiffeId, TrustDomain

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105 - a type name
DEFAULT_SVID = "default"
DEFAULT_BUNDLE = "ROOTCA"
ALL_BUNDLES = "ALL"
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"

UNKNOWN = "unknown"
MALFORMED = "malformed"
NOT_ENTITLED = "not_entitled"
NO_IDENTITY = "no_identity"
REASONS = (UNKNOWN, MALFORMED, NOT_ENTITLED, NO_IDENTITY)  # why a name is refused
_FAILS_ALONE = frozenset({MALFORMED, NOT_ENTITLED, NO_IDENTITY})


@dataclass(frozen=True, slots=True, kw_only=True)
class SvidResource:
    name: str  # the resource name as the client asked for it
    entry: RegistrationEntry  # the caller's entry this SVID is for


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleResource:
    name: str  # the resource name as the client asked for it
    trust_domains: tuple[TrustDomain, ...]  # whose bundles go in
    spiffe_validator: bool  # True: SPIFFE validator config; False: plain trusted_ca


Resource = SvidResource | BundleResource


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    name: str  # the resource name as the client asked for it
    reason: str  # one of REASONS
    error_type: type[TrustdError]  # what a request for this name alone fails with...
    message: str  # ...and the message it says (the name's, never a secret)

    def error(self) -> TrustdError:
        return self.error_type(self.message)


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    resources: list[Resource]  # the names that resolved, in request order
    refused: list[Refusal]  # the names that did not, in request order

    def failure(self) -> Refusal | None:
        """The refusal whose error a request for these names fails with as a whole, if any."""
        if self.resources or not self.refused:
            return None
        if all(r.reason in _FAILS_ALONE for r in self.refused):
            return self.refused[0]
        return None


def resolve(
    cache: AgentCache, entries: tuple[RegistrationEntry, ...], names: list[str]
) -> Resolution:
    """What the names mean for a caller whose entries are ``entries``.

    An empty list means everything the caller may see (as SPIRE does).
    """
    out: list[Resource] = []
    refused: list[Refusal] = []
    visible = cache.bundles_for(entries)
    if not names:
        for td in sorted(visible):
            out.append(BundleResource(name=str(td.id), trust_domains=(td,), spiffe_validator=False))
        by_id: dict[SpiffeId, RegistrationEntry] = {}
        for e in entries:
            by_id.setdefault(e.spiffe_id, e)
        for sid, e in by_id.items():
            out.append(SvidResource(name=str(sid), entry=e))
        return Resolution(resources=out, refused=refused)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        found = _resolve_name(cache, visible, entries, name)
        if isinstance(found, Refusal):
            refused.append(found)
        else:
            out.append(found)
    return Resolution(resources=out, refused=refused)


def _resolve_name(
    cache: AgentCache,
    visible: Mapping[TrustDomain, Bundle],
    entries: tuple[RegistrationEntry, ...],
    name: str,
) -> Resource | Refusal:
    if name == DEFAULT_SVID:
        if not entries:
            return _refused(
                name,
                NO_IDENTITY,
                NoIdentityError,
                (
                    "no registration entry matches this process, so it has no 'default' svid; "
                    "create one with 'trustd entry create'"
                ),
            )
        return SvidResource(name=name, entry=entries[0])
    if name == DEFAULT_BUNDLE:
        if cache.trust_domain not in cache.bundles:
            return _refused(
                name,
                UNKNOWN,
                UnknownResourceError,
                (
                    f"no bundle for trust domain {cache.trust_domain} yet; "
                    "retry once the agent has synced"
                ),
            )
        return BundleResource(
            name=name, trust_domains=(cache.trust_domain,), spiffe_validator=False
        )
    if name == ALL_BUNDLES:
        if not visible:
            return _refused(
                name,
                UNKNOWN,
                UnknownResourceError,
                "no bundle yet; retry once the agent has synced",
            )
        return BundleResource(
            name=name, trust_domains=tuple(sorted(visible)), spiffe_validator=True
        )
    if name.startswith(SCHEME):
        try:
            sid = SpiffeId.parse(name)
        except InvalidArgumentError as exc:
            return _refused(
                name, MALFORMED, BadResourceNameError, f"invalid sds resource name: {exc}"
            )
        if not sid.path:
            if sid.trust_domain not in visible:
                return _refused(
                    name,
                    UNKNOWN,
                    UnknownResourceError,
                    (
                        f"no bundle for trust domain {sid.trust_domain} for this process; "
                        "federate with it on the server first ('trustd federation create') and "
                        "name it in the entry's --federates-with"
                    ),
                )
            return BundleResource(
                name=name, trust_domains=(sid.trust_domain,), spiffe_validator=False
            )
        mine = next((e for e in entries if e.spiffe_id == sid), None)
        if mine is None:
            # Same answer whether or not another workload has this identity.
            return _refused(
                name, NOT_ENTITLED, NotEntitledError, f"this process is not entitled to {name}"
            )
        return SvidResource(name=name, entry=mine)
    return _refused(
        name,
        UNKNOWN,
        UnknownResourceError,
        (
            f"unknown sds resource name {name[:100]!r}; use 'default', 'ROOTCA', 'ALL', "
            "a spiffe id or a trust domain id"
        ),
    )


def _refused(name: str, reason: str, error_type: type[TrustdError], message: str) -> Refusal:
    return Refusal(name=name, reason=reason, error_type=error_type, message=message)


def resource_version(cache: AgentCache, res: Resource, svids: dict[str, Svid]) -> str:
    if isinstance(res, SvidResource):
        svid = svids[res.entry.id]
        return f"{res.name}|svid|{res.entry.id}|{svid.serial:x}"
    parts = ",".join(f"{td}={cache.bundle_version(td)}" for td in res.trust_domains)
    return f"{res.name}|bundle|{int(res.spiffe_validator)}|{parts}"


def response_version(versions: list[str]) -> str:
    h = hashlib.sha256()
    for v in sorted(versions):
        h.update(v.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _inline(data: bytes) -> base_pb2.DataSource:
    return base_pb2.DataSource(inline_bytes=data)


def svid_secret(name: str, svid: Svid) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=_inline(svid.chain_pem),
            private_key=_inline(svid.key_pkcs8_pem),
        ),
    )


def bundle_secret(name: str, bundles: list[Bundle], *, spiffe_validator: bool) -> secret_pb2.Secret:
    if not spiffe_validator:
        pem = b"".join(b.to_pem() for b in bundles)
        return secret_pb2.Secret(
            name=name,
            validation_context=common_pb2.CertificateValidationContext(trusted_ca=_inline(pem)),
        )
    cfg = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig(
        trust_domains=[
            tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig.TrustDomain(
                name=str(b.trust_domain), trust_bundle=_inline(b.to_pem())
            )
            for b in bundles
        ]
    )
    typed = any_pb2.Any()
    typed.Pack(cfg)
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            custom_validator_config=extension_pb2.TypedExtensionConfig(
                name=SPIFFE_VALIDATOR, typed_config=typed
            )
        ),
    )


class SecretBuilder:
    """Builds (and remembers) the packed ``Secret`` for a resource at its current version.

    Many streams ask for the same bytes after a bundle change or a rotation; each is
    built once. Only the latest version of each resource is kept, so a rotated key
    does not linger here.
    """

    def __init__(self, cache: AgentCache, max_entries: int = 4096) -> None:
        self._cache = cache
        self._memo: dict[str, tuple[str, any_pb2.Any]] = {}
        self._max = max_entries

    def packed(self, res: Resource, version: str, svids: dict[str, Svid]) -> any_pb2.Any:
        ident = _identity(res)
        hit = self._memo.get(ident)
        if hit is not None and hit[0] == version:
            return hit[1]
        if isinstance(res, SvidResource):
            secret = svid_secret(res.name, svids[res.entry.id])
        else:
            bundles = [
                self._cache.bundles[td] for td in res.trust_domains if td in self._cache.bundles
            ]
            if not bundles:
                raise UnknownResourceError(
                    f"no bundle for {', '.join(str(td) for td in res.trust_domains)} yet; "
                    "retry once the agent has synced"
                )
            secret = bundle_secret(res.name, bundles, spiffe_validator=res.spiffe_validator)
        packed = any_pb2.Any()
        packed.Pack(secret)
        if len(self._memo) >= self._max:
            self._memo.clear()
        self._memo[ident] = (version, packed)
        return packed

    def forget(self) -> None:
        self._memo.clear()


def _identity(res: Resource) -> str:
    if isinstance(res, SvidResource):
        return f"{res.name}|svid|{res.entry.id}"
    tds = ",".join(str(td) for td in res.trust_domains)
    return f"{res.name}|bundle|{int(res.spiffe_validator)}|{tds}"
