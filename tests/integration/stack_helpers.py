"""Helpers for the tests that drive the whole product through `trustd up` and the CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
TRUSTD = str(BIN / "trustd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(env: dict[str, str], *args: str) -> Any:
    """`trustd ARGS -o json`, which must succeed; its JSON output."""
    out = subprocess.run(
        [TRUSTD, *args, "-o", "json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"trustd {' '.join(args)}: {out.stderr}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


def cli_fails(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`trustd ARGS`, which must fail; the finished process (exit code, stderr)."""
    out = subprocess.run([TRUSTD, *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, f"trustd {' '.join(args)} succeeded: {out.stdout}"
    return out


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def metric_sum(values: dict[str, float], prefix: str, contains: str = "") -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix) and contains in k)
