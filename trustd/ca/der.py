"""Just enough DER to build X.509 certificates and CSRs whose signature comes from a KMS.

``cryptography``'s builders sign only with keys held in process memory. Here the
CA key lives behind the ``KeyManager`` seam (a file, OpenBao transit, an HSM),
so the issuer encodes the TBSCertificate itself, hashes it, asks the key
manager for a signature, and assembles the certificate. The encoder writes the
fixed shapes RFC 5280 needs for SVIDs and CA certificates, nothing general.
Every certificate built here is parsed back and verified by the caller.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustd.ca.kms.base import KeyAlgorithm, PublicKey

__all__ = ["PublicKey", "hashes_type"]


hashes_type = hashes.HashAlgorithm


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _len(len(body)) + body


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative integers are not used here")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # room for a leading 0 bit
    return tlv(0x02, body)


def bit_string(data: bytes, unused_bits: int = 0) -> bytes:
    return tlv(0x03, bytes((unused_bits,)) + data)


def octet_string(data: bytes) -> bytes:
    return tlv(0x04, data)


BOOLEAN_TRUE = b"\x01\x01\xff"
NULL = b"\x05\x00"


def _time(when: dt.datetime) -> bytes:
    when = when.astimezone(dt.UTC)
    if 1950 <= when.year < 2050:
        return tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(0x18, when.strftime("%Y%m%d%H%M%SZ").encode())


# Object identifiers used below.
OID_ECDSA_SHA256 = oid("1.2.840.10045.4.3.2")
OID_ECDSA_SHA384 = oid("1.2.840.10045.4.3.3")
OID_RSA_SHA256 = oid("1.2.840.113549.1.1.11")
_EXT_BASIC_CONSTRAINTS = oid("2.5.29.19")
_EXT_KEY_USAGE = oid("2.5.29.15")
_EXT_EXT_KEY_USAGE = oid("2.5.29.37")
_EXT_SKI = oid("2.5.29.14")
_EXT_AKI = oid("2.5.29.35")
_EXT_SAN = oid("2.5.29.17")
_EKU_SERVER_CLIENT = seq(oid("1.3.6.1.5.5.7.3.1"), oid("1.3.6.1.5.5.7.3.2"))
_OID_EXTENSION_REQUEST = oid("1.2.840.113549.1.9.14")

# keyUsage bit strings (DER: trailing zero bits dropped and counted as unused)
KU_DIGITAL_SIGNATURE = bit_string(b"\x80", 7)
KU_DIGITAL_SIGNATURE_KEY_ENCIPHERMENT = bit_string(b"\xa0", 5)
KU_CERT_SIGN_CRL_SIGN = bit_string(b"\x06", 1)


def signature_algorithm(algorithm: KeyAlgorithm) -> bytes:
    """The AlgorithmIdentifier for signatures made by a key of this algorithm."""
    if algorithm is KeyAlgorithm.EC_P256:
        return seq(OID_ECDSA_SHA256)
    if algorithm is KeyAlgorithm.EC_P384:
        return seq(OID_ECDSA_SHA384)
    return seq(OID_RSA_SHA256, NULL)


def digest(algorithm: KeyAlgorithm, data: bytes) -> bytes:
    return hashlib.new(algorithm.hash_name, data).digest()


def extension(ext_oid: bytes, value: bytes, *, critical: bool = False) -> bytes:
    if critical:
        return seq(ext_oid, BOOLEAN_TRUE, octet_string(value))
    return seq(ext_oid, octet_string(value))


def key_identifier(public_key: PublicKey) -> bytes:
    """RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        raw = public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    else:
        raw = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha1(raw, usedforsecurity=False).digest()


def spki(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def san(uris: Iterable[str] = (), dns_names: Iterable[str] = ()) -> bytes:
    names = b"".join(tlv(0x86, u.encode("ascii")) for u in uris)
    names += b"".join(tlv(0x82, d.encode("ascii")) for d in dns_names)
    return seq(names)


def name(attrs: x509.Name) -> bytes:
    return attrs.public_bytes()


EMPTY_NAME = seq()


@dataclass(frozen=True, slots=True, kw_only=True)
class TbsCertificate:
    """The fields of a to-be-signed certificate, already DER-encoded where they are opaque."""

    serial: int  # positive, at most 159 bits
    signature_algorithm: bytes  # AlgorithmIdentifier of the issuer's key
    issuer: bytes  # DER Name of the issuer (copied from its certificate)
    not_before: dt.datetime  # aware
    not_after: dt.datetime  # aware
    subject: bytes  # DER Name; EMPTY_NAME for SVIDs (the SAN is then critical)
    spki: bytes  # DER SubjectPublicKeyInfo of the subject
    extensions: tuple[bytes, ...]  # DER Extension elements

    def encode(self) -> bytes:
        return seq(
            b"\xa0\x03\x02\x01\x02",  # [0] EXPLICIT version v3
            integer(self.serial),
            self.signature_algorithm,
            self.issuer,
            seq(_time(self.not_before), _time(self.not_after)),
            self.subject,
            self.spki,
            tlv(0xA3, seq(*self.extensions)),
        )


def leaf_extensions(
    *,
    spiffe_id: str,
    dns_names: Iterable[str],
    subject_key_id: bytes,
    authority_key_id: bytes,
    rsa_key: bool,
    subject_empty: bool = True,
) -> tuple[bytes, ...]:
    """X.509-SVID extensions: cA=false, digitalSignature (+keyEncipherment for RSA), server+client EKU."""
    return (
        extension(_EXT_BASIC_CONSTRAINTS, seq(), critical=True),
        extension(
            _EXT_KEY_USAGE,
            KU_DIGITAL_SIGNATURE_KEY_ENCIPHERMENT if rsa_key else KU_DIGITAL_SIGNATURE,
            critical=True,
        ),
        extension(_EXT_EXT_KEY_USAGE, _EKU_SERVER_CLIENT),
        extension(_EXT_SKI, octet_string(subject_key_id)),
        extension(_EXT_AKI, seq(tlv(0x80, authority_key_id))),
        extension(_EXT_SAN, san([spiffe_id], dns_names), critical=subject_empty),
    )


def ca_extensions(
    *, trust_domain_id: str, subject_key_id: bytes, authority_key_id: bytes | None
) -> tuple[bytes, ...]:
    exts = [
        extension(_EXT_BASIC_CONSTRAINTS, seq(BOOLEAN_TRUE), critical=True),
        extension(_EXT_KEY_USAGE, KU_CERT_SIGN_CRL_SIGN, critical=True),
        extension(_EXT_SKI, octet_string(subject_key_id)),
    ]
    if authority_key_id is not None:
        exts.append(extension(_EXT_AKI, seq(tlv(0x80, authority_key_id))))
    exts.append(extension(_EXT_SAN, san([trust_domain_id])))
    return tuple(exts)


def assemble_certificate(tbs: bytes, sig_alg: bytes, signature: bytes) -> bytes:
    return seq(tbs, sig_alg, bit_string(signature))


def certification_request_info(subject: bytes, subject_spki: bytes, uris: Iterable[str]) -> bytes:
    """PKCS#10 CertificationRequestInfo asking for a CA certificate with the given URI SANs."""
    exts = seq(extension(_EXT_SAN, san(uris)), extension(_EXT_BASIC_CONSTRAINTS, seq(BOOLEAN_TRUE)))
    attr = seq(_OID_EXTENSION_REQUEST, tlv(0x31, exts))
    return seq(integer(0), subject, subject_spki, tlv(0xA0, attr))


def is_rsa(public_key: PublicKey) -> bool:
    return isinstance(public_key, rsa.RSAPublicKey)
