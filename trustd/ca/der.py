"""Just enough DER to build X.509 certificates and CSRs whose signature comes from a KMS.

``cryptography``'s builders sign only with keys held in process memory. Here the
CA key lives behind the ``KeyManager`` seam (a file, OpenBao transit, an HSM),
so the issuer encodes the TBSCertificate itself, hashes it, asks the key
manager for a signature, and assembles the certificate. The encoder writes the
fixed shapes RFC 5280 needs for SVIDs and CA certificates, nothing general;
an SVID's TBSCertificate comes from a per-CA template (``SvidTbsTemplate``).
Every certificate built here is parsed back by the caller, and its signature
verified unless the key manager made it in process (``signs_in_process``).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
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
    n = len(body)
    if n < 0x80:  # the common case, on the issuance hot path
        return bytes((tag, n)) + body
    return bytes((tag,)) + _len(n) + body


def read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER element at ``pos``: its tag and the start and end of its contents."""
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER element")
    return tag, pos, pos + length


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
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
    w = when.astimezone(dt.UTC)
    hms = (w.month, w.day, w.hour, w.minute, w.second)
    if 1950 <= w.year < 2050:
        return tlv(0x17, b"%02d%02d%02d%02d%02d%02dZ" % (w.year % 100, *hms))
    return tlv(0x18, b"%04d%02d%02d%02d%02d%02dZ" % (w.year, *hms))


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
    if algorithm is KeyAlgorithm.EC_P384:
        return hashlib.sha384(data).digest()
    return hashlib.sha256(data).digest()


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


def spki_and_key_identifier(public_key: PublicKey) -> tuple[bytes, bytes]:
    """The DER SubjectPublicKeyInfo and its RFC 5280 method-1 key identifier, in one encoding."""
    info = spki(public_key)
    return info, spki_key_identifier(info)


def spki_key_identifier(info: bytes) -> bytes:
    """The RFC 5280 method-1 key identifier of a DER SubjectPublicKeyInfo.

    It is the SHA-1 of the subjectPublicKey BIT STRING's value, which is what
    ``key_identifier`` hashes (the X9.62 point, or the PKCS#1 RSA key).
    """
    _, start, _ = read_tlv(info, 0)  # SubjectPublicKeyInfo
    _, _, alg_end = read_tlv(info, start)  # AlgorithmIdentifier
    tag, bits_start, bits_end = read_tlv(info, alg_end)  # subjectPublicKey
    if tag != 0x03 or info[bits_start] != 0:
        raise ValueError("unexpected SubjectPublicKeyInfo encoding")
    return hashlib.sha1(info[bits_start + 1 : bits_end], usedforsecurity=False).digest()


# SubjectPublicKeyInfo of a P-256 and a P-384 key up to the point's coordinates (named
# curve, uncompressed point), and the coordinates' length: what ``spki`` writes for such keys.
_EC_SPKI_SHAPES = (
    (bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004"), 64),
    (bytes.fromhex("3076301006072a8648ce3d020106052b8104002203620004"), 96),
)


def request_spki(request_info: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo of a DER CertificationRequestInfo, when ``spki`` would write it.

    That is an EC P-256 or P-384 key on its named curve with an uncompressed
    point; for any other key (RSA, a compressed point) None, and the caller
    encodes the key with ``spki``. The request must already have been parsed
    strictly (as ``cryptography`` does) and its key checked.
    """
    _, pos, _ = read_tlv(request_info, 0)  # CertificationRequestInfo
    _, _, pos = read_tlv(request_info, pos)  # version
    _, _, pos = read_tlv(request_info, pos)  # subject
    _, _, end = read_tlv(request_info, pos)  # subjectPKInfo
    info = request_info[pos:end]
    for prefix, coordinates in _EC_SPKI_SHAPES:
        if len(info) == len(prefix) + coordinates and info.startswith(prefix):
            return info
    return None


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
        _LEAF_BASIC_CONSTRAINTS,
        _LEAF_KEY_USAGE_RSA if rsa_key else _LEAF_KEY_USAGE_EC,
        _LEAF_EXT_KEY_USAGE,
        extension(_EXT_SKI, octet_string(subject_key_id)),
        extension(_EXT_AKI, seq(tlv(0x80, authority_key_id))),
        extension(_EXT_SAN, san([spiffe_id], dns_names), critical=subject_empty),
    )


# The leaf extensions that are the same in every SVID, encoded once.
_LEAF_BASIC_CONSTRAINTS = extension(_EXT_BASIC_CONSTRAINTS, seq(), critical=True)
_LEAF_KEY_USAGE_EC = extension(_EXT_KEY_USAGE, KU_DIGITAL_SIGNATURE, critical=True)
_LEAF_KEY_USAGE_RSA = extension(
    _EXT_KEY_USAGE, KU_DIGITAL_SIGNATURE_KEY_ENCIPHERMENT, critical=True
)
_LEAF_EXT_KEY_USAGE = extension(_EXT_EXT_KEY_USAGE, _EKU_SERVER_CLIENT)
_VERSION_V3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT version v3
_KEY_ID_LEN = 20  # SHA-1, as key_identifier and spki_and_key_identifier make it
# The SKI extension up to its 20 key-identifier octets.
_LEAF_SKI_PREFIX = extension(_EXT_SKI, octet_string(bytes(_KEY_ID_LEN)))[:-_KEY_ID_LEN]


@functools.lru_cache(maxsize=256)
def validity(not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    """The Validity SEQUENCE of a certificate (SVIDs issued in the same second share it)."""
    return seq(_time(not_before), _time(not_after))


@functools.lru_cache(maxsize=4096)
def _svid_san(spiffe_id: str, dns_names: tuple[str, ...]) -> bytes:
    return extension(_EXT_SAN, san((spiffe_id,), dns_names), critical=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class SvidTbsTemplate:
    """The TBSCertificate of every X.509-SVID one CA signs, with the per-leaf fields left open.

    What is the same in each SVID of a CA (version, signature algorithm, issuer,
    empty subject, basic constraints, key usage, EKU, AKI) is encoded once;
    ``encode`` fills in the serial, validity, public key, SKI and SAN. Its
    output is byte for byte what ``TbsCertificate`` with ``leaf_extensions``
    writes for the same fields.
    """

    head: bytes  # signature AlgorithmIdentifier and issuer Name, after the serial
    ec_extensions: bytes  # basic constraints, key usage (EC), EKU
    rsa_extensions: bytes  # the same with the RSA key usage
    aki: bytes  # the AuthorityKeyIdentifier extension

    @classmethod
    def build(
        cls, *, signature_algorithm: bytes, issuer: bytes, authority_key_id: bytes
    ) -> SvidTbsTemplate:
        return cls(
            head=signature_algorithm + issuer,
            ec_extensions=_LEAF_BASIC_CONSTRAINTS + _LEAF_KEY_USAGE_EC + _LEAF_EXT_KEY_USAGE,
            rsa_extensions=_LEAF_BASIC_CONSTRAINTS + _LEAF_KEY_USAGE_RSA + _LEAF_EXT_KEY_USAGE,
            aki=extension(_EXT_AKI, seq(tlv(0x80, authority_key_id))),
        )

    def encode(
        self,
        *,
        serial: int,
        validity: bytes,
        spki: bytes,
        subject_key_id: bytes,
        spiffe_id: str,
        dns_names: tuple[str, ...],
        rsa_key: bool,
    ) -> bytes:
        """The DER TBSCertificate; ``validity`` as ``validity()`` encodes it."""
        if len(subject_key_id) == _KEY_ID_LEN:
            ski = _LEAF_SKI_PREFIX + subject_key_id
        else:
            ski = extension(_EXT_SKI, octet_string(subject_key_id))
        extensions = b"".join(
            (
                self.rsa_extensions if rsa_key else self.ec_extensions,
                ski,
                self.aki,
                _svid_san(spiffe_id, dns_names),
            )
        )
        return tlv(
            0x30,
            b"".join(
                (
                    _VERSION_V3,
                    integer(serial),
                    self.head,
                    validity,
                    EMPTY_NAME,
                    spki,
                    tlv(0xA3, tlv(0x30, extensions)),
                )
            ),
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


def certificate_pem(cert_der: bytes) -> bytes:
    """PEM of a DER certificate, byte for byte what ``cryptography`` writes."""
    b64 = base64.b64encode(cert_der)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"
