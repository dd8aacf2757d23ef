"""X.509-SVID issuance: from a CSR and a registration entry to a verified certificate.

The identity comes only from the entry. Of the CSR only the public key is
used, after its signature has been checked; its subject, SANs, basic
constraints and other extensions never reach the certificate.

IDs under ``/trustd/`` (the server's ``/trustd/server``, agents'
``/trustd/agent/<id>``) are what agents and the server trust each other by:
the issuer signs them only when its caller says the request is the server's own.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from trustd import durations
from trustd.ca import der
from trustd.ca.errors import InvalidCsrError, InvalidTtlError, ReservedIdError, SigningError
from trustd.ca.kms.base import KeyAlgorithm, KeyManager, KeyRef, PublicKey, signs_in_process
from trustd.spiffeid import SpiffeId

MAX_CSR_BYTES = 64 * 1024
ALLOWED_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
BACKDATE = dt.timedelta(seconds=10)
_NO_TIME = dt.timedelta(0)
# Hashes a CSR may be signed with. SHA-1 and MD5 are refused; Go's x509 (SPIRE) has no SHA-224.
CSR_SIGNATURE_HASHES = ("sha256", "sha384", "sha512")
RESERVED_PATH_PREFIX = "/trustd/"


def is_reserved(spiffe_id: SpiffeId) -> bool:
    """Whether the ID is under ``/trustd/``, the path of trustd's own server and agents."""
    return (spiffe_id.path + "/").startswith(RESERVED_PATH_PREFIX)


def check_not_reserved(spiffe_id: SpiffeId) -> None:
    """Raise ReservedIdError for an ID only trustd itself may issue."""
    if is_reserved(spiffe_id):
        raise ReservedIdError(
            f"spiffe id {spiffe_id} is under {RESERVED_PATH_PREFIX}, which is reserved for "
            "trustd's own server and agents: choose another path, e.g. /ns/default/sa/web"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningAuthority:
    """What the issuer needs from the active CA, precomputed once per activation."""

    id: str  # hex subject key identifier
    key_ref: KeyRef  # the CA key in the key manager
    certificate: x509.Certificate  # the CA certificate
    chain: tuple[x509.Certificate, ...]  # the CA certificate and any upstream intermediates
    public_key: PublicKey  # of the CA key, checked against the certificate
    issuer_der: bytes  # DER subject Name of the CA
    key_id: bytes  # subject key identifier of the CA
    sig_alg: bytes  # DER AlgorithmIdentifier for its signatures
    chain_der: tuple[bytes, ...]  # DER of ``chain``
    chain_pem: bytes  # PEM of ``chain``
    tbs_template: der.SvidTbsTemplate  # what every SVID's TBSCertificate shares
    not_before: dt.datetime  # of the CA certificate; no SVID starts before it
    not_after: (
        dt.datetime
    )  # earliest expiry along the chain (upstream included): no SVID outlives it

    @classmethod
    def build(
        cls,
        *,
        authority_id: str,
        key_ref: KeyRef,
        certificate: x509.Certificate,
        upstream_chain: Sequence[x509.Certificate],
    ) -> SigningAuthority:
        pub = certificate.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise SigningError("the CA certificate has an unsupported key type")
        chain = (certificate, *upstream_chain)
        # AKI of every leaf = the CA certificate's own SKI (an upstream CA may not use method 1).
        try:
            key_id = certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value.digest
        except x509.ExtensionNotFound:
            key_id = der.key_identifier(pub)
        issuer_der = certificate.subject.public_bytes()
        sig_alg = der.signature_algorithm(key_ref.algorithm)
        chain_der = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
        return cls(
            id=authority_id,
            key_ref=key_ref,
            certificate=certificate,
            chain=chain,
            public_key=pub,
            issuer_der=issuer_der,
            key_id=key_id,
            sig_alg=sig_alg,
            chain_der=chain_der,
            chain_pem=b"".join(der.certificate_pem(d) for d in chain_der),
            tbs_template=der.SvidTbsTemplate.build(
                signature_algorithm=sig_alg, issuer=issuer_der, authority_key_id=key_id
            ),
            not_before=certificate.not_valid_before_utc,
            not_after=min(c.not_valid_after_utc for c in chain),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedSvid:
    """An X.509-SVID as the issuer signed it: the one SVID type from the issuer, through
    the agent API (``trustd.types.v1.X509Svid``), to the agent's cache."""

    spiffe_id: SpiffeId  # from the registration entry
    certificate: x509.Certificate  # the leaf
    chain_der: tuple[bytes, ...]  # leaf first, then the CA and any intermediates
    serial: str  # hex
    not_after: dt.datetime
    authority_id: str  # the CA that signed it
    issuer_chain_pem: bytes | None = None  # PEM of ``chain_der[1:]`` when the issuer has it
    entry_id: str = ""  # the registration entry it was signed for ("" for a mint, trustd's own)

    def chain_pem(self) -> bytes:
        if self.issuer_chain_pem is not None:
            return der.certificate_pem(self.chain_der[0]) + self.issuer_chain_pem
        return b"".join(der.certificate_pem(d) for d in self.chain_der)


def load_csr(data: bytes) -> tuple[x509.CertificateSigningRequest, PublicKey]:
    """Parse and check a CSR (PEM or DER); returns it with its public key."""
    if len(data) > MAX_CSR_BYTES:
        raise InvalidCsrError(f"csr is {len(data)} bytes; the limit is {MAX_CSR_BYTES}")
    if not data:
        raise InvalidCsrError("csr is empty")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        pub = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise InvalidCsrError("csr is not a valid PKCS#10 request in PEM or DER") from exc
    except x509.UnsupportedGeneralNameType as exc:
        raise InvalidCsrError("csr carries an unsupported name type") from exc
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.name not in ALLOWED_CURVES:
            raise InvalidCsrError(
                f"csr key uses curve {pub.curve.name}; use P-256 (secp256r1) or P-384"
            )
    elif isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < MIN_RSA_BITS:
            raise InvalidCsrError(
                f"csr RSA key is {pub.key_size} bits; use at least {MIN_RSA_BITS} (or ECDSA P-256)"
            )
        if pub.key_size > MAX_RSA_BITS:
            raise InvalidCsrError(
                f"csr RSA key is {pub.key_size} bits; the limit is {MAX_RSA_BITS}"
            )
    else:
        raise InvalidCsrError(
            f"csr key type {type(pub).__name__.lstrip('_')} is not supported; use ECDSA P-256"
        )
    _check_csr_signature(csr, pub)
    return csr, pub


def csr_spki(csr: x509.CertificateSigningRequest) -> bytes | None:
    """The checked CSR's SubjectPublicKeyInfo, when it is what the issuer would encode itself.

    For an EC P-256 or P-384 key with an uncompressed point (what agents send)
    the certificate can take the CSR's own bytes; for other keys None.
    """
    return der.request_spki(csr.tbs_certrequest_bytes)


_CSR_SIGNATURE_INVALID = "csr signature does not verify: the request was altered or corrupted"
# What an EC key's CSR may be signed with: the ECDSA forms of CSR_SIGNATURE_HASHES, built once.
_CSR_ECDSA = {
    x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256: ec.ECDSA(hashes.SHA256()),
    x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384: ec.ECDSA(hashes.SHA384()),
    x509.SignatureAlgorithmOID.ECDSA_WITH_SHA512: ec.ECDSA(hashes.SHA512()),
}


def _check_csr_signature(csr: x509.CertificateSigningRequest, pub: PublicKey) -> None:
    """The CSR's self-signature, under its own key, with the algorithm it names.

    Done here rather than with ``is_signature_valid``, which costs a third more
    for the same check; the algorithm must fit the key type and use a strong hash.
    """
    if isinstance(pub, ec.EllipticCurvePublicKey):
        ecdsa = _CSR_ECDSA.get(csr.signature_algorithm_oid)
        if ecdsa is not None:  # the usual case: what the generic checks below would accept
            try:
                pub.verify(csr.signature, csr.tbs_certrequest_bytes, ecdsa)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                raise InvalidCsrError(_CSR_SIGNATURE_INVALID) from None
            return
    try:
        hash_alg = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        hash_alg = None
    if hash_alg is None or hash_alg.name not in CSR_SIGNATURE_HASHES:
        used = hash_alg.name if hash_alg is not None else csr.signature_algorithm_oid.dotted_string
        raise InvalidCsrError(f"csr is signed with {used}; sign it with SHA-256 or stronger")
    try:
        params = csr.signature_algorithm_parameters
        if isinstance(pub, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                raise TypeError("signature algorithm does not fit the key")
            pub.verify(csr.signature, csr.tbs_certrequest_bytes, params)
        else:
            if not isinstance(params, padding.PKCS1v15 | padding.PSS):
                raise TypeError("signature algorithm does not fit the key")
            pub.verify(csr.signature, csr.tbs_certrequest_bytes, params, hash_alg)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidCsrError(_CSR_SIGNATURE_INVALID) from None


# Built once: constructing these costs more than a hash of a certificate.
_PREHASHED_SHA256 = utils.Prehashed(hashes.SHA256())
_PREHASHED_SHA384 = utils.Prehashed(hashes.SHA384())
_ECDSA_SHA256 = ec.ECDSA(_PREHASHED_SHA256)
_ECDSA_SHA384 = ec.ECDSA(_PREHASHED_SHA384)
_PKCS1V15 = padding.PKCS1v15()


def verify_signature(
    public_key: PublicKey, algorithm: KeyAlgorithm, digest: bytes, sig: bytes
) -> None:
    p384 = algorithm is KeyAlgorithm.EC_P384
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(sig, digest, _ECDSA_SHA384 if p384 else _ECDSA_SHA256)
        else:
            public_key.verify(
                sig, digest, _PKCS1V15, _PREHASHED_SHA384 if p384 else _PREHASHED_SHA256
            )
    except InvalidSignature:
        raise SigningError(
            "the key manager returned a signature that does not verify under the CA key; "
            "nothing was issued"
        ) from None


def new_serial() -> int:
    # 128 random bits, top bit cleared so the DER INTEGER stays positive and within 20 octets.
    return int.from_bytes(os.urandom(16), "big") >> 1 or 1


def new_serials(n: int) -> list[int]:
    """``n`` serials as ``new_serial`` makes them, from one read of the random source."""
    rand = os.urandom(16 * n)
    return [int.from_bytes(rand[i : i + 16], "big") >> 1 or 1 for i in range(0, 16 * n, 16)]


@dataclass(frozen=True, slots=True, kw_only=True)
class SvidTemplate:
    """One leaf to sign: the checked public key and what the entry says."""

    spiffe_id: SpiffeId  # from the registration entry, never from the CSR
    public_key: PublicKey  # from the checked CSR
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...] = ()  # from the registration entry
    spki: bytes | None = None  # public_key's DER, from the same CSR (csr_spki); None: encoded here


class X509Issuer:
    """Signs X.509-SVIDs with the active authority through the key manager."""

    def __init__(
        self,
        *,
        key_manager: KeyManager,
        default_ttl: dt.timedelta,
        max_ttl: dt.timedelta,
    ) -> None:
        self._km = key_manager
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        # The last authority whose signatures from an in-process key manager were verified.
        self._key_checked: SigningAuthority | None = None

    def validity(
        self, authority: SigningAuthority, now: dt.datetime, ttl: dt.timedelta | None
    ) -> tuple[dt.datetime, dt.datetime]:
        """NotBefore backdated a little; NotAfter capped by the max TTL and the CA's own expiry."""
        if ttl is None:
            ttl = self.default_ttl
        if ttl <= _NO_TIME:
            raise InvalidTtlError("ttl must be positive, e.g. 1h or 10m")
        if ttl > self.max_ttl:
            raise InvalidTtlError(
                f"ttl {durations.format(ttl)} is above the server maximum "
                f"{durations.format(self.max_ttl)}; ask for less"
            )
        if authority.not_after <= now:
            raise SigningError(
                "the active CA has expired; rotate it with 'trustd authority prepare'"
            )
        # In whole seconds, as certificates hold them (the CA's own times already are).
        second = now.replace(microsecond=0)
        end = second + ttl if not ttl.microseconds else (now + ttl).replace(microsecond=0)
        return max(second - BACKDATE, authority.not_before), min(end, authority.not_after)

    def sign(
        self,
        authority: SigningAuthority,
        templates: Sequence[SvidTemplate],
        *,
        allow_reserved: bool = False,
    ) -> list[IssuedSvid]:
        """Sign many leaves in one key-manager call; one bad signature fails them all.

        Every signature is verified under the CA key before use, unless the key
        manager signs in process (``kms.base.signs_in_process``): then only the
        first batch signed for each authority is, which shows that the key
        manager's key is the one in the CA certificate. A reserved ID (see
        ``is_reserved``) fails the whole call with ReservedIdError unless
        ``allow_reserved``, which only the server's own issuance passes.
        """
        if not allow_reserved:
            for t in templates:
                check_not_reserved(t.spiffe_id)
        alg = authority.key_ref.algorithm
        template = authority.tbs_template
        serials = new_serials(len(templates))
        tbss = []
        for t, serial in zip(templates, serials, strict=True):
            if t.spki is None:
                spki, subject_key_id = der.spki_and_key_identifier(t.public_key)
            else:
                spki, subject_key_id = t.spki, der.spki_key_identifier(t.spki)
            tbss.append(
                template.encode(
                    serial=serial,
                    validity=der.validity(t.not_before, t.not_after),
                    spki=spki,
                    subject_key_id=subject_key_id,
                    spiffe_id=str(t.spiffe_id),
                    dns_names=tuple(t.dns_names),
                    rsa_key=der.is_rsa(t.public_key),
                )
            )
        digests = [der.digest(alg, tbs) for tbs in tbss]
        if len(digests) == 1:
            sigs = [self._km.sign(authority.key_ref, digests[0])]
        else:
            sigs = self._km.sign_many(authority.key_ref, digests)
        if len(sigs) != len(digests):
            raise SigningError("the key manager returned the wrong number of signatures")
        in_process = signs_in_process(self._km)
        if not in_process or self._key_checked is not authority:
            for digest, sig in zip(digests, sigs, strict=True):
                verify_signature(authority.public_key, alg, digest, sig)
            if in_process:
                self._key_checked = authority
        out = []
        for t, serial, tbs, sig in zip(templates, serials, tbss, sigs, strict=True):
            cert_der = der.assemble_certificate(tbs, authority.sig_alg, sig)
            cert = x509.load_der_x509_certificate(cert_der)
            out.append(
                IssuedSvid(
                    spiffe_id=t.spiffe_id,
                    certificate=cert,
                    chain_der=(cert_der, *authority.chain_der),
                    serial=format(serial, "x"),
                    not_after=t.not_after,
                    authority_id=authority.id,
                    issuer_chain_pem=authority.chain_pem,
                )
            )
        return out
