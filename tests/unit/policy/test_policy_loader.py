"""Loading policy YAML strictly: every validation error class, and whole-apply rejection."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustd.policy import PolicyValidationError, load_files, load_text
from trustd.policy.model import AuthorizationPolicy, ClientTLSPolicy, PeerAuthentication

HEAD = "apiVersion: trustd.io/v1alpha1\n"


def pa(spec: str, name: str = "p", ns: str = "shop") -> str:
    return f"{HEAD}kind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyValidationError) as err:
        load_text(text, source="policies/x.yaml")
    return list(err.value.problems)


def test_valid_documents_of_every_kind_load() -> None:
    objs = load_text(
        pa(
            "  mtls: {mode: STRICT}\n  portLevelMtls: {3306: {mode: DISABLE}, '8080': {mode: PERMISSIVE}}\n"
        )
        + "---\n"
        + f"{HEAD}kind: ClientTLSPolicy\nmetadata: {{name: c, namespace: shop}}\n"
        "spec:\n  destination: {spiffeIds: ['spiffe://td/ns/db/**']}\n  tls: {mode: MUTUAL}\n"
        + "---\n"
        + f"{HEAD}kind: AuthorizationPolicy\nmetadata: {{name: a, namespace: shop}}\n"
        "spec:\n  action: DENY\n  rules:\n  - from: [{principals: ['spiffe://td/ns/x/*'], namespaces: [x]}]\n"
        "    to: [{ports: [8080]}]\n" + "---\n",  # a trailing empty document is fine
    )
    assert [type(o) for o in objs] == [PeerAuthentication, ClientTLSPolicy, AuthorizationPolicy]
    first = objs[0]
    assert isinstance(first, PeerAuthentication)
    assert first.spec.port_level_mtls is not None
    assert sorted(first.spec.port_level_mtls) == [3306, 8080]


def test_duplicate_key_is_refused_naming_file_document_and_line() -> None:
    [p] = problems(pa("  mtls: {mode: STRICT}\n  mtls: {mode: DISABLE}\n"))
    assert p.startswith("policies/x.yaml: document 1: line 6")
    assert "duplicate key 'mtls'" in p


def test_duplicate_key_in_a_nested_flow_mapping_is_refused() -> None:
    [p] = problems(pa("  mtls: {mode: STRICT, mode: DISABLE}\n"))
    assert "duplicate key 'mode'" in p


def test_duplicate_port_written_bare_and_quoted_is_refused() -> None:
    [p] = problems(pa("  portLevelMtls: {8080: {mode: STRICT}, '8080': {mode: DISABLE}}\n"))
    assert "spec.portLevelMtls" in p and "port 8080 appears twice" in p


def test_unknown_field_is_refused_with_its_path() -> None:
    [p] = problems(pa("  mtls: {mode: STRICT, strict: true}\n"))
    assert "document 1 (PeerAuthentication/shop/p): spec.mtls.strict: unknown field 'strict'" in p


def test_unknown_top_level_field_is_refused() -> None:
    [p] = problems(pa("  mtls: {mode: STRICT}\n") + "status: {}\n")
    assert ": status: unknown field" in p


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ("  mtls: {mode: on}\n", "spec.mtls.mode", "found True"),  # YAML 1.1 bool, not a string
        ("  mtls: {mode: strict}\n", "spec.mtls.mode", "'STRICT', 'PERMISSIVE' or 'DISABLE'"),
        ("  mtls: {mode: 1}\n", "spec.mtls.mode", "found 1"),
        ("  mtls: STRICT\n", "spec.mtls", "valid dictionary"),
        (
            "  selector: {spiffeIds: 'spiffe://td/x'}\n  mtls: {mode: STRICT}\n",
            "spec.selector.spiffeIds",
            "valid list",
        ),
        ("  selector: {spiffeIds: []}\n", "spec.selector.spiffeIds", "at least 1"),
    ],
)
def test_wrong_types_and_invalid_modes_are_refused(spec: str, path: str, fragment: str) -> None:
    ps = problems(pa(spec))
    assert any(f": {path}: " in p and fragment in p for p in ps), ps


@pytest.mark.parametrize(
    ("ports", "fragment"),
    [
        ("{0: {mode: STRICT}}", "port 0 is out of range"),
        ("{70000: {mode: STRICT}}", "port 70000 is out of range"),
        ("{http: {mode: STRICT}}", "port 'http' is not a number"),
        ("{true: {mode: STRICT}}", "port True is not a number"),
        ("{-1: {mode: STRICT}}", "port -1 is out of range"),
    ],
)
def test_invalid_port_level_ports_are_refused(ports: str, fragment: str) -> None:
    [p] = problems(pa(f"  portLevelMtls: {ports}\n"))
    assert "spec.portLevelMtls" in p and fragment in p


@pytest.mark.parametrize(
    ("port", "fragment"),
    [
        ("0", "greater than or equal to 1"),
        ("65536", "less than or equal to 65535"),
        ("'80'", "valid integer"),
    ],
)
def test_invalid_authorization_ports_are_refused(port: str, fragment: str) -> None:
    text = (
        f"{HEAD}kind: AuthorizationPolicy\nmetadata: {{name: a, namespace: shop}}\n"
        f"spec:\n  rules:\n  - to: [{{ports: [{port}]}}]\n"
    )
    [p] = problems(text)
    assert "spec.rules[0].to[0].ports[0]" in p and fragment in p


def test_invalid_glob_is_refused_with_its_path() -> None:
    [p] = problems(pa("  selector: {spiffeIds: ['spiffe://td/ns/a**']}\n  mtls: {mode: STRICT}\n"))
    assert "spec.selector.spiffeIds[0]" in p and "'**' is only allowed as a whole path segment" in p


def test_invalid_principal_glob_is_refused() -> None:
    text = (
        f"{HEAD}kind: AuthorizationPolicy\nmetadata: {{name: a, namespace: shop}}\n"
        "spec:\n  rules:\n  - from: [{principals: ['web']}]\n"
    )
    [p] = problems(text)
    assert "spec.rules[0].from[0].principals[0]" in p and "start it with 'spiffe://'" in p


def test_empty_from_entry_is_refused() -> None:
    text = (
        f"{HEAD}kind: AuthorizationPolicy\nmetadata: {{name: a, namespace: shop}}\n"
        "spec:\n  rules:\n  - from: [{}]\n"
    )
    [p] = problems(text)
    assert "spec.rules[0].from[0]" in p and "needs principals or namespaces" in p


def test_invalid_client_tls_mode_is_refused() -> None:
    text = f"{HEAD}kind: ClientTLSPolicy\nmetadata: {{name: c, namespace: shop}}\nspec:\n  tls: {{mode: SIMPLE}}\n"
    [p] = problems(text)
    assert "spec.tls.mode" in p and "'AUTO', 'MUTUAL' or 'DISABLE'" in p


def test_missing_required_field_is_refused() -> None:
    text = f"{HEAD}kind: ClientTLSPolicy\nmetadata: {{name: c, namespace: shop}}\nspec: {{}}\n"
    [p] = problems(text)
    assert "spec.tls: required field is missing" in p


def test_unknown_kind_and_wrong_api_version_are_refused() -> None:
    ps = problems("apiVersion: v1\nkind: Gateway\nmetadata: {name: g, namespace: shop}\n")
    assert any("apiVersion: must be 'trustd.io/v1alpha1', found 'v1'" in p for p in ps)
    assert any("kind: unknown kind 'Gateway'" in p for p in ps)


@pytest.mark.parametrize(("name", "ns"), [("Bad_Name", "shop"), ("ok", "Shop"), ("ok", "a/b")])
def test_invalid_names_and_namespaces_are_refused(name: str, ns: str) -> None:
    ps = problems(pa("  mtls: {mode: STRICT}\n", name=name, ns=f"'{ns}'"))
    assert any("metadata." in p for p in ps)


def test_aliases_and_merge_keys_are_refused() -> None:
    [p] = problems(pa("  mtls: &m {mode: STRICT}\n  portLevelMtls: {80: *m}\n"))
    assert "aliases (*name) are not allowed" in p
    [p] = problems(pa("  mtls:\n    <<: {mode: STRICT}\n"))
    assert "merge keys (<<) are not allowed" in p


def test_non_mapping_document_is_refused() -> None:
    [p] = problems("- just\n- a list\n")
    assert "document 1: expected a mapping" in p


def test_syntax_error_names_the_line() -> None:
    [p] = problems(pa("  mtls: {mode: STRICT\n"))
    assert "policies/x.yaml: document 1: line" in p


def test_one_bad_document_rejects_the_whole_apply_and_names_its_index() -> None:
    good = pa("  mtls: {mode: STRICT}\n", name="good")
    bad = pa("  mtls: {mode: NOPE}\n", name="bad")
    with pytest.raises(PolicyValidationError) as err:
        load_text(good + "---\n" + bad, source="f.yaml")
    assert len(err.value.problems) == 1
    assert (
        "f.yaml: document 2 (PeerAuthentication/shop/bad): spec.mtls.mode" in err.value.problems[0]
    )
    assert "nothing was applied" in str(err.value)


def test_same_object_twice_is_refused() -> None:
    doc = pa("  mtls: {mode: STRICT}\n")
    [p] = problems(doc + "---\n" + doc)
    assert "document 2 (PeerAuthentication/shop/p)" in p and "rename one" in p


def test_every_file_is_checked_and_every_problem_reported(tmp_path: Path) -> None:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "a.yaml").write_text(pa("  mtls: {mode: BAD}\n", name="a"))
    (d / "b.yml").write_text(pa("  mtls: {mode: STRICT}\n  extra: 1\n", name="b"))
    (d / "c.yaml").write_text(pa("  mtls: {mode: STRICT}\n", name="c"))
    (d / "notes.txt").write_text("not policy")
    with pytest.raises(PolicyValidationError) as err:
        load_files([d])
    text = "\n".join(err.value.problems)
    assert str(d / "a.yaml") in text and str(d / "b.yml") in text and "c.yaml" not in text
    (d / "a.yaml").write_text(pa("  mtls: {mode: PERMISSIVE}\n", name="a"))
    (d / "b.yml").write_text(pa("  mtls: {mode: PERMISSIVE}\n", name="b"))
    assert [o.metadata.name for o in load_files([d])] == ["a", "b", "c"]


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(PolicyValidationError) as err:
        load_files([tmp_path / "nope.yaml"])
    assert "no such file or directory" in err.value.problems[0]


def test_the_checked_in_example_policies_load() -> None:
    root = Path(__file__).resolve().parents[3] / "policies"
    objs = load_files([root])
    kinds = {o.kind for o in objs}
    assert kinds == {"PeerAuthentication", "ClientTLSPolicy", "AuthorizationPolicy"}
