"""Optional forwarding of audit events to a syslog receiver (a SIEM collector).

RFC 5424 messages over TCP, or TLS (RFC 5425), framed by octet counting
(RFC 6587 §3.4.1: ``MSG-LEN SP SYSLOG-MSG``)::

    <PRI>1 TIMESTAMP HOSTNAME trustd PROCID MSGID [origin ...][meta sequenceId="SEQ"] JSON

PRI is facility (default 10, authpriv) * 8 + severity (6 informational, 5 notice
for a failure, 4 warning for a CA taint or revocation); TIMESTAMP is the event's
time; MSGID is the event type; MSG is the stored JSON line itself, hash chain
included, so the receiver holds an independent copy it can verify.

Delivery: the local log is the source of truth and keeps everything while the
receiver is down. A background thread reads the log from a persisted cursor
(``syslog-<name>.cursor``: the last seq the receiver is known to have) and
resumes from it after a reconnect or a restart, in order, with no gap.

Syslog over TCP has no acknowledgements, so "known to have" is judged from
TCP: an event counts as delivered once all its bytes are acknowledged by the
receiver's kernel (what is left in our send queue, SIOCOUTQ, is counted against
the newest events; with TLS its record overhead only makes that conservative)
*and* the connection is still open ``confirm_delay`` seconds after it was sent. Events sent on a connection
that then breaks are sent again on the next one. That makes delivery
**at-least-once**: after a break, the receiver may get an event twice (same
``seq``, ``id`` and ``hash``, so it can drop duplicates), but never misses one.
It can still lose an event if it dies with data it acknowledged but never
read, later than ``confirm_delay`` after receiving it; RELP would close that
last gap.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import select
import socket
import ssl
import struct
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from trustd import __version__
from trustd.audit.errors import AuditEventError
from trustd.audit.log import AuditLog
from trustd.audit.reader import Follower, Position
from trustd.audit.record import AuditRecord
from trustd.backoff import Backoff, Retry

log = structlog.get_logger(__name__)

_META_MAX_SEQ = 2_147_483_647  # RFC 5424 §7.3.1: sequenceId is 1..2147483647
_MAX_PENDING = 50_000  # unconfirmed events in flight before sending pauses


@dataclass(frozen=True, slots=True, kw_only=True)
class SyslogConfig:
    """Where and how to forward."""

    host: str  # the receiver's host name or IP
    port: int  # its TCP port (conventionally 514 for TCP, 6514 for TLS)
    tls: ssl.SSLContext | None = None  # a client context for TLS (see tls_client_context)
    server_hostname: str | None = None  # name checked in the receiver's certificate; None: host
    name: str = "default"  # names the cursor file (syslog-<name>.cursor) in the audit directory
    facility: int = 10  # RFC 5424 facility: 10 = security/authorization (authpriv), 13 = log audit
    app_name: str = "trustd"  # APP-NAME
    hostname: str | None = None  # HOSTNAME; None: this machine's name
    connect_timeout: float = 5.0  # seconds to connect (and to finish the TLS handshake)
    send_timeout: float = 30.0  # seconds a blocked send may take before the connection is dropped
    retry_initial: float = 0.5  # first wait after a failed connection, doubled up to retry_max
    retry_max: float = 30.0  # longest wait between connection attempts
    confirm_delay: float = 1.0  # see the module docstring: how long a live connection vouches
    batch_max: int = 500  # events per send

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise AuditEventError(f"invalid syslog port {self.port}: use 1-65535")
        if not 0 <= self.facility <= 23:
            raise AuditEventError(f"invalid syslog facility {self.facility}: use 0-23")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise AuditEventError("syslog name must be letters, digits, '-', '_' or '.'")


def tls_client_context(
    *, ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that trusts ``ca_file`` (and presents a client certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


def _printable(text: str, limit: int) -> str:
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text[:limit])
    return out or "-"


def _sd_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _severity(rec: AuditRecord) -> int:
    if rec.type.endswith(("authority.taint", "authority.revoke")):
        return 4
    return 6 if rec.outcome == "success" else 5


def format_message(
    rec: AuditRecord,
    *,
    facility: int = 10,
    hostname: str = "-",
    app_name: str = "trustd",
    procid: str = "-",
) -> bytes:
    """One RFC 5424 message (without framing) carrying the stored JSON line."""
    pri = facility * 8 + _severity(rec)
    sd = f'[origin software="trustd" swVersion="{_sd_value(__version__)}"]'
    if 1 <= rec.seq <= _META_MAX_SEQ:
        sd += f'[meta sequenceId="{rec.seq}"]'
    header = (
        f"<{pri}>1 {rec.time} {_printable(hostname, 255)} {_printable(app_name, 48)} "
        f"{_printable(procid, 128)} {_printable(rec.type, 32)} {sd} "
    )
    return header.encode("ascii") + rec.line().encode("utf-8")


def frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: ``LEN SP MESSAGE``."""
    return str(len(message)).encode("ascii") + b" " + message


@dataclass(slots=True)
class _Pending:
    seq: int  # the event
    hash: str  # its hash (saved in the cursor)
    pos: Position  # where its line is, to send it again
    sent_at: float  # monotonic time of the send
    end: int  # bytes written on this connection up to and including this event


class SyslogForwarder:
    """Forwards ``audit_log``'s events to a syslog receiver from a background thread.

    ``start()`` it once; ``stop()`` on shutdown (it persists the cursor). It never
    blocks ``append``: a slow or absent receiver only makes it fall behind.
    """

    def __init__(self, audit_log: AuditLog, config: SyslogConfig) -> None:
        self._log = audit_log
        self._cfg = config
        self._cursor_path = audit_log.directory / f"syslog-{config.name}.cursor"
        self._hostname = config.hostname or socket.gethostname()
        self._procid = str(os.getpid())
        self._stop = threading.Event()
        self._wake = audit_log.subscribe()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._cond = threading.Condition()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._confirmed_seq, self._confirmed_hash = self._load_cursor()
        self._persisted_seq = self._confirmed_seq
        self._sent_seq = self._confirmed_seq
        self._bytes_sent = 0  # on the current connection
        self._last_persist = 0.0
        self._log.metrics.syslog_confirmed_seq.set(self._confirmed_seq)

    # ------------------------------------------------------------------ cursor

    def _load_cursor(self) -> tuple[int, str]:
        try:
            data = json.loads(self._cursor_path.read_text())
            seq, digest = int(data["seq"]), str(data["hash"])
        except FileNotFoundError:
            return 0, ""
        except (ValueError, KeyError, TypeError):
            log.error(
                "syslog cursor unreadable: forwarding from the start", path=str(self._cursor_path)
            )
            return 0, ""
        head = self._log.head.seq
        if seq > head:
            log.error(
                "syslog cursor is past the end of the audit log: forwarding from the start",
                cursor_seq=seq,
                head_seq=head,
            )
            return 0, ""
        return seq, digest

    def _persist_cursor(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._confirmed_seq == self._persisted_seq or (
            not force and now - self._last_persist < 0.5
        ):
            return
        body = json.dumps({"seq": self._confirmed_seq, "hash": self._confirmed_hash})
        tmp = self._cursor_path.with_name(self._cursor_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, body.encode("ascii") + b"\n")
            finally:
                os.close(fd)
            os.replace(tmp, self._cursor_path)
        except OSError as exc:
            log.error("syslog cursor not saved", error=str(exc))
            return
        self._persisted_seq = self._confirmed_seq
        self._last_persist = now

    # ------------------------------------------------------------------ state

    @property
    def confirmed_seq(self) -> int:
        """The newest seq the receiver is known to have (what the cursor holds)."""
        with self._cond:
            return self._confirmed_seq

    @property
    def sent_seq(self) -> int:
        """The newest seq written to the current connection."""
        with self._cond:
            return self._sent_seq

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def wait_confirmed(self, seq: int, timeout: float) -> bool:
        """Block until ``confirmed_seq >= seq`` (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._confirmed_seq >= seq, timeout)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise AuditEventError("the syslog forwarder is started already")
        self._thread = threading.Thread(
            target=self._run, name=f"trustd-audit-syslog-{self._cfg.name}", daemon=True
        )
        self._thread.start()
        log.info(
            "syslog forwarding started",
            host=self._cfg.host,
            port=self._cfg.port,
            tls=self._cfg.tls is not None,
            from_seq=self._confirmed_seq + 1,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, close the connection and save the cursor."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._log.unsubscribe(self._wake)
        self._final_confirm()
        self._disconnect()
        self._persist_cursor(force=True)

    def _final_confirm(self) -> None:
        """On a clean stop, what the receiver's kernel acknowledged on a live connection
        counts as delivered (no need to wait confirm_delay)."""
        sock = self._sock
        if sock is None or not self._pending:
            return
        try:
            self._check_alive(sock)
            self._confirm(sock, delay=0.0)
        except (OSError, ConnectionError):
            return

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        follower = Follower(self._log.directory, from_seq=self._confirmed_seq + 1)
        # A thread: it waits on the stop event (so stop() interrupts it), not on a clock.
        retry = Retry(Backoff(initial=self._cfg.retry_initial, maximum=self._cfg.retry_max))
        try:
            while not self._stop.is_set():
                if self._sock is None:
                    if not self._connect():
                        self._stop.wait(retry.next_delay())
                        continue
                    retry.reset()
                    self._rewind(follower)
                try:
                    self._pump(follower)
                except (OSError, ConnectionError) as exc:
                    log.warning("syslog connection lost", error=str(exc) or type(exc).__name__)
                    self._log.metrics.syslog_reconnects.inc()
                    self._disconnect()
                except Exception as exc:  # a bug must not end forwarding for good
                    log.error(
                        "syslog forwarding error", error=str(exc), error_type=type(exc).__name__
                    )
                    self._disconnect()
                    self._stop.wait(retry.next_delay())
        finally:
            follower.close()

    def _rewind(self, follower: Follower) -> None:
        """Send again everything the receiver is not known to have."""
        with self._cond:
            if self._pending:
                first = self._pending[0]
                follower.reposition(first.pos, first.seq)
                self._pending.clear()
            self._sent_seq = self._confirmed_seq

    def _pump(self, follower: Follower) -> None:
        sock = self._sock
        assert sock is not None
        self._check_alive(sock)
        self._confirm(sock)
        batch = follower.read(self._cfg.batch_max) if len(self._pending) < _MAX_PENDING else []
        if batch:
            data = b"".join(
                frame(
                    format_message(
                        rec,
                        facility=self._cfg.facility,
                        hostname=self._hostname,
                        app_name=self._cfg.app_name,
                        procid=self._procid,
                    )
                )
                for rec, _ in batch
            )
            sock.sendall(data)
            self._bytes_sent += len(data)
            now = time.monotonic()
            with self._cond:
                # a batch counts as delivered when its last byte is: give every event its end
                for rec, pos in batch:
                    self._pending.append(
                        _Pending(
                            seq=rec.seq, hash=rec.hash, pos=pos, sent_at=now, end=self._bytes_sent
                        )
                    )
                self._sent_seq = batch[-1][0].seq
            self._log.metrics.syslog_forwarded.inc(len(batch))
            return
        # Nothing new: sleep until an append, or until pending events can be confirmed.
        self._persist_cursor()
        wait = self._cfg.confirm_delay / 2 if self._pending else 1.0
        self._wake.wait(wait)
        self._wake.clear()

    def _check_alive(self, sock: socket.socket) -> None:
        """Raise ConnectionError if the receiver closed or reset the connection."""
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return
        sock.settimeout(0)
        try:
            data = sock.recv(4096)
        except (BlockingIOError, ssl.SSLWantReadError):
            return  # e.g. TLS 1.3 session tickets: not application data, still open
        finally:
            sock.settimeout(self._cfg.send_timeout)
        if not data:
            raise ConnectionError("the syslog receiver closed the connection")
        # receivers do not talk back over syslog; whatever it was is ignored

    def _confirm(self, sock: socket.socket, delay: float | None = None) -> None:
        if not self._pending:
            return
        try:
            buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
            unacked = struct.unpack("i", buf)[0]
        except OSError:
            unacked = 0  # not Linux: fall back to the delay alone
        acked = self._bytes_sent - unacked
        limit = time.monotonic() - (self._cfg.confirm_delay if delay is None else delay)
        moved = False
        with self._cond:
            while (
                self._pending
                and self._pending[0].sent_at <= limit
                and self._pending[0].end <= acked
            ):
                done = self._pending.popleft()
                self._confirmed_seq, self._confirmed_hash = done.seq, done.hash
                moved = True
            if moved:
                self._cond.notify_all()
        if moved:
            self._log.metrics.syslog_confirmed_seq.set(self._confirmed_seq)
            self._persist_cursor()

    def _connect(self) -> bool:
        cfg = self._cfg
        try:
            raw = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout)
        except OSError as exc:
            log.warning("syslog receiver unreachable", host=cfg.host, port=cfg.port, error=str(exc))
            self._log.metrics.syslog_reconnects.inc()
            return False
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock: socket.socket = raw
            if cfg.tls is not None:
                sock = cfg.tls.wrap_socket(raw, server_hostname=cfg.server_hostname or cfg.host)
            sock.settimeout(cfg.send_timeout)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            log.warning("syslog TLS handshake failed", host=cfg.host, port=cfg.port, error=str(exc))
            self._log.metrics.syslog_reconnects.inc()
            return False
        self._sock = sock
        self._bytes_sent = 0
        self._log.metrics.syslog_connected.set(1)
        log.info("syslog receiver connected", host=cfg.host, port=cfg.port, tls=cfg.tls is not None)
        return True

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            self._log.metrics.syslog_connected.set(0)
