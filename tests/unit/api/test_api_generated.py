"""The checked-in messages and stubs of trustd/api are exactly what `make proto` makes."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ("_pb2.py", "_pb2.pyi", "_grpc.py")


def _generated(base: Path) -> set[str]:
    return {
        str(p.relative_to(base))
        for p in (base / "trustd" / "api").rglob("*")
        if p.name.endswith(GENERATED)
    }


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    env = {**os.environ, "PY": sys.executable}
    subprocess.run(
        [str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)], cwd=ROOT, env=env, check=True
    )
    fresh, checked_in = _generated(tmp_path), _generated(ROOT)
    assert fresh, "make proto generated nothing"
    assert fresh == checked_in, "run `make proto` and commit the result"
    drifted = [
        name
        for name in sorted(fresh)
        if not filecmp.cmp(tmp_path / name, ROOT / name, shallow=False)
    ]
    assert not drifted, f"out of date with their .proto (run `make proto`): {drifted}"


def test_every_proto_package_is_versioned() -> None:
    for proto in (ROOT / "trustd" / "api").rglob("*.proto"):
        text = proto.read_text()
        package = next(line for line in text.splitlines() if line.startswith("package "))
        assert package.rstrip(";").split(".")[-1] == "v1", proto
        assert proto.parent.name == "v1", proto
