"""RFC 5424 message layout and RFC 6587 octet-counting framing (the wire, without a socket)."""

from __future__ import annotations

import json
import re

import pytest
from audit_helpers import OpenLog, make_event

from trustd.audit import AuditEventError
from trustd.audit.syslog import SyslogConfig, format_message, frame

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb"(?P<msgid>\S+) (?P<sd>(?:\[[^\]]*\])+|-) (?P<msg>.*)$",
    re.S,
)


def test_message_layout(open_log: OpenLog) -> None:
    log = open_log()
    log.append(make_event(1))
    log.append(make_event(2, type="svid.deny", outcome="failure", reason="no entry"))
    ok, denied = list(log.iter_events())
    m = RFC5424.match(format_message(ok, facility=10, hostname="node 1", procid="42"))
    assert m is not None
    assert int(m["pri"]) == 10 * 8 + 6  # authpriv.info
    assert m["ts"].decode() == ok.time
    assert m["host"] == b"node_1"  # no spaces in HOSTNAME
    assert (m["app"], m["procid"], m["msgid"]) == (b"trustd", b"42", b"svid.issue")
    assert b'[meta sequenceId="1"]' in m["sd"]
    assert json.loads(m["msg"]) == ok.to_json()  # the stored line, hash chain included
    m = RFC5424.match(format_message(denied, facility=13))
    assert m is not None and int(m["pri"]) == 13 * 8 + 5  # log audit, notice
    assert m["host"] == b"-"


def test_octet_counting_frame() -> None:
    msg = '<86>1 - - trustd - x - {"a":"é"}'.encode()
    framed = frame(msg)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(msg) == len(rest)
    assert rest == msg


@pytest.mark.parametrize(
    "kw", [{"port": 0}, {"port": 70000}, {"facility": 24}, {"name": "../x"}, {"name": ""}]
)
def test_config_is_validated(kw: dict[str, object]) -> None:
    fields: dict[str, object] = {"host": "127.0.0.1", "port": 6514}
    fields.update(kw)
    with pytest.raises(AuditEventError):
        SyslogConfig(**fields)  # type: ignore[arg-type]
