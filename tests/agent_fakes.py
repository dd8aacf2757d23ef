"""A fake of the trustd server for agent tests: a real throwaway CA behind the Upstream seam.

``FakeUpstream`` implements ``trustd.agent.upstream.Upstream``. Its CA is real
(``cryptography``) and issues real X.509-SVIDs (one URI SAN, cA=false, EKU
serverAuth+clientAuth), so Envoy and the ``spiffe`` client accept them. What
it fakes is only the server's bookkeeping: entries and bundles live in memory
and changes are pushed to every open watch.

Knobs for tests: ``go_down()`` / ``come_back()`` (watches break, signing raises
``UnavailableError``), ``hold_signing()`` / ``release_signing()``,
``rotate_ca()``, ``taint_old_ca()``, ``drop_old_cas()``, ``sign_calls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from trustd.agent.cache import AgentSettings
from trustd.agent.metrics import AgentMetrics
from trustd.agent.service import AgentService
from trustd.agent.upstream import (
    BundleUpdate,
    EntryUpdate,
    JwtSvidRequest,
    SignedJwtSvid,
    SvidRequest,
)
from trustd.bundle import Bundle
from trustd.ca.issuer import IssuedSvid
from trustd.clock import Clock, SystemClock
from trustd.entries import RegistrationEntry
from trustd.errors import PermissionDeniedError, UnavailableError
from trustd.selectors import Selector
from trustd.spiffeid import SpiffeId, TrustDomain

BACKDATE = dt.timedelta(seconds=10)


@dataclass
class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def ski(self) -> bytes:
        return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


class TestCA:
    """A self-signed root that issues X.509-SVIDs for one trust domain."""

    __test__ = False  # not a pytest class

    def __init__(self, trust_domain: TrustDomain, *, clock: Clock, ttl: dt.timedelta) -> None:
        self.trust_domain = trust_domain
        self.clock = clock
        self.ca_ttl = ttl
        self.authorities: list[_Authority] = [self._new_authority()]
        self.sequence = 1

    def _new_authority(self) -> _Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = self.clock.now()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustd test"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, str(uuid.uuid4())),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + self.ca_ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return _Authority(key, cert)

    @property
    def active(self) -> _Authority:
        return self.authorities[-1]

    def rotate(self) -> None:
        """Add a new authority that signs from now on; the old ones stay in the bundle."""
        self.authorities.append(self._new_authority())
        self.sequence += 1

    def drop_old(self) -> None:
        self.authorities = self.authorities[-1:]
        self.sequence += 1

    def bundle(self) -> Bundle:
        return Bundle(
            trust_domain=self.trust_domain,
            x509_authorities=tuple(a.cert for a in self.authorities),
            sequence=self.sequence,
        )

    def issue(
        self, public_key: ec.EllipticCurvePublicKey, spiffe_id: SpiffeId, ttl: dt.timedelta
    ) -> x509.Certificate:
        now = self.clock.now()
        ca = self.active
        not_after = min(now + ttl, ca.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
                critical=True,  # the subject is empty
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
            )
            .sign(ca.key, hashes.SHA256())
        )


class FakeUpstream:
    """In-memory server: entries, bundles and a real CA; implements ``Upstream``."""

    def __init__(
        self,
        trust_domain: TrustDomain | str = "trustd.local",
        *,
        clock: Clock | None = None,
        svid_ttl: dt.timedelta = dt.timedelta(hours=1),
        ca_ttl: dt.timedelta = dt.timedelta(hours=24),
    ) -> None:
        td = (
            trust_domain
            if isinstance(trust_domain, TrustDomain)
            else TrustDomain.parse(trust_domain)
        )
        self.trust_domain = td
        self.clock = clock or SystemClock()
        self.svid_ttl = svid_ttl
        self.ca = TestCA(td, clock=self.clock, ttl=ca_ttl)
        self.federated: dict[TrustDomain, Bundle] = {}
        self.entries: dict[str, RegistrationEntry] = {}
        self.revision = 0
        self.available = True
        self.sign_calls: list[list[str]] = []  # entry ids per sign_x509_svids call
        self.issued: list[x509.Certificate] = []
        self.tainted: frozenset[bytes] = frozenset()
        self._entry_watchers: set[asyncio.Queue[EntryUpdate | Exception]] = set()
        self._bundle_watchers: set[asyncio.Queue[BundleUpdate | Exception]] = set()
        self._sign_gate: asyncio.Event | None = None

    # ------------------------------------------------------------------ registry

    def add_entry(
        self,
        spiffe_id: str,
        selectors: Sequence[str],
        *,
        ttl: dt.timedelta | None = None,
        entry_id: str | None = None,
        created_at: dt.datetime | None = None,
        federates_with: Sequence[str] = (),
    ) -> RegistrationEntry:
        self.revision += 1
        entry = RegistrationEntry(
            id=entry_id or str(uuid.uuid4()),
            spiffe_id=SpiffeId.parse(spiffe_id),
            selectors=tuple(sorted({Selector.parse(s) for s in selectors})),
            ttl=ttl,
            revision=self.revision,
            created_at=created_at or dt.datetime.now(dt.UTC),
            federates_with=tuple(sorted({TrustDomain.parse(td) for td in federates_with})),
        )
        self.entries[entry.id] = entry
        self._push_entries(EntryUpdate(revision=self.revision, full=False, upserted=(entry,)))
        return entry

    def update_entry(
        self, entry_id: str, *, spiffe_id: str | None = None, selectors: Sequence[str] | None = None
    ) -> RegistrationEntry:
        old = self.entries[entry_id]
        self.revision += 1
        entry = RegistrationEntry(
            id=entry_id,
            spiffe_id=SpiffeId.parse(spiffe_id) if spiffe_id else old.spiffe_id,
            selectors=(
                tuple(sorted({Selector.parse(s) for s in selectors}))
                if selectors is not None
                else old.selectors
            ),
            ttl=old.ttl,
            revision=self.revision,
            created_at=old.created_at,
        )
        self.entries[entry_id] = entry
        self._push_entries(EntryUpdate(revision=self.revision, full=False, upserted=(entry,)))
        return entry

    def remove_entry(self, entry_id: str) -> None:
        del self.entries[entry_id]
        self.revision += 1
        self._push_entries(EntryUpdate(revision=self.revision, full=False, removed=(entry_id,)))

    # ------------------------------------------------------------------ bundles and CA

    def bundle_update(self) -> BundleUpdate:
        return BundleUpdate(
            bundles=(self.ca.bundle(), *self.federated.values()), tainted_key_ids=self.tainted
        )

    def rotate_ca(self) -> None:
        self.ca.rotate()
        self._push_bundles()

    def taint_old_ca(self) -> None:
        self.tainted = frozenset(a.ski for a in self.ca.authorities[:-1])
        self._push_bundles()

    def drop_old_cas(self) -> None:
        self.ca.drop_old()
        self._push_bundles()

    def set_federated(self, bundle: Bundle) -> None:
        self.federated[bundle.trust_domain] = bundle
        self._push_bundles()

    # ------------------------------------------------------------------ availability

    def go_down(self) -> None:
        """Break the watches and refuse to sign, as a dead server would."""
        self.available = False
        for q in list(self._entry_watchers):
            q.put_nowait(UnavailableError("server connection lost"))
        for bq in list(self._bundle_watchers):
            bq.put_nowait(UnavailableError("server connection lost"))

    def come_back(self) -> None:
        self.available = True

    def hold_signing(self) -> None:
        self._sign_gate = asyncio.Event()

    def release_signing(self) -> None:
        if self._sign_gate is not None:
            self._sign_gate.set()
            self._sign_gate = None

    # ------------------------------------------------------------------ Upstream

    def _push_entries(self, update: EntryUpdate) -> None:
        for q in list(self._entry_watchers):
            q.put_nowait(update)

    def _push_bundles(self) -> None:
        update = self.bundle_update()
        for q in list(self._bundle_watchers):
            q.put_nowait(update)

    async def watch_entries(
        self, *, since_revision: int | None
    ) -> AsyncGenerator[EntryUpdate, None]:
        if not self.available:
            raise UnavailableError("server is down")
        q: asyncio.Queue[EntryUpdate | Exception] = asyncio.Queue()
        self._entry_watchers.add(q)
        try:
            yield EntryUpdate(
                revision=self.revision, full=True, upserted=tuple(self.entries.values())
            )
            while True:
                item = await q.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._entry_watchers.discard(q)

    async def watch_bundles(self) -> AsyncGenerator[BundleUpdate, None]:
        if not self.available:
            raise UnavailableError("server is down")
        q: asyncio.Queue[BundleUpdate | Exception] = asyncio.Queue()
        self._bundle_watchers.add(q)
        try:
            yield self.bundle_update()
            while True:
                item = await q.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._bundle_watchers.discard(q)

    async def sign_x509_svids(self, requests: Sequence[SvidRequest]) -> list[IssuedSvid]:
        self.sign_calls.append([r.entry_id for r in requests])
        if self._sign_gate is not None:
            await self._sign_gate.wait()
        if not self.available:
            raise UnavailableError("server is down")
        out = []
        for r in requests:
            entry = self.entries.get(r.entry_id)
            if entry is None:
                raise PermissionDeniedError(f"entry {r.entry_id} is not served by this agent")
            csr = x509.load_der_x509_csr(r.csr_der)
            pub = csr.public_key()
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            cert = self.issue_for(entry, pub)
            out.append(
                IssuedSvid(
                    entry_id=r.entry_id,
                    spiffe_id=entry.spiffe_id,
                    certificate=cert,
                    chain_der=(cert.public_bytes(serialization.Encoding.DER),),
                    serial=format(cert.serial_number, "x"),
                    not_after=cert.not_valid_after_utc,
                    authority_id="fake",
                )
            )
        return out

    async def sign_jwt_svid(self, request: JwtSvidRequest) -> SignedJwtSvid:
        # no JWT keys here: JwtFakeUpstream (tests/unit/workloadapi) signs JWT-SVIDs
        raise NotImplementedError("this fake server signs no JWT-SVIDs")

    def issue_for(
        self, entry: RegistrationEntry, public_key: ec.EllipticCurvePublicKey
    ) -> x509.Certificate:
        cert = self.ca.issue(public_key, entry.spiffe_id, entry.ttl or self.svid_ttl)
        self.issued.append(cert)
        return cert


# ---------------------------------------------------------------------- test helpers


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no pytest-asyncio here)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


async def wait_until(cond: Callable[[], bool], *, what: str, timeout: float = 30.0) -> None:
    """Poll ``cond`` until true; the timeout is only a liveness guard, never a measured bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_agent(
    socket_path: Path,
    upstream: FakeUpstream,
    *,
    clock: Clock | None = None,
    settings: AgentSettings | None = None,
    ready: bool = True,
) -> AsyncIterator[AgentService]:
    agent = AgentService(
        upstream=upstream,
        socket_path=socket_path,
        trust_domain=upstream.trust_domain,
        clock=clock or upstream.clock,
        settings=settings,
    )
    await agent.start()
    try:
        if ready:
            await asyncio.wait_for(agent.wait_ready(), 30)
        yield agent
    finally:
        await agent.stop()


SDS_STREAM = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
SDS_FETCH = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"
SDS_DELTA = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def sds_request(
    names: Sequence[str], *, version: str = "", nonce: str = "", error: str | None = None
) -> DiscoveryRequest:
    req = DiscoveryRequest(
        resource_names=list(names),
        type_url=SECRET_TYPE,
        version_info=version,
        response_nonce=nonce,
    )
    if error is not None:
        req.error_detail.code = 3
        req.error_detail.message = error
    return req


def secrets_of(resp: DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    out = {}
    for any_msg in resp.resources:
        s = secret_pb2.Secret()
        assert any_msg.Unpack(s)
        out[s.name] = s
    return out


def leaf_of(secret: secret_pb2.Secret) -> x509.Certificate:
    return x509.load_pem_x509_certificates(secret.tls_certificate.certificate_chain.inline_bytes)[0]


def uri_of(cert: x509.Certificate) -> str:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert len(uris) == 1
    return uris[0]


def sds_call(channel: grpc.aio.Channel) -> Any:
    """Open a StreamSecrets call with grpcio (a real gRPC client, as Envoy's)."""
    return channel.stream_stream(
        SDS_STREAM,
        request_serializer=DiscoveryRequest.SerializeToString,
        response_deserializer=DiscoveryResponse.FromString,
    )()


async def sds_fetch(channel: grpc.aio.Channel, names: Sequence[str]) -> DiscoveryResponse:
    fetch = channel.unary_unary(
        SDS_FETCH,
        request_serializer=DiscoveryRequest.SerializeToString,
        response_deserializer=DiscoveryResponse.FromString,
    )
    resp: DiscoveryResponse = await fetch(sds_request(names))
    return resp


def agent_channel(socket_path: Path) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"unix://{socket_path}")


async def read_error(call: Any) -> grpc.StatusCode:
    """Read until the call fails; return its status code."""
    try:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                break
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    code: grpc.StatusCode = await call.code()
    return code


def split_der(data: bytes) -> list[x509.Certificate]:
    """Certificates from concatenated DER (the Workload API's chain and bundle format)."""
    out = []
    i = 0
    while i < len(data):
        assert data[i] == 0x30, "expected a DER SEQUENCE"
        first = data[i + 1]
        if first < 0x80:
            length, head = first, 2
        else:
            n = first & 0x7F
            length, head = int.from_bytes(data[i + 2 : i + 2 + n], "big"), 2 + n
        out.append(x509.load_der_x509_certificate(data[i : i + head + length]))
        i += head + length
    return out


def metric(metrics: AgentMetrics, name: str, **labels: str) -> float:
    """A sample from the agent's own registry (NaN stays NaN, absent is 0)."""
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


# ---------------------------------------------------------------------- other uids

SITE_PACKAGES = Path(grpc.__file__).resolve().parents[1]
REPO_ROOT = Path(__file__).resolve().parents[1]


def _world_reachable(path: Path) -> bool:
    p = path.resolve()
    if not p.is_file() or not (p.stat().st_mode & 0o001):
        return False
    return all(parent.stat().st_mode & 0o001 for parent in p.parents)


def python_for_other_users() -> str:
    """A Python 3.11 interpreter another uid can run, using this venv's packages by PYTHONPATH.

    The venv's interpreter may live under a 0700 home (pyenv under /root); the ABI matches.
    """
    import shutil
    import sys

    candidates = [
        Path(sys.executable),
        Path("/usr/bin/python3.11"),
        Path("/usr/local/bin/python3.11"),
    ]
    found = shutil.which("python3.11")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.exists() and _world_reachable(c):
            return str(c.resolve())
    raise AssertionError(
        "no python3.11 reachable by other users; install Debian's python3.11 (apt-get install "
        "python3.11) so the tests can run clients under other uids"
    )


def other_user_env(**extra: str) -> dict[str, str]:
    """Environment for a client run as another uid: this venv's packages and the repo."""
    env = {
        "PATH": "/usr/bin:/bin",
        # other_uid_site first: its sitecustomize keeps Debian's dist-packages out
        "PYTHONPATH": (
            f"{REPO_ROOT / 'tests' / 'other_uid_site'}:{SITE_PACKAGES}:{REPO_ROOT}:"
            f"{REPO_ROOT / 'tests'}"
        ),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",
    }
    env.update(extra)
    return env


def world_dir(base: Path | None = None) -> Path:
    """A temp dir other uids can traverse (pytest's tmp_path is 0700 under /tmp/pytest-of-root)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="trustd-agent-", dir=base or "/tmp"))
    d.chmod(0o755)
    return d
