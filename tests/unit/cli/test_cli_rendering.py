"""How the CLI renders: durations in one compact form, tables on a terminal and piped."""

from __future__ import annotations

import datetime as dt
import json
import random
import re

import pytest
import yaml

from trustd import durations
from trustd.cli.output import Format, emit

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _deltas() -> list[dt.timedelta]:
    rng = random.Random(20261206)
    fixed = [
        dt.timedelta(0),
        dt.timedelta(microseconds=1),
        dt.timedelta(microseconds=-1),
        dt.timedelta(microseconds=250),
        dt.timedelta(milliseconds=500),
        dt.timedelta(seconds=1, milliseconds=500),
        dt.timedelta(seconds=59, microseconds=999_999),
        dt.timedelta(seconds=90),
        dt.timedelta(minutes=10),
        dt.timedelta(hours=1),
        dt.timedelta(hours=1, minutes=30),
        dt.timedelta(days=1, hours=1),
        dt.timedelta(days=2, seconds=5),
        dt.timedelta(days=-3, hours=4),
        dt.timedelta.max,
        dt.timedelta.min,
    ]
    drawn = [dt.timedelta(microseconds=rng.randrange(-(10**17), 10**17)) for _ in range(200)]
    drawn += [dt.timedelta(seconds=rng.randrange(-(10**7), 10**7)) for _ in range(100)]
    return fixed + drawn


@pytest.mark.parametrize("delta", _deltas(), ids=str)
def test_durations_format_is_the_inverse_of_parse(delta: dt.timedelta) -> None:
    text = durations.format(delta)
    assert durations.parse(text) == delta
    assert re.fullmatch(r"-?([0-9]+(d|h|m|s|ms)|[0-9]+\.[0-9]+ms)+", text), text


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(0), "0s"),
        (dt.timedelta(seconds=90), "1m30s"),
        (dt.timedelta(minutes=10), "10m"),
        (dt.timedelta(hours=1), "1h"),
        (dt.timedelta(days=1, hours=1), "1d1h"),
        (dt.timedelta(days=7), "7d"),
        (dt.timedelta(hours=-1, minutes=-30), "-1h30m"),
        (dt.timedelta(seconds=4, milliseconds=500), "4s500ms"),
        (dt.timedelta(microseconds=1500), "1.5ms"),
        (dt.timedelta(days=1, microseconds=1), "1d0.001ms"),
    ],
)
def test_durations_format_writes_the_form_the_flags_take(delta: dt.timedelta, text: str) -> None:
    assert durations.format(delta) == text
    assert str(delta) != text  # never Python's '1 day, 1:00:00'


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("90s", "1m30s"), ("1.5h", "1h30m"), ("3600", "1h"), ("500ms", "500ms"), ("-0", "0s")],
)
def test_durations_format_of_parse_is_canonical(text: str, canonical: str) -> None:
    assert durations.format(durations.parse(text)) == canonical


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(milliseconds=300), "0s"),
        (dt.timedelta(seconds=45), "45s"),
        (dt.timedelta(minutes=5, seconds=30, milliseconds=900), "5m30s"),
        (dt.timedelta(minutes=23, seconds=59), "23m"),
        (dt.timedelta(hours=2, minutes=5, seconds=59), "2h5m"),
        (dt.timedelta(hours=2), "2h"),
        (dt.timedelta(hours=13, minutes=59), "13h"),
        (dt.timedelta(days=3, hours=4, minutes=59), "3d4h"),
        (dt.timedelta(days=40, hours=23), "40d"),
        (-dt.timedelta(hours=2, minutes=5, seconds=1), "-2h5m"),
    ],
)
def test_durations_approximate_rounds_down_to_two_units(delta: dt.timedelta, text: str) -> None:
    assert durations.approximate(delta) == text
    assert abs(durations.parse(text)) <= abs(delta)


# -- tables -----------------------------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout is an 80-column terminal."""
    monkeypatch.setattr("trustd.cli.output.clock", lambda: NOW)  # the rows are relative to NOW
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def _screen(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line.rstrip() for line in _ANSI.sub("", capsys.readouterr().out).splitlines()]


def _iso(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


NOW = dt.datetime.now(dt.UTC)
ENTRY = "0b9a3c7e-9f1d-4a55-8f3e-2a6c1d9e7b40"
LONG_ID = "spiffe://trustd.local/ns/payments/sa/cards"  # as wide as 80 columns allow
ROWS = {
    "entries": [
        {
            "id": ENTRY,
            "spiffe_id": LONG_ID,
            "selectors": ["unix:gid:1000", "unix:uid:1000"],
            "ttl": 3600,
            "dns_names": ["card-gateway.payments.svc.cluster.local"],
            "agent_id": None,
            "revision": 7,
            "created_at": _iso(NOW - dt.timedelta(hours=2, seconds=20)),
            "not_after": _iso(NOW + dt.timedelta(minutes=23, seconds=30)),
        }
    ]
}
COLUMNS = ["id", "spiffe_id", "selectors", "ttl", "dns_names", "agent_id", "not_after"]
NARROW = ["id", "spiffe_id", "selectors", "ttl", "not_after"]
EXTRA = ["revision", "created_at"]


def test_a_table_on_an_80_column_terminal_keeps_ids_whole(
    capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    emit(ROWS, Format.table, columns=COLUMNS, rows_key="entries", narrow=NARROW, extra=EXTRA)
    lines = _screen(capsys)
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["ID", "SPIFFE_ID"]  # the columns that do not fit are left out
    assert lines[1].split() == [ENTRY, LONG_ID]
    assert len(lines) == 2


def test_columns_that_fit_wrap_between_words_never_inside_one(
    capsys: pytest.CaptureFixture[str], terminal: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    emit(ROWS, Format.table, columns=COLUMNS, rows_key="entries", narrow=NARROW, extra=EXTRA)
    lines = _screen(capsys)
    assert all(len(line) <= 120 for line in lines), lines
    assert lines[0].split() == ["ID", "SPIFFE_ID", "SELECTORS", "TTL", "NOT_AFTER"]
    assert lines[1].split() == [ENTRY, LONG_ID, "unix:gid:1000,", "1h", "in", "23m"]
    assert lines[2].split() == ["unix:uid:1000"]


def test_an_id_wider_than_the_terminal_folds_but_is_never_cut(
    capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    very_long = "spiffe://trustd.local/" + "/".join(f"segment{i}" for i in range(9))
    rows = {"entries": [{**ROWS["entries"][0], "spiffe_id": very_long}]}
    emit(rows, Format.table, columns=COLUMNS, rows_key="entries", narrow=NARROW)
    lines = _screen(capsys)
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[1].split()[0] == ENTRY  # the shorter ID stays on one line
    assert "".join("".join(lines[1:]).split()) == ENTRY + very_long


def test_wide_on_a_terminal_shows_every_column_with_human_times_and_durations(
    capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    emit(ROWS, Format.wide, columns=COLUMNS, rows_key="entries", narrow=NARROW, extra=EXTRA)
    lines = _screen(capsys)
    assert lines[0].split() == [c.upper() for c in COLUMNS + EXTRA]
    words = " ".join(lines[1:]).split()
    assert words[:2] == [ENTRY, LONG_ID]
    text = " ".join(words)
    assert "unix:gid:1000," in words and "unix:uid:1000" in words
    assert " 1h " in f" {text} " and "3600" not in text
    assert "in 23m" in text and "2h ago" in text
    assert "card-gateway.payments.svc.cluster.local" in text  # whole, not cut


def test_piped_table_is_unchanged_and_wide_adds_the_extra_columns_with_exact_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    row = ROWS["entries"][0]
    emit(ROWS, Format.table, columns=COLUMNS, rows_key="entries", narrow=NARROW, extra=EXTRA)
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "\t".join(c.upper() for c in COLUMNS),
        "\t".join(
            [ENTRY, LONG_ID, "unix:gid:1000,unix:uid:1000", "3600",
             "card-gateway.payments.svc.cluster.local", "-", str(row["not_after"])]
        ),
    ]  # fmt: skip
    emit(ROWS, Format.wide, columns=COLUMNS, rows_key="entries", narrow=NARROW, extra=EXTRA)
    header, values = capsys.readouterr().out.splitlines()
    assert header.split("\t") == [c.upper() for c in COLUMNS + EXTRA]
    assert values.split("\t")[-3:] == [str(row["not_after"]), "7", str(row["created_at"])]


def test_json_and_yaml_keep_exact_times_and_ttl_seconds(
    capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    for f, load in ((Format.json, json.loads), (Format.yaml, yaml.safe_load)):
        emit(ROWS, f, columns=COLUMNS, rows_key="entries", narrow=NARROW, extra=EXTRA)
        assert load(capsys.readouterr().out) == ROWS


@pytest.mark.parametrize(
    ("offset", "shown"),
    [
        (dt.timedelta(minutes=23, seconds=30), "in 23m"),
        (-dt.timedelta(hours=2, seconds=10), "2h ago"),
        (-dt.timedelta(days=3, hours=4, minutes=1), "3d4h ago"),
        (dt.timedelta(0), "now"),
    ],
)
def test_times_on_a_terminal_are_relative(
    capsys: pytest.CaptureFixture[str], terminal: None, offset: dt.timedelta, shown: str
) -> None:
    emit({"not_after": _iso(NOW + offset)}, Format.table)
    assert _screen(capsys) == ["NOT_AFTER", shown]


def test_cells_are_not_read_as_rich_markup(
    capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    emit({"id": "[bold]x[/bold]", "hostname": ":smile: host"}, Format.table)
    assert _screen(capsys)[1].split() == ["[bold]x[/bold]", ":smile:", "host"]


def test_wide_is_a_table_but_for_the_columns() -> None:
    assert Format.wide.tabular and Format.table.tabular
    assert not Format.json.tabular and not Format.yaml.tabular
