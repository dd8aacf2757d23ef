"""The Helm chart in deploy/helm/trustd, rendered offline and checked against Kubernetes and trustd.

Helm's own Go SDK (the ``helm-python-sdk`` wheel) renders and lints the chart, and
``kubernetes-validate`` checks every rendered object strictly against the Kubernetes
OpenAPI schemas. The config files the chart writes are then loaded with trustd's own
loaders, and every file they name is traced to the volume that provides it, so the chart
and the code cannot drift apart. No cluster is needed.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from trustd.agent.agent_config import ENV_KEYS as AGENT_ENV_KEYS
from trustd.agent.agent_config import AgentConfig, load_agent_config
from trustd.config import ENV_KEYS as SERVER_ENV_KEYS
from trustd.config import ServerConfig, load_server_config
from trustd.policy.errors import PolicyValidationError
from trustd.policy.loader import load_files

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "trustd"
RELEASE = "trustd"
NAMESPACE = "trustd-system"
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

# environment variables trustd reads besides the per-key ENV_KEYS tables
EXTRA_SERVER_ENV = {"TRUSTD_STORE_DSN"}
EXTRA_AGENT_ENV = {"TRUSTD_JOIN_TOKEN"}


def _policies_from_repo() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted((ROOT / "policies").glob("*.yaml"))}


PKCS11: dict[str, Any] = {
    "server": {
        "replicas": 3,
        "keyManager": {
            "kind": "pkcs11",
            "pkcs11": {
                "module": "/opt/hsm/lib/libvendorpkcs11.so",
                "tokenLabel": "trustd-prod",
                "slot": 2,
                "pinSecret": {"name": "hsm-pin", "key": "user-pin"},
            },
        },
        "extraEnv": [{"name": "HSM_CLIENT_CONF", "value": "/opt/hsm/etc/client.conf"}],
        "extraVolumes": [{"name": "hsm", "configMap": {"name": "hsm-client"}}],
        "extraVolumeMounts": [{"name": "hsm", "mountPath": "/opt/hsm/etc", "readOnly": True}],
        "podDisruptionBudget": {"minAvailable": 2},
        "audit": {"retention": "2160h"},
    },
    "policies": _policies_from_repo(),
}

VAULT_APPROLE: dict[str, Any] = {
    "trustDomain": "prod.example.org",
    "logLevel": "warning",
    "server": {
        "replicas": 3,
        "keyManager": {
            "kind": "vault-transit",
            "vaultTransit": {
                "address": "https://bao.vault.svc:8200",
                "mount": "trustd-transit",
                "keyPrefix": "prod-",
                "namespace": "platform",
                "caCert": {"configMap": "openbao-ca", "key": "ca.pem"},
                "auth": {
                    "appRole": {
                        "roleId": "trustd-server",
                        "secretIdSecret": {"name": "trustd-approle", "key": "secret_id"},
                    }
                },
            },
        },
        "upstreamAuthority": {
            "enabled": True,
            "vaultPki": {
                "address": "https://bao.vault.svc:8200",
                "mount": "pki_int",
                "issuer": "trustd",
                "caCert": {"configMap": "openbao-ca", "key": "ca.pem"},
                "auth": {"tokenSecret": {"name": "trustd-pki-token", "key": "token"}},
            },
        },
        "ca": {"ttl": "48h", "keyType": "ec-p384"},
        "svid": {"defaultTtl": "30m", "maxTtl": "12h"},
        "audit": {
            "syslog": {
                "enabled": True,
                "address": "siem.logging.svc:6514",
                "caCert": {"configMap": "siem-ca", "key": "ca.crt"},
            }
        },
        "persistence": {"storageClassName": "fast-ssd", "size": "50Gi"},
        "policyApply": {"prune": True},
    },
    "agent": {
        "socketDir": "/run/spiffe",
        "joinToken": {"perNode": False, "secretName": "trustd-join-shared", "key": "join"},
        "priorityClassName": "system-node-critical",
    },
    "policies": {"mesh-default": (ROOT / "policies" / "mesh-default.yaml").read_text()},
}

NO_PERSISTENCE: dict[str, Any] = {"server": {"replicas": 2, "persistence": {"enabled": False}}}

CASES: dict[str, Any] = {
    "defaults": {},
    "pkcs11-3-replicas-policies": PKCS11,
    "vault-approle-upstream-syslog": VAULT_APPROLE,
    "no-persistence": NO_PERSISTENCE,
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    loaded = helm_python.Chart.load(str(CHART))
    try:
        yield loaded
    finally:
        loaded.close()


def _render(chart: helm_python.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def _merged(values: dict[str, Any], chart: helm_python.Chart) -> dict[str, Any]:
    return chart.merge_values(copy.deepcopy(values))


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest, chart: helm_python.Chart) -> dict[str, Any]:
    values = CASES[request.param]
    return {
        "name": request.param,
        "values": values,
        "merged": _merged(values, chart),
        "docs": _render(chart, values),
    }


# -- Kubernetes ------------------------------------------------------------------------------


def test_every_document_is_a_valid_kubernetes_object(case: dict[str, Any]) -> None:
    docs = case["docs"]
    kinds = sorted(d["kind"] for d in docs)
    assert "StatefulSet" in kinds and "Service" in kinds and "ConfigMap" in kinds
    for doc in docs:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_strict_validation_rejects_a_misspelt_field(chart: helm_python.Chart) -> None:
    """The check above can fail: a field Kubernetes does not know is an error."""
    sts = copy.deepcopy(_one(_render(chart, {}), "StatefulSet", "trustd-server"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, "1.30.0", strict=True)


def test_helm_lint_strict_is_clean(case: dict[str, Any]) -> None:
    report = helm_python.lint(
        str(CHART), copy.deepcopy(case["values"]), strict=True, namespace=NAMESPACE
    )
    assert report["errors"] == []
    # severity 1 is information only ("icon is recommended"); warnings and errors fail
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# -- values.schema.json ----------------------------------------------------------------------


def test_schema_is_draft_07_and_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False

    # every key of values.yaml is described by the schema
    def walk(values: dict[str, Any], node: dict[str, Any], where: str) -> None:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        props = node.get("properties", {})
        for key, value in values.items():
            assert key in props, f"{where}{key} is in values.yaml but not in values.schema.json"
            nested = props[key]
            closed = "$ref" in nested or nested.get("additionalProperties") is False
            if isinstance(value, dict) and value and closed:
                walk(value, nested, f"{where}{key}.")

    walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"server": {"replica": 3}}, "replica"),  # typo'd key
        ({"agent": {"socketdir": "/run/x"}}, "socketdir"),
        ({"server": {"replicas": "3"}}, "replicas"),  # wrong type
        ({"server": {"podDisruptionBudget": {"enabled": "yes"}}}, "enabled"),
        ({"server": {"keyManager": {"kind": "local"}}}, "kind"),  # not shareable by replicas
        ({"server": {"ca": {"ttl": "one day"}}}, "ttl"),
        ({"policies": {"Bad Name": "x"}}, "Bad Name"),
        # secrets cannot be inlined: there is no key for them
        ({"server": {"store": {"dsn": "postgresql://u:pw@db/trustd"}}}, "dsn"),
        ({"server": {"keyManager": {"vaultTransit": {"token": "s.x"}}}}, "token"),
        ({"server": {"keyManager": {"pkcs11": {"pin": "1234"}}}}, "pin"),
        ({"agent": {"joinToken": {"token": "abc"}}}, "token"),
    ],
)
def test_schema_rejects(chart: helm_python.Chart, values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(complaint)):
        chart.validate_schema(copy.deepcopy(values))
    with pytest.raises(helm_python.HelmError):
        chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


def test_schema_accepts_every_case(chart: helm_python.Chart) -> None:
    for values in CASES.values():
        chart.validate_schema(copy.deepcopy(values))


# -- PodDisruptionBudget ---------------------------------------------------------------------


def test_pod_disruption_budget_covers_the_servers(case: dict[str, Any]) -> None:
    docs, merged = case["docs"], case["merged"]
    pdb = _one(docs, "PodDisruptionBudget", "trustd-server")
    sts = _one(docs, "StatefulSet", "trustd-server")
    assert pdb["spec"]["minAvailable"] == merged["server"]["podDisruptionBudget"]["minAvailable"]
    assert pdb["spec"]["minAvailable"] < sts["spec"]["replicas"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    agent = _one(docs, "DaemonSet", "trustd-agent")
    assert not selector.items() <= agent["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["replicas"] == merged["server"]["replicas"]


def test_default_budget_is_one(chart: helm_python.Chart) -> None:
    assert (
        _one(_render(chart, {}), "PodDisruptionBudget", "trustd-server")["spec"]["minAvailable"]
        == 1
    )
    docs = _render(chart, {"server": {"podDisruptionBudget": {"enabled": False}}})
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]


def test_budget_that_blocks_every_drain_is_refused(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="minAvailable"):
        chart.render({"server": {"replicas": 1}}, name=RELEASE, namespace=NAMESPACE)
    docs = _render(chart, {"server": {"replicas": 1, "podDisruptionBudget": {"enabled": False}}})
    assert _one(docs, "StatefulSet", "trustd-server")["spec"]["replicas"] == 1


# -- configs: loaded by trustd itself ---------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in {*SERVER_ENV_KEYS, *AGENT_ENV_KEYS, *EXTRA_SERVER_ENV, *EXTRA_AGENT_ENV}:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _mount_for(
    pod: dict[str, Any], container: dict[str, Any], path: str
) -> tuple[dict[str, Any], str]:
    """The volume that provides ``path`` in ``container``, and the path inside that volume."""
    best: dict[str, Any] | None = None
    for mount in container["volumeMounts"]:
        mp = PurePosixPath(mount["mountPath"])
        p = PurePosixPath(path)
        if (p == mp or mp in p.parents) and (
            best is None or len(mount["mountPath"]) > len(best["mountPath"])
        ):
            best = mount
    assert best is not None, f"{path} is in no volume of container {container['name']}"
    rel = str(PurePosixPath(path).relative_to(best["mountPath"]))
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {"data"}  # the StatefulSet's volumeClaimTemplates
    assert best["name"] in volumes or best["name"] in claims, f"no volume {best['name']}"
    return volumes.get(best["name"], {"name": best["name"]}), rel


def _assert_secret_file(
    pod: dict[str, Any], container: dict[str, Any], path: str | None, secret: dict[str, Any]
) -> None:
    assert path, "the config names no file for this secret"
    volume, rel = _mount_for(pod, container, path)
    assert "secret" in volume, f"{path} is not mounted from a Secret"
    assert volume["secret"]["secretName"] == secret["name"]
    keys = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    assert keys.get(rel) == secret["key"], f"{path} is not the Secret key {secret['key']}"
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount.get("readOnly") is True


def _assert_configmap_file(
    pod: dict[str, Any], container: dict[str, Any], path: str | None, ref: dict[str, Any]
) -> None:
    assert path, "the config names no file for this ConfigMap"
    volume, rel = _mount_for(pod, container, path)
    assert volume["configMap"]["name"] == ref["configMap"]
    keys = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    assert keys.get(rel) == ref["key"]


def _server_config(
    docs: list[dict[str, Any]], tmp_path: Path, env: pytest.MonkeyPatch
) -> ServerConfig:
    cm = _one(docs, "ConfigMap", "trustd-server")
    path = tmp_path / "server.yaml"
    path.write_text(cm["data"]["server.yaml"])
    # as the pod does: the DSN from the Secret, in the environment
    env.setenv("TRUSTD_STORE_DSN", "postgresql://trustd@db.example/trustd")
    return load_server_config(path)


def test_server_config_loads_with_trustds_loader(
    case: dict[str, Any], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    docs, s = case["docs"], case["merged"]["server"]
    cfg = _server_config(docs, tmp_path, clean_env)
    sts = _one(docs, "StatefulSet", "trustd-server")
    pod = sts["spec"]["template"]["spec"]
    server = _container(pod, "server")
    env = _env(server)

    assert cfg.trust_domain == case["merged"]["trustDomain"]
    assert cfg.log_level == case["merged"]["logLevel"]
    assert cfg.store.kind == "postgresql"
    assert cfg.store.dsn is not None  # from TRUSTD_STORE_DSN, as the pod sets it
    dsn = env["TRUSTD_STORE_DSN"]["valueFrom"]["secretKeyRef"]
    assert dsn == {"name": s["store"]["dsnSecret"]["name"], "key": s["store"]["dsnSecret"]["key"]}

    # every TRUSTD_* variable the pod sets is one trustd reads, and agrees with the file
    for name in env:
        if name.startswith("TRUSTD_"):
            assert name in SERVER_ENV_KEYS or name in EXTRA_SERVER_ENV, f"trustd reads no {name}"
    assert env["TRUSTD_ADMIN_SOCKET"]["value"] == str(cfg.admin_socket_path)

    # the data directory is on the data volume, and the admin socket in it
    _mount_for(pod, server, cfg.data_dir)
    assert cfg.admin_socket_path.parent == cfg.data_path
    assert str(cfg.data_path) != next(
        m["mountPath"] for m in server["volumeMounts"] if m["name"] == "data"
    ), "trustd chmods its data dir: it must be a directory it creates, not the volume root"

    # ports: config, container and Service agree
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert cfg.server_address == f"0.0.0.0:{ports['agent-api']}"
    assert cfg.metrics_address == f"0.0.0.0:{ports['metrics']}"
    svc = _one(docs, "Service", "trustd-server")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert svc_ports["agent-api"]["port"] == s["service"]["agentApiPort"]
    assert svc_ports["agent-api"]["targetPort"] == "agent-api"
    assert svc_ports["metrics"]["port"] == s["service"]["metricsPort"]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    # the key manager, and each secret it needs as a file mounted from the named Secret
    km = cfg.key_manager
    assert km.kind == s["keyManager"]["kind"]
    if km.kind == "vault-transit":
        vt = s["keyManager"]["vaultTransit"]
        assert km.token is None
        assert (km.address, km.mount, km.key_prefix) == (
            vt["address"],
            vt["mount"],
            vt["keyPrefix"],
        )
        assert km.namespace == (vt["namespace"] or None)
        if vt["auth"]["appRole"]["roleId"]:
            assert km.app_role is not None and km.token_file is None
            assert km.app_role.role_id == vt["auth"]["appRole"]["roleId"]
            assert km.app_role.secret_id is None
            _assert_secret_file(
                pod, server, km.app_role.secret_id_file, vt["auth"]["appRole"]["secretIdSecret"]
            )
        else:
            _assert_secret_file(pod, server, km.token_file, vt["auth"]["tokenSecret"])
        if vt["caCert"]["configMap"]:
            _assert_configmap_file(pod, server, km.ca_cert, vt["caCert"])
        else:
            assert km.ca_cert is None
        assert km.tls_skip_verify is False
    else:
        assert km.kind == "pkcs11"
        p = s["keyManager"]["pkcs11"]
        assert (km.module, km.token_label, km.slot) == (p["module"], p["tokenLabel"], p["slot"])
        assert km.pin is None and km.pin_env is None
        _assert_secret_file(pod, server, km.pin_file, p["pinSecret"])

    up = cfg.upstream_authority
    if s["upstreamAuthority"]["enabled"]:
        assert up is not None and up.kind == "vault-pki"
        vp = s["upstreamAuthority"]["vaultPki"]
        assert (up.address, up.mount, up.issuer) == (
            vp["address"],
            vp["mount"],
            vp["issuer"] or None,
        )
        assert up.token is None and up.role is None
        _assert_secret_file(pod, server, up.token_file, vp["auth"]["tokenSecret"])
        _assert_configmap_file(pod, server, up.ca_cert, vp["caCert"])
    else:
        assert up is None

    # CA, SVID and audit settings as given
    assert cfg.ca.key_type == s["ca"]["keyType"]
    syslog = s["audit"]["syslog"]
    if syslog["enabled"]:
        assert cfg.audit.syslog is not None
        assert cfg.audit.syslog.address == syslog["address"]
        _assert_configmap_file(pod, server, cfg.audit.syslog.ca_file, syslog["caCert"])
    else:
        assert cfg.audit.syslog is None
    assert (cfg.audit.retention is None) == (not s["audit"]["retention"])


def test_agent_config_loads_with_trustds_loader(
    case: dict[str, Any], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    docs, merged = case["docs"], case["merged"]
    a = merged["agent"]
    cm = _one(docs, "ConfigMap", "trustd-agent")
    path = tmp_path / "agent.yaml"
    path.write_text(cm["data"]["agent.yaml"])
    cfg: AgentConfig = load_agent_config(str(path))
    ds = _one(docs, "DaemonSet", "trustd-agent")
    pod = ds["spec"]["template"]["spec"]
    agent = _container(pod, "agent")
    env = _env(agent)

    assert cfg.trust_domain == merged["trustDomain"]
    for name in env:
        if name.startswith("TRUSTD_"):
            assert name in AGENT_ENV_KEYS or name in EXTRA_AGENT_ENV, f"the agent reads no {name}"

    # the agent reaches the server through the chart's Service, on its agent API port
    svc = _one(docs, "Service", "trustd-server")
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "agent-api")
    assert cfg.server_address == f"{svc['metadata']['name']}.{NAMESPACE}.svc:{port}"

    # the socket: in the hostPath directory, which is created 0755 if missing
    volume, rel = _mount_for(pod, agent, str(cfg.agent_socket_path))
    assert rel == "agent.sock"
    assert volume["hostPath"] == {"path": a["socketDir"], "type": "DirectoryOrCreate"}
    # the agent's own SVID: on a host directory too, so a restarted pod does not join again
    state, _ = _mount_for(pod, agent, cfg.data_dir)
    assert state["hostPath"] == {"path": a["stateDir"], "type": "DirectoryOrCreate"}

    # hostPID for /proc/PID/exe; SYS_PTRACE the one capability
    assert pod["hostPID"] is True
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    metrics = next(p["containerPort"] for p in agent["ports"] if p["name"] == "metrics")
    assert cfg.metrics_address == f"0.0.0.0:{metrics}"

    # first join: the bundle from the named ConfigMap, the token from the named Secret
    assert cfg.insecure_bootstrap is False
    _assert_configmap_file(
        pod,
        agent,
        cfg.trust_bundle_path,
        {"configMap": a["trustBundle"]["configMap"], "key": a["trustBundle"]["key"]},
    )
    assert cfg.join_token is None
    if a["joinToken"]["perNode"]:
        assert cfg.join_token_file is not None
        mount = next(m for m in agent["volumeMounts"] if m["mountPath"] == cfg.join_token_file)
        assert mount["subPathExpr"] == "$(NODE_NAME)"
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == a["joinToken"]["secretName"]
        assert "TRUSTD_JOIN_TOKEN" not in env
    else:
        assert cfg.join_token_file is None
        ref = env["TRUSTD_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"]
        # optional: once joined, the agent starts without it
        assert ref == {
            "name": a["joinToken"]["secretName"],
            "key": a["joinToken"]["key"],
            "optional": True,
        }


def test_workloads_mount_the_socket_as_the_readme_says(chart: helm_python.Chart) -> None:
    """The README's pod snippet is valid Kubernetes and points at the agent's socket."""
    readme = (CHART / "README.md").read_text()
    block = re.search(r"```yaml\n(# workload pod.*?)```", readme, re.S)
    assert block, "README.md has no workload pod example"
    pod = yaml.safe_load(block.group(1))
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    docs = _render(chart, {})
    agent_cfg = yaml.safe_load(_one(docs, "ConfigMap", "trustd-agent")["data"]["agent.yaml"])
    volume = pod["spec"]["volumes"][0]
    assert volume["hostPath"] == {"path": "/run/trustd", "type": "Directory"}
    container = pod["spec"]["containers"][0]
    mount = container["volumeMounts"][0]
    endpoint = next(e["value"] for e in container["env"] if e["name"] == "SPIFFE_ENDPOINT_SOCKET")
    sock = PurePosixPath(agent_cfg["agentSocket"]).name
    assert endpoint == f"unix://{mount['mountPath']}/{sock}"
    assert mount["readOnly"] is True


# -- policies --------------------------------------------------------------------------------


def _kubelet_configmap_dir(root: Path, data: dict[str, str]) -> Path:
    """A ConfigMap volume as the kubelet lays it out: files in a hidden timestamped
    directory, ..data pointing at it, and a symlink per key."""
    stamp = root / "..2026_01_01_00_00_00.000000000"
    stamp.mkdir(parents=True)
    for key, text in data.items():
        (stamp / key).write_text(text)
    (root / "..data").symlink_to(stamp.name)
    for key in data:
        (root / key).symlink_to(f"..data/{key}")
    return root


@pytest.mark.parametrize("name", ["pkcs11-3-replicas-policies", "vault-approle-upstream-syslog"])
def test_policies_are_a_configmap_the_server_pods_apply(
    chart: helm_python.Chart, name: str, tmp_path: Path
) -> None:
    values = CASES[name]
    docs = _render(chart, values)
    cm = _one(docs, "ConfigMap", "trustd-policies")
    assert set(cm["data"]) == {f"{n}.yaml" for n in values["policies"]}
    for n, text in values["policies"].items():
        assert yaml.safe_load_all(cm["data"][f"{n}.yaml"]) is not None
        assert list(yaml.safe_load_all(cm["data"][f"{n}.yaml"])) == [
            d for d in yaml.safe_load_all(text) if d is not None
        ]

    pod = _one(docs, "StatefulSet", "trustd-server")["spec"]["template"]["spec"]
    sidecar = _container(pod, "policy-apply")
    script = sidecar["args"][0]
    command = next(line.strip() for line in script.splitlines() if "trustd policy apply" in line)
    files = re.findall(r"-f ([^\s;]+)", command)
    assert ("--prune" in command) == bool(values["server"].get("policyApply", {}).get("prune"))

    # the files it names are the ConfigMap's keys, in the mounted volume
    volume, _ = _mount_for(pod, sidecar, files[0])
    assert volume["configMap"]["name"] == "trustd-policies"
    mount_dir = next(m["mountPath"] for m in sidecar["volumeMounts"] if m["name"] == volume["name"])
    assert sorted(PurePosixPath(f).name for f in files) == sorted(cm["data"])

    # trustd's own loader accepts exactly those files as the kubelet lays them out
    layout = _kubelet_configmap_dir(tmp_path / "policies", cm["data"])
    local = [str(layout / PurePosixPath(f).relative_to(mount_dir)) for f in files]
    objects = load_files(local)
    expected = load_files([ROOT / "policies" / f"{n}.yaml" for n in values["policies"]])
    assert sorted((o.kind, o.metadata.namespace, o.metadata.name) for o in objects) == sorted(
        (o.kind, o.metadata.namespace, o.metadata.name) for o in expected
    )

    # the sidecar reaches the admin socket of its own pod's server, with the server's uid
    server_cfg = yaml.safe_load(_one(docs, "ConfigMap", "trustd-server")["data"]["server.yaml"])
    assert _env(sidecar)["TRUSTD_ADMIN_SOCKET"]["value"] == server_cfg["adminSocket"]
    data_volume, _ = _mount_for(pod, sidecar, server_cfg["adminSocket"])
    assert data_volume["name"] == "data"
    assert "runAsUser" not in sidecar.get("securityContext", {})


def test_no_policies_no_configmap_and_no_sidecar(chart: helm_python.Chart) -> None:
    docs = _render(chart, {})
    assert not [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "trustd-policies"
    ]
    pod = _one(docs, "StatefulSet", "trustd-server")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["server"]


def test_an_invalid_policy_is_caught_by_trustds_loader(
    chart: helm_python.Chart, tmp_path: Path
) -> None:
    """The policy check above can fail: a typo in a policy is reported by the loader."""
    bad = {
        "policies": {
            "typo": "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
            "metadata: {name: x, namespace: shop}\nspec: {mtls: {mod: STRICT}}\n"
        }
    }
    cm = _one(_render(chart, bad), "ConfigMap", "trustd-policies")
    layout = _kubelet_configmap_dir(tmp_path / "p", cm["data"])
    with pytest.raises(PolicyValidationError, match="mod"):
        load_files([layout / "typo.yaml"])


# -- secrets ---------------------------------------------------------------------------------

SECRET_SHAPES = [
    re.compile(r"postgres(ql)?://"),  # a DSN
    re.compile(r"\b(hvs|hvb|s)\.[A-Za-z0-9]{8,}"),  # OpenBao/Vault tokens
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)password\s*[:=]"),
]


def test_no_secret_in_any_manifest(
    case: dict[str, Any], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    docs = case["docs"]
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart creates no Secret"
    text = yaml.safe_dump_all(docs)
    for shape in SECRET_SHAPES:
        assert not shape.search(text), f"rendered manifests contain {shape.pattern}"
    # every environment variable that carries a secret is a reference, never a value
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        for container in spec["containers"]:
            for var in container.get("env", []):
                if re.search(r"DSN|TOKEN|PIN|SECRET|PASSWORD", var["name"]):
                    assert "value" not in var, f"{var['name']} is inlined"
                    assert "secretKeyRef" in var["valueFrom"]
    # and the configs carry none inline (only files)
    cfg = _server_config(docs, tmp_path, clean_env)
    raw = yaml.safe_load(_one(docs, "ConfigMap", "trustd-server")["data"]["server.yaml"])
    assert "dsn" not in raw["store"]
    km = cfg.key_manager
    for field in ("token", "pin", "pin_env"):
        assert getattr(km, field, None) is None
    agent_raw = yaml.safe_load(_one(docs, "ConfigMap", "trustd-agent")["data"]["agent.yaml"])
    assert "joinToken" not in agent_raw


def test_secret_check_can_fail() -> None:
    """The scan above finds a DSN or a token where one is rendered."""
    leaked = yaml.safe_dump({"env": [{"name": "X", "value": "postgresql://u:p@db/x"}]})
    assert any(shape.search(leaked) for shape in SECRET_SHAPES)
    assert any(shape.search("token: hvs.CAESIAbcdefgh12345") for shape in SECRET_SHAPES)


# -- security context and persistence --------------------------------------------------------


def test_server_runs_non_root_read_only(case: dict[str, Any]) -> None:
    sts = _one(case["docs"], "StatefulSet", "trustd-server")
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert "hostPID" not in pod


def test_audit_log_volume(case: dict[str, Any]) -> None:
    sts = _one(case["docs"], "StatefulSet", "trustd-server")
    persistence = case["merged"]["server"]["persistence"]
    claims = sts["spec"].get("volumeClaimTemplates", [])
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    if persistence["enabled"]:
        assert [c["metadata"]["name"] for c in claims] == ["data"]
        assert claims[0]["spec"]["resources"]["requests"]["storage"] == persistence["size"]
        assert claims[0]["spec"].get("storageClassName", "") == persistence["storageClassName"]
        assert "data" not in volumes
    else:
        assert claims == []
        assert volumes["data"] == {"name": "data", "emptyDir": {}}
    headless = _one(case["docs"], "Service", "trustd-server-headless")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"


# -- the trustd commands the operations docs give --------------------------------------------

DOCS = [ROOT / "docs" / "operations.md", CHART / "README.md", CHART / "templates" / "NOTES.txt"]


def _code(doc: Path) -> str:
    """The code in a document: fenced blocks and `inline` spans of Markdown; all of NOTES.txt."""
    text = doc.read_text()
    if doc.suffix != ".md":
        return text
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    rest = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    return "\n".join(blocks + re.findall(r"`([^`\n]+)`", rest))


def _trustd_commands(text: str) -> list[list[str]]:
    """Every `trustd ...` command line in the text: split into words, up to a pipe,
    a redirection, a backquote or the end of the line."""
    found = []
    text = re.sub(r"(?m)(^|\s)#.*$", "", text)  # shell and YAML comments are prose
    for match in re.finditer(r"(?<![\w/.-])trustd((?: [^\s`|>;)]+)+)", text):
        words = match.group(1).split()
        if words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
            found.append(words)
    return found


def _resolve(words: list[str]) -> tuple[Any, list[str]]:
    import typer.main

    from trustd.cli.main import app

    command: Any = typer.main.get_command(app)
    path = []
    rest = list(words)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    runs_itself = getattr(command, "invoke_without_command", False)  # `trustd agent --config F`
    assert runs_itself or not hasattr(command, "commands"), (
        f"`trustd {' '.join(words)}` names no command"
    )
    return command, rest


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_trustd_command_in_the_docs_exists(doc: Path) -> None:
    commands = _trustd_commands(_code(doc))
    assert len(commands) >= 3, f"no trustd command found in {doc.name}"
    for words in commands:
        command, rest = _resolve(words)
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        known |= {"--admin-socket", "--output", "-o", "--debug", "--help"}
        for word in rest:
            flag = word.split("=", 1)[0]
            if flag.startswith("-"):
                assert flag in known, f"`trustd {' '.join(words)}`: {flag} is no option of it"


def test_docs_command_check_can_fail() -> None:
    with pytest.raises(AssertionError, match="no option"):
        for words in _trustd_commands("run `trustd authority revoke ID --forse`"):
            command, rest = _resolve(words)
            known = {opt for param in command.params for opt in param.opts}
            for word in rest:
                assert not word.startswith("-") or word in known, f"{word} is no option"
    with pytest.raises(AssertionError, match="names no command"):
        _resolve(["authority", "rotate"])


def _pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if spec:
            yield doc["metadata"]["name"], spec


def test_no_volume_is_mounted_inside_another(case: dict[str, Any]) -> None:
    """A mount inside a read-only ConfigMap or Secret mount needs a directory the runtime
    cannot create there; keep every mount of a container beside the others."""
    for name, pod in _pods(case["docs"]):
        for container in pod["containers"]:
            paths = [PurePosixPath(m["mountPath"]) for m in container.get("volumeMounts", [])]
            assert len(paths) == len(set(paths)), f"{name}/{container['name']}: a path twice"
            for outer in paths:
                for inner in paths:
                    assert outer not in inner.parents, (
                        f"{name}/{container['name']}: {inner} is mounted inside {outer}"
                    )


def test_config_flags_name_the_rendered_config_files(case: dict[str, Any]) -> None:
    docs = case["docs"]
    for workload, container_name, configmap, key in (
        ("trustd-server", "server", "trustd-server", "server.yaml"),
        ("trustd-agent", "agent", "trustd-agent", "agent.yaml"),
    ):
        pod = next(p for n, p in _pods(docs) if n == workload)
        container = _container(pod, container_name)
        args = container["args"]
        path = args[args.index("--config") + 1]
        volume, rel = _mount_for(pod, container, path)
        assert volume["configMap"]["name"] == configmap
        assert rel == key
        assert key in _one(docs, "ConfigMap", configmap)["data"]
