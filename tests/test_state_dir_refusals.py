"""State and cache directories the daemon cannot use, told before it touches them.

A link to a drive that is not mounted, or a path no directory can be made at, is a start
refusal (exit 78) that ``check-config`` warns of, naming the config key. A start refused because
of the state directory's owner or the device key leaves the directory as it was; a file in it
that another user left there (a hand-run as root) is named, with the command that gives it back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_start_refusals import receiver, write_config

REFUSAL = "the daemon cannot start with this, see above"


def with_storage(config: Path, state_dir: str, cache_dir: str) -> Path:
    text = config.read_text(encoding="utf-8").replace(
        "storage: {state_dir: state, cache_dir: cache}",
        f"storage: {{state_dir: {state_dir}, cache_dir: {cache_dir}}}",
    )
    config.write_text(text, encoding="utf-8")
    return config


# --- a link to a drive that is not mounted, a path no directory can be made at -------------


@pytest.mark.parametrize("name", ["state_dir", "cache_dir"])
def test_a_link_to_a_drive_that_is_not_mounted_exits_78_and_is_warned_of(
    tmp_path: Path, name: str
) -> None:
    """check-config said OK; ``run`` then failed with "[Errno 17] File exists", exit 1 (restarted
    every 5 s for ever) for the cache, or exit 78 without naming the key for the state."""
    link = tmp_path / "usb_link"
    link.symlink_to("/mnt/usbstick/loa-cache")
    state, cache = ("usb_link", "cache") if name == "state_dir" else ("state", "usb_link")
    config = with_storage(write_config(tmp_path), state, cache)
    said = (
        f"{config}: storage.{name}: {link} is a link to /mnt/usbstick/loa-cache, which is not "
        "a directory: mount what it leads to, or point the link at a directory"
    )
    run = receiver("run", "--config", str(config))
    assert run.returncode == 78, run.stderr
    assert run.stderr.splitlines() == [said, f"{config}: {REFUSAL}"]
    check = receiver("check-config", str(config))
    assert check.returncode == 78
    assert check.stderr.splitlines() == [f"warning: {said}"]
    assert "will refuse to start" in check.stdout
    assert link.is_symlink() and not link.exists()  # left as it was


def test_a_directory_that_cannot_be_made_exits_78_and_is_warned_of(tmp_path: Path) -> None:
    """``/proc/foo``: /proc is there and "writable", but nothing can be made in it."""
    config = with_storage(write_config(tmp_path), "state", "/proc/loa-cache")
    said = (
        f"{config}: storage.cache_dir: the directory /proc/loa-cache cannot be made "
        "(No such file or directory): give a directory on the board's card or a mounted drive"
    )
    run = receiver("run", "--config", str(config))
    assert run.returncode == 78, run.stderr
    assert run.stderr.splitlines() == [said, f"{config}: {REFUSAL}"]
    check = receiver("check-config", str(config))
    assert check.returncode == 78
    assert check.stderr.splitlines() == [f"warning: {said}"]


def test_checking_a_directory_that_does_not_exist_yet_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    config = with_storage(write_config(tmp_path), "state", "new/cache")
    check = receiver("check-config", str(config))
    assert check.returncode == 0, check.stderr
    assert not (tmp_path / "new").exists()
