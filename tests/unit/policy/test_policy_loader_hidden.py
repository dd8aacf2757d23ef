"""Policy directories as Kubernetes mounts them: hidden copies beside the visible files."""

from __future__ import annotations

from pathlib import Path

from trustd.policy.loader import expand, load_files

DOC = """\
apiVersion: trustd.io/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""


def test_a_configmap_mount_is_read_once(tmp_path: Path) -> None:
    # what the kubelet lays out: ..DATE/file, ..data -> ..DATE, file -> ..data/file
    stamp = tmp_path / "..2026_12_07_01_00_00.123"
    stamp.mkdir()
    (stamp / "shop.yaml").write_text(DOC)
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / "shop.yaml").symlink_to("..data/shop.yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".hidden.yaml").write_text("not: a policy\n")
    files, problems = expand([tmp_path])
    assert problems == []
    assert files == [tmp_path / "shop.yaml"]
    assert len(load_files([tmp_path])) == 1  # no "same kind, namespace and name" duplicate
