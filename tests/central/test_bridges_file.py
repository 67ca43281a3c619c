"""The bridges file of ``receiver-admin fleet --bridges``, read as a technician writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.central.admin import main
from receiver.central.bridges import BridgeMap, BridgeMapError


def test_bridges_and_their_device_patterns_are_read_per_line(tmp_path: Path) -> None:
    path = tmp_path / "bridges.txt"
    path.write_text(
        "# the districts\nprovince-25.district-a  loa-25-07873-*  loa-25-07874-*\n\n"
        "province-25.district-b loa-25-07901-*  # the new one\n",
        encoding="utf-8",
    )
    assert BridgeMap.load(path).patterns == {
        "province-25.district-a": ("loa-25-07873-*", "loa-25-07874-*"),
        "province-25.district-b": ("loa-25-07901-*",),
    }


@pytest.mark.parametrize("first", ["loa-25-07873-*", "loa-25-0787?-001", "loa-25-[0-9]*"])
def test_columns_swapped_are_refused_by_line(tmp_path: Path, first: str) -> None:
    """A device pattern first was taken for a bridge that never reports: no device was ever
    marked behind a bridge that is down, and nothing said why."""
    path = tmp_path / "bridges.txt"
    path.write_text(f"# a\n{first}  province-25.district-a\n", encoding="utf-8")
    with pytest.raises(BridgeMapError) as raised:
        BridgeMap.load(path)
    said = str(raised.value)
    assert said.startswith(f"{path}:2: ")
    assert f"{first} is a device pattern" in said and "remote_clientid first" in said


def test_the_refusal_reaches_the_operator_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bridges.txt"
    path.write_text("loa-25-07873-*  province-25.district-a\n", encoding="utf-8")
    argv = ["fleet", "--host", "127.0.0.1", "--port", "1", "--timeout", "1"]
    assert main([*argv, "--bridges", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:1:" in err and "Traceback" not in err


def test_unheard_bridges_and_patterns_matching_nothing_are_named(tmp_path: Path) -> None:
    """A bridge name that reported no state (a typo, or columns swapped without a wildcard) and
    a pattern that matches no device the broker knows: the two ways a file marks nothing."""
    path = tmp_path / "bridges.txt"
    path.write_text(
        "province-25.district-a  loa-25-07873-*\nloa-25-07901-001  province-25.district-b\n",
        encoding="utf-8",
    )
    bridges = BridgeMap.load(path)
    bridges.note("$SYS/broker/connection/province-25.district-a/state", b"1")
    devices = ["loa-25-07873-001", "loa-25-07901-001"]
    assert bridges.doubts(devices) == [
        "bridge loa-25-07901-001 has reported no state on this broker "
        "(is the name its remote_clientid, first on its line?)",
        "pattern province-25.district-b (bridge loa-25-07901-001) matches no device",
    ]
    bridges.note("$SYS/broker/connection/loa-25-07901-001/state", b"0")
    assert bridges.doubts([*devices, "province-25.district-b"]) == []


def test_a_file_no_bridge_of_which_has_reported_says_what_to_check(tmp_path: Path) -> None:
    path = tmp_path / "bridges.txt"
    path.write_text("province-25.district-a  loa-25-07873-*\n", encoding="utf-8")
    (said,) = BridgeMap.load(path).doubts(["loa-25-07873-001"])
    assert "no bridge has reported a state" in said
    assert "$SYS/broker/connection/+/state" in said and "notifications true" in said
