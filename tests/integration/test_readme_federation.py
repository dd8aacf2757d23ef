"""README.md's federation section, typed into bash as it is written.

The blocks marked ``<!-- federation-test: NAME -->`` run in order in one bash
session in a private directory, with the README's fixed ports swapped for free
ones (other tests run at the same time). Then the two trust domains must be
federated both ways, each bundle fetched from the other's endpoint, and the
entry must federate with beta.test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from stack_helpers import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PORTS = ("18081", "19981", "18443", "28081", "29981", "28443")


def _blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    found = re.findall(r"<!-- federation-test: ([\w-]+) -->\n```sh\n(.*?)```", text, re.S)
    assert [name for name, _ in found] == ["up", "federate"], "README lost its federation blocks"
    return found


def _trustd(cwd: Path, env: dict[str, str], *args: str) -> dict[str, object]:
    out = subprocess.run([str(BIN / "trustd"), *args, "-o", "json"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_readme_federation_section_works_as_written() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="trustd-readme-fed-"))
    ports = {p: str(free_port()) for p in PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.pop("SPIFFE_ENDPOINT_SOCKET", None)
    shell = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-e"], cwd=tmp, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        script = "".join(block for _, block in _blocks())
        for old, new in ports.items():
            script = script.replace(old, new)
        script += "echo __done__\nwait\n"
        assert shell.stdin is not None and shell.stdout is not None
        shell.stdin.write(script)
        shell.stdin.close()
        lines: list[str] = []
        for line in shell.stdout:
            lines.append(line)
            if line.strip() == "__done__":
                break
        assert lines and lines[-1].strip() == "__done__", "".join(lines)[-3000:]
        alpha = dict(env, TRUSTD_ADMIN_SOCKET=str(tmp / "alpha" / "admin.sock"))
        beta = dict(env, TRUSTD_ADMIN_SOCKET=str(tmp / "beta" / "admin.sock"))
        shown = _trustd(tmp, alpha, "federation", "show", "beta.test")
        assert shown["refreshed_at"] is not None and shown["last_error"] is None
        assert shown["endpoint_url"] == f"https://127.0.0.1:{ports['28443']}/"
        served = json.loads((tmp / "beta.json").read_text())
        assert shown["bundle"]["keys"] == served["keys"]  # type: ignore[index]
        assert "beta.test" in "".join(lines)  # `federation list` printed it
        other = _trustd(tmp, beta, "federation", "show", "alpha.test")
        assert other["trust_domain"] == "alpha.test"
        entries = _trustd(tmp, alpha, "entry", "list")["entries"]
        assert [e["federates_with"] for e in entries] == [["spiffe://beta.test"]]  # type: ignore[attr-defined]
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGTERM)  # the two `trustd up` started by the README
            try:
                shell.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(shell.pid, signal.SIGKILL)
                shell.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
