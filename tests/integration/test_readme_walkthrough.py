"""The README, followed word for word: quick start, Envoy, Workload API, the lossless rollout.

The shell blocks marked ``<!-- readme-test: NAME -->`` in README.md are read
from the README itself and typed, in order, into one bash session (as an admin
in one terminal would: `source`, `export` and background jobs carry over), in a
fresh directory with the checkout's ``.venv`` and ``policies/``. `trustd up` runs
as the quick start says (its ``# or:`` form, since `make run` would build a venv
here). The test then checks what the README promises: the SVID verifies, Envoy
shows its SVID, the Workload API names the caller, the rollout completes
without one failed request, plaintext no longer reaches the app, and the
example policy goes in without dropping traffic. The README's own ports are
used, so they must be free.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stack_helpers import metric_sum, metrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BLOCKS = ("quickstart", "envoy", "workload-api", "walkthrough", "lockdown")


def readme_blocks() -> dict[str, str]:
    """Every ```sh block that follows a ``<!-- readme-test: NAME -->`` line."""
    text = README.read_text()
    found = dict(re.findall(r"<!-- readme-test: ([\w-]+) -->\n```sh\n(.*?)```", text, re.S))
    missing = [b for b in BLOCKS if b not in found]
    assert not missing, f"README.md lost its tested blocks: {missing}"
    return found


def readme_up_command() -> str:
    match = re.search(r"^make run\s+# or: (.+)$", README.read_text(), re.M)
    assert match, "README.md: the quick start's `make run  # or: ...` line is gone"
    return match.group(1).strip()


class Shell:
    """One bash session fed the README's blocks; its output is collected line by line."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"], cwd=cwd, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def run(self, name: str, block: str, timeout: float = 120) -> tuple[int, list[str]]:
        """Type the block; its exit status (that of its last command) and what it printed."""
        assert self.proc.stdin is not None
        start = len(self.lines)
        mark = f"__readme_block_{name}_done__"
        self.proc.stdin.write(block + f"\necho {mark} $?\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                out = self.lines[start:]
            done = [line for line in out if line.startswith(mark)]
            if done:
                return int(done[0].split()[-1]), out
            assert self.proc.poll() is None, f"the shell exited during block {name}: {out[-30:]}"
            assert time.monotonic() < deadline, f"block {name} did not finish: {out[-30:]}"
            time.sleep(0.1)

    def codes(self) -> list[str]:
        """What the README's steady `curl -w '%{http_code}'` loop printed so far."""
        with self._lock:
            return [line for line in self.lines if re.fullmatch(r"\d{3}", line)]

    def stop(self) -> None:
        with_pg(self.proc)


def with_pg(proc: subprocess.Popen[str]) -> None:
    """Stop a process and everything it started in the background (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # background jobs that outlived the shell


def _probe(port: int) -> bytes:
    """A plaintext GET, read to EOF (b"" when refused)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
    except ConnectionError:
        return b""


@pytest.fixture
def workdir() -> Iterator[Path]:
    # other uids (the README's sidecars) must reach it: not pytest's 0700 tmp_path
    tmp = Path(tempfile.mkdtemp(prefix="trustd-readme-"))
    tmp.chmod(0o755)
    (tmp / ".venv").symlink_to(REPO / ".venv")
    (tmp / "policies").symlink_to(REPO / "policies")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_readme_walkthrough_works_as_written(workdir: Path) -> None:
    for tool in ("setpriv", "curl", "openssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"the README uses {tool}: install it (util-linux, curl, openssl)")
    blocks = readme_blocks()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRUSTD_", "SPIFFE_"))}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"  # a fresh shell: no venv yet
    env.pop("VIRTUAL_ENV", None)
    up = subprocess.Popen(
        ["bash", "-c", f"exec {readme_up_command()}"], cwd=workdir, env=env, text=True,
        stdout=subprocess.PIPE, stderr=(workdir / "up.log").open("w"), start_new_session=True,
    )  # fmt: skip
    shell: Shell | None = None
    try:
        assert up.stdout is not None
        banner = up.stdout.readline()
        assert banner.startswith("trustd is up"), (workdir / "up.log").read_text()[-3000:]
        shell = Shell(workdir, env)
        admin = {**env, "TRUSTD_ADMIN_SOCKET": str(workdir / ".trustd" / "admin.sock")}
        trustd = str(workdir / ".venv" / "bin" / "trustd")

        status, out = shell.run("quickstart", blocks["quickstart"])
        assert status == 0, out
        assert "./svid/svid.pem: OK" in out, out

        status, out = shell.run("envoy", blocks["envoy"])
        assert status == 0, out
        assert any("spiffe://trustd.local/ns/demo/sa/envoy" in line for line in out), out[-20:]

        status, out = shell.run("workload-api", blocks["workload-api"])
        assert status == 0 and "spiffe://trustd.local/ns/demo/sa/envoy" in out, out

        status, out = shell.run("walkthrough", blocks["walkthrough"])
        assert any(line.startswith("r-") and "running" in line for line in out), out
        deadline = time.monotonic() + 300
        while True:
            st = json.loads(subprocess.run([trustd, "rollout", "status", "-o", "json"], env=admin,
                                           capture_output=True, text=True, check=True).stdout)  # fmt: skip
            if st["state"] == "complete":
                break
            assert st["state"] == "running", st
            assert time.monotonic() < deadline, st
            time.sleep(1)
        assert [e["enforced"] for e in st["enforcement"] if e["side"] == "server"] == ["STRICT"], st
        assert _probe(15106) == b"", "plaintext still reaches the app after the rollout"
        before = metrics(9911)
        time.sleep(2)
        after = metrics(9911)
        tls = metric_sum(after, "trustd_proxy_connections_total", 'mode="tls"') - metric_sum(
            before, "trustd_proxy_connections_total", 'mode="tls"')  # fmt: skip
        assert tls > 0

        status, out = shell.run("lockdown", blocks["lockdown"])
        assert status == 0, out
        assert "mode: STRICT" in "\n".join(out), out
        time.sleep(3)
        codes = shell.codes()
        assert "200" in codes, codes[-20:]
        served = codes[codes.index("200") :]  # before the client proxy listened: 000
        assert set(served) == {"200"}, [c for c in served if c != "200"][:10]
        assert len(served) > 50, len(served)
    finally:
        if shell is not None:
            shell.stop()
        with_pg(up)
