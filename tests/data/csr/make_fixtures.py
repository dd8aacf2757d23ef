"""Regenerates the bad-CSR fixtures in this folder (run by hand; the tests only read them).

Each fixture is a CSR a real client could send and that trustd must refuse,
or must sign without letting anything but its public key through. Private
keys are thrown away. ``python tests/data/csr/make_fixtures.py``
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
EMPTY = x509.Name([])


def _pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


SHA256 = hashes.SHA256()


def _plain(key: object, algorithm: hashes.HashAlgorithm | None = SHA256) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(EMPTY)
    return _pem(builder.sign(key, algorithm))  # type: ignore[arg-type]


def _flip_signature_byte(pem: bytes) -> bytes:
    """The same request with the last byte of its signature changed: still DER, no longer valid."""
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def _asks_for_everything() -> bytes:
    """A P-256 request asking for another identity, CA powers, extra names and extensions."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(
                        NameOID.COMMON_NAME, "spiffe://trustd.local/ns/admin/sa/root"
                    ),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil"),
                ]
            )
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://trustd.local/ns/admin/sa/root"),
                    x509.UniformResourceIdentifier("spiffe://other.example/ns/x/sa/y"),
                    x509.DNSName("evil.example"),
                    x509.DNSName("spiffe://trustd.local/ns/admin/sa/root"),
                    x509.RFC822Name("root@evil.example"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.OCSP_SIGNING]
            ),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x04\x03evil"
            ),
            critical=False,
        )
    )
    return _pem(builder.sign(key, hashes.SHA256()))


def _openssl_sha1() -> bytes:
    """ECDSA-with-SHA1: cryptography refuses to make one, so openssl does."""
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "k.pem"
        key.write_bytes(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        out = subprocess.run(
            ["openssl", "req", "-new", "-key", str(key), "-sha1", "-subj", "/"],
            check=True,
            capture_output=True,
        )
        return out.stdout


def main() -> None:
    fixtures = {
        "rsa-1024.pem": _plain(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "ec-p192.pem": _plain(ec.generate_private_key(ec.SECP192R1())),
        "ec-p224.pem": _plain(ec.generate_private_key(ec.SECP224R1())),
        "ec-p521.pem": _plain(ec.generate_private_key(ec.SECP521R1())),
        "ec-secp256k1.pem": _plain(ec.generate_private_key(ec.SECP256K1())),
        "ed25519.pem": _plain(ed25519.Ed25519PrivateKey.generate(), None),
        "ec-p256-bad-signature.pem": _flip_signature_byte(
            _plain(ec.generate_private_key(ec.SECP256R1()))
        ),
        "ec-p256-sha1.pem": _openssl_sha1(),
        "ec-p256-asks-for-everything.pem": _asks_for_everything(),
        "rsa-2048.pem": _plain(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ec-p384.pem": _plain(ec.generate_private_key(ec.SECP384R1())),
    }
    for name, data in fixtures.items():
        (HERE / name).write_bytes(data)
    # Not a CSR at all: text that starts like PEM, and random-looking binary.
    (HERE / "garbage.pem").write_bytes(
        b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n"
    )
    (HERE / "garbage.der").write_bytes(bytes(range(256)) * 4)


if __name__ == "__main__":
    main()
