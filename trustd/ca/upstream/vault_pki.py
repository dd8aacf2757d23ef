"""An OpenBao/Vault PKI mount as trustd's upstream CA (kind ``vault-pki``).

trustd's CA key stays where the key manager keeps it; only the CSR goes to
Vault, which signs it with ``<mount>/root/sign-intermediate`` (or
``<mount>/issuer/<issuer>/sign-intermediate``) with ``use_csr_values`` and the
CSR's URI SANs, so the certificate keeps trustd's subject and SPIFFE ID. The
answer is checked before use: the CSR's public key, the same URI SANs, CA:true,
signed by the issuing CA. The chain is rebuilt by signature from what Vault
sends (``issuing_ca``, ``ca_chain``); self-signed certificates become ``roots``.

Vault roles govern leaf certificates only; intermediate signing takes none, so
there is no ``role`` setting. The token needs ``update`` on
``<mount>/root/sign-intermediate`` (or the issuer path).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any, Unpack

import hvac
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from trustd.ca.kms.vault_transit import (
    VaultAccess,
    VaultConnection,
    VaultErrorClasses,
    response_data,
    vault_access,
)
from trustd.ca.upstream.base import UpstreamResult
from trustd.ca.upstream.errors import (
    UpstreamBadResponseError,
    UpstreamConfigError,
    UpstreamInvalidRequestError,
    UpstreamNotFoundError,
    UpstreamPermissionDeniedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from trustd.telemetry.metrics import VaultMetrics
from trustd.urisan import uri_sans

if TYPE_CHECKING:
    from trustd.config import VaultPkiConfig

log = structlog.get_logger(__name__)

UPSTREAM_ERRORS = VaultErrorClasses(
    unavailable=UpstreamUnavailableError,
    timeout=UpstreamTimeoutError,
    permission=UpstreamPermissionDeniedError,
    config=UpstreamConfigError,
    not_found=UpstreamNotFoundError,
    invalid=UpstreamInvalidRequestError,
)

_MOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_ISSUER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SIGN_CAPABILITIES = {"update", "create", "root", "sudo"}


def _spki(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return cert_or_csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def build_chain(
    leaf: x509.Certificate, pool: list[x509.Certificate]
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    """Order ``pool`` above ``leaf`` by signature; split off the self-signed root(s).

    Returns (chain starting with ``leaf``, roots). When the pool has no
    self-signed certificate on top, the top-most certificate found becomes the
    trust anchor (Vault sent only part of the chain).
    """
    unique: dict[bytes, x509.Certificate] = {}
    for cert in pool:
        unique.setdefault(cert.public_bytes(serialization.Encoding.DER), cert)
    unique.pop(leaf.public_bytes(serialization.Encoding.DER), None)
    remaining = list(unique.values())
    chain = [leaf]
    while True:
        current = chain[-1]
        parent = next(
            (c for c in remaining if c.subject == current.issuer and _issued_by(current, c)),
            None,
        )
        if parent is None:
            break
        remaining.remove(parent)
        if _is_self_signed(parent):
            return tuple(chain), (parent,)
        chain.append(parent)
    if len(chain) == 1:
        raise UpstreamBadResponseError(
            "vault sent no certificate that signed trustd's ca certificate: "
            "check the pki mount's issuer"
        )
    log.warning(
        "upstream chain has no self-signed root; trusting its top certificate",
        anchor=chain[-1].subject.rfc4514_string(),
    )
    return tuple(chain[:-1]), (chain[-1],)


def _load_pems(value: object) -> list[x509.Certificate]:
    items = value if isinstance(value, list) else [value]
    out: list[x509.Certificate] = []
    for item in items:
        if isinstance(item, str) and item.strip():
            try:
                out.extend(x509.load_pem_x509_certificates(item.encode()))
            except ValueError:
                raise UpstreamBadResponseError("vault sent a certificate that is not PEM") from None
    return out


class VaultPkiUpstream:
    """trustd's CA as an intermediate of a Vault/OpenBao PKI mount."""

    kind = "vault-pki"

    def __init__(
        self,
        *,
        mount: str = "pki",
        issuer: str | None = None,
        role: str | None = None,
        metrics: VaultMetrics | None = None,
        **access: Unpack[VaultAccess],
    ) -> None:
        mount = mount.strip("/")
        if not _MOUNT_RE.match(mount):
            raise UpstreamConfigError(f"pki mount {mount!r} is not a valid vault path")
        if issuer is not None and not _ISSUER_RE.match(issuer):
            raise UpstreamConfigError(f"pki issuer {issuer!r} is not a valid issuer name or id")
        if role is not None:
            raise UpstreamConfigError(
                "vault signs intermediate cas without a role (roles govern leaf certificates): "
                "remove role, or set issuer to pick the signing issuer"
            )
        self._conn = VaultConnection(
            engine="pki", errors=UPSTREAM_ERRORS, metrics=metrics, **access
        )
        self._mount = mount
        self._issuer = issuer

    @property
    def sign_path(self) -> str:
        if self._issuer is None:
            return f"{self._mount}/root/sign-intermediate"
        return f"{self._mount}/issuer/{self._issuer}/sign-intermediate"

    def sign_intermediate(self, csr_pem: bytes, ttl: dt.timedelta) -> UpstreamResult:
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise UpstreamInvalidRequestError("the ca csr is not a pem csr") from None
        if not csr.is_signature_valid:
            raise UpstreamInvalidRequestError("the ca csr's signature does not verify")
        seconds = int(ttl.total_seconds())
        if seconds < 1:
            raise UpstreamInvalidRequestError("the intermediate ttl must be at least 1s")
        uris = uri_sans(csr)
        body: dict[str, Any] = {
            "csr": csr_pem.decode(),
            "use_csr_values": True,
            "exclude_cn_from_sans": True,
            "ttl": f"{seconds}s",
            "format": "pem",
        }
        if uris:
            body["uri_sans"] = ",".join(uris)
        path = self.sign_path
        resp = self._conn.call(
            "sign_intermediate",
            lambda c: c.adapter.post(f"/v1/{path}", json=body),
            what=f"signing trustd's ca csr at {path}",
        )
        data = response_data(resp)
        certs = _load_pems(data.get("certificate"))
        if not certs:
            raise UpstreamBadResponseError(f"vault answered {path} without a certificate")
        cert = certs[0]
        self._verify(cert, csr, uris)
        pool = certs[1:] + _load_pems(data.get("issuing_ca")) + _load_pems(data.get("ca_chain"))
        chain, roots = build_chain(cert, pool)
        result = UpstreamResult(chain=chain, roots=roots)
        not_after = result.not_after
        if not_after < cert.not_valid_after_utc:
            log.warning(
                "upstream ca certificate outlives its issuer",
                mount=self._mount,
                not_after=cert.not_valid_after_utc.isoformat(),
                chain_not_after=not_after.isoformat(),
            )
        wanted = dt.datetime.now(dt.UTC) + ttl
        if not_after < wanted - dt.timedelta(minutes=1):
            log.warning(
                "upstream shortened the ca certificate",
                mount=self._mount,
                not_after=not_after.isoformat(),
                requested_not_after=wanted.isoformat(),
            )
        log.info(
            "upstream signed ca certificate",
            upstream=self.kind,
            mount=self._mount,
            serial=format(cert.serial_number, "x"),
            not_after=not_after.isoformat(),
            chain_length=len(chain),
            root=roots[0].subject.rfc4514_string(),
        )
        return result

    def _verify(
        self, cert: x509.Certificate, csr: x509.CertificateSigningRequest, uris: list[str]
    ) -> None:
        if _spki(cert) != _spki(csr):
            raise UpstreamBadResponseError(
                "vault returned a certificate for another public key than the csr's: refusing it"
            )
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise UpstreamBadResponseError(
                "vault returned a certificate that is not a ca (no basicConstraints ca:true)"
            )
        got = uri_sans(cert)
        if sorted(got) != sorted(uris):
            raise UpstreamBadResponseError(
                f"vault returned a certificate with uri sans {got} instead of {uris}: "
                "check that the pki mount allows them"
            )
        if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
            raise UpstreamBadResponseError("vault returned a certificate that has expired")

    def check(self) -> None:
        self._conn.check_ready()
        mount = self._mount
        pem: Any = self._conn.call(
            "read_ca",
            lambda c: c.secrets.pki.read_ca_certificate(mount_point=mount),
            what=f"reading the ca certificate of pki mount {mount!r}",
        )
        if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
            raise UpstreamConfigError(
                f"pki mount {mount!r} has no issuer: generate or import a root there first"
            )
        path = self.sign_path

        def capabilities(c: hvac.Client) -> Any:
            return c.adapter.post("/v1/sys/capabilities-self", json={"paths": [path]})

        try:
            caps = self._conn.call("capabilities", capabilities, what="a capabilities lookup")
        except UpstreamPermissionDeniedError:
            return  # the token may not ask; signing itself will tell
        allowed = set(response_data(caps).get(path) or [])
        if not allowed & _SIGN_CAPABILITIES:
            raise UpstreamPermissionDeniedError(
                f"the vault token may not sign intermediates at {path}: "
                "grant it update on that path"
            )

    def close(self) -> None:
        self._conn.close()


def from_config(cfg: VaultPkiConfig, metrics: VaultMetrics | None = None) -> VaultPkiUpstream:
    """The ``upstreamAuthority: {kind: vault-pki, ...}`` block as an upstream authority."""
    return VaultPkiUpstream(
        mount=cfg.mount, issuer=cfg.issuer, role=cfg.role, metrics=metrics, **vault_access(cfg)
    )
