"""Syslog forwarding against a real TCP (and TLS) syslog listener that the test runs.

The listener speaks RFC 6587 octet counting and records every RFC 5424 message. It
is stopped and started again on the same port while events keep being recorded;
the local log keeps everything and forwarding resumes with no gap.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustd.audit import Actor, AuditEvent, AuditLog
from trustd.audit.syslog import SyslogConfig, SyslogForwarder, tls_client_context
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import SystemClock

pytestmark = pytest.mark.integration

DEADLINE = 60.0  # generous: the machine is shared; no timing is asserted
SEQ_RE = re.compile(rb'\[meta sequenceId="(\d+)"\]')


class SyslogListener:
    """A syslog receiver: TCP or TLS, octet-counted frames, messages kept in order."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.port = 0
        self.messages: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(8)
        self.port = srv.getsockname()[1]
        self._server = srv
        t = threading.Thread(target=self._accept, args=(srv,), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()
                    continue
            with self._lock:
                self._conns.append(conn)
                self.connections += 1
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while True:
                length, sep, rest = buf.partition(b" ")
                if not sep:
                    break
                assert length.isdigit(), buf[:40]
                n = int(length)
                if len(rest) < n:
                    break
                with self._lock:
                    self.messages.append(rest[:n])
                buf = rest[n:]

    def stop(self) -> None:
        """Stop as a crashed receiver would: close the port and every connection."""
        if self._server is not None:
            # shutdown wakes the thread blocked in accept(); close() alone would not
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def seqs(self) -> list[int]:
        with self._lock:
            msgs = list(self.messages)
        out = []
        for msg in msgs:
            m = SEQ_RE.search(msg)
            assert m is not None, msg[:120]
            body = json.loads(msg[msg.index(b"] {") + 2 :])
            assert body["seq"] == int(m.group(1))
            out.append(int(m.group(1)))
        return out


def wait_for(cond: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def event(i: int) -> AuditEvent:
    return AuditEvent(
        type="svid.issue",
        actor=Actor.spiffe("spiffe://trustd.local/agent/n1", addr="127.0.0.1:4000"),
        action="issue",
        resource=f"spiffe://trustd.local/ns/a/sa/s{i}",
        details={"serial": f"{i:x}"},
    )


def config(port: int, **kw: object) -> SyslogConfig:
    fields: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "retry_initial": 0.05,
        "retry_max": 0.3,
        "confirm_delay": 0.2,
        "connect_timeout": 5.0,
    }
    fields.update(kw)
    return SyslogConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit", key_manager=MemoryKeyManager(), clock=SystemClock())
    yield log
    log.close()


# ------------------------------------------------------------------ throwaway CA for TLS


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """(server context for the listener, CA file for the forwarder)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("audit test CA"))
        .issuer_name(_name("audit test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("syslog.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("syslog.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = tmp_path / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = tmp_path / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert_file), str(key_file))
    return server, ca_file


# ------------------------------------------------------------------ tests


def _stop_restart_round(
    audit: AuditLog, listener: SyslogListener, cfg: SyslogConfig
) -> SyslogForwarder:
    fwd = SyslogForwarder(audit, cfg)
    fwd.start()
    for i in range(20):
        audit.append(event(i))
    wait_for(lambda: listener.seqs() == list(range(1, 21)), "events 1-20 at the receiver")
    assert fwd.wait_confirmed(20, DEADLINE)

    listener.stop()
    for i in range(20, 40):  # recorded while the receiver is down
        audit.append(event(i))
    assert [r.seq for r in audit.iter_events()] == list(range(1, 41))  # the local log has all
    assert fwd.confirmed_seq == 20

    listener.start()  # same port
    wait_for(lambda: len(set(listener.seqs())) == 40, "events 21-40 after the restart")
    assert fwd.wait_confirmed(40, DEADLINE)
    # everything confirmed before the break was not sent again: no gap, no duplicate
    assert listener.seqs() == list(range(1, 41))
    assert listener.connections >= 2
    return fwd


def test_tcp_forwarding_survives_a_receiver_restart(audit: AuditLog) -> None:
    listener = SyslogListener()
    listener.start()
    fwd = _stop_restart_round(audit, listener, config(listener.port))
    fwd.stop()
    listener.stop()


def test_tls_forwarding_survives_a_receiver_restart(audit: AuditLog, tmp_path: Path) -> None:
    server_ctx, ca_file = make_tls(tmp_path)
    listener = SyslogListener(tls=server_ctx)
    listener.start()
    cfg = config(
        listener.port, tls=tls_client_context(ca_file=ca_file), server_hostname="syslog.test"
    )
    fwd = _stop_restart_round(audit, listener, cfg)
    fwd.stop()
    listener.stop()


def test_tls_receiver_with_an_untrusted_certificate_gets_nothing(
    audit: AuditLog, tmp_path: Path
) -> None:
    server_ctx, _ = make_tls(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_ca = make_tls(tmp_path / "other")
    listener = SyslogListener(tls=server_ctx)
    listener.start()
    fwd = SyslogForwarder(
        audit,
        config(
            listener.port, tls=tls_client_context(ca_file=other_ca), server_hostname="syslog.test"
        ),
    )
    fwd.start()
    audit.append(event(1))
    assert not fwd.wait_confirmed(1, 1.0)
    fwd.stop()
    listener.stop()
    assert listener.seqs() == []
    assert fwd.confirmed_seq == 0


def test_forwarder_restart_resumes_from_the_persisted_cursor(
    audit: AuditLog, tmp_path: Path
) -> None:
    listener = SyslogListener()
    listener.start()
    cfg = config(listener.port, name="siem")
    fwd = SyslogForwarder(audit, cfg)
    fwd.start()
    for i in range(10):
        audit.append(event(i))
    assert fwd.wait_confirmed(10, DEADLINE)
    fwd.stop()
    cursor = json.loads((audit.directory / "syslog-siem.cursor").read_text())
    assert cursor["seq"] == 10
    for i in range(10, 15):  # while trustd's forwarder is down
        audit.append(event(i))
    again = SyslogForwarder(audit, cfg)
    again.start()
    assert again.wait_confirmed(15, DEADLINE)
    again.stop()
    listener.stop()
    assert listener.seqs() == list(range(1, 16))


def test_receiver_killed_mid_stream_loses_nothing(audit: AuditLog) -> None:
    listener = SyslogListener()
    listener.start()
    fwd = SyslogForwarder(audit, config(listener.port, batch_max=20))
    fwd.start()
    stop_writing = threading.Event()
    written: list[int] = []

    def writer() -> None:
        i = 0
        while not stop_writing.is_set() and i < 3000:
            written.append(audit.append(event(i)))
            i += 1
            if i % 50 == 0:
                time.sleep(0.001)

    t = threading.Thread(target=writer)
    t.start()
    wait_for(lambda: fwd.confirmed_seq >= 100, "the first 100 events confirmed")
    listener.stop()  # in the middle of the stream
    confirmed_before = fwd.confirmed_seq
    first_life = listener.seqs()
    listener.messages.clear()
    time.sleep(0.2)
    listener.start()
    t.join()
    last = written[-1]
    wait_for(lambda: fwd.confirmed_seq >= last, "every event confirmed")
    fwd.stop()
    listener.stop()
    received = first_life + listener.seqs()
    assert set(received) == set(range(1, last + 1))  # at least once: no gap
    second_life = listener.seqs()
    assert first_life == sorted(first_life) and second_life == sorted(second_life)  # in order
    # resent from after what was confirmed, not from the start
    assert second_life[0] >= confirmed_before + 1 > 100
