"""State and cache directories the daemon cannot use, told before it touches them.

A link to a drive that is not mounted, or a path no directory can be made at, is a start
refusal (exit 78) that ``check-config`` warns of, naming the config key. A start refused because
of the state directory's owner or the device key leaves the directory as it was; a file in it
that another user left there (a hand-run as root) is named, with the command that gives it back.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.device_key import load_or_create_device_key
from tests.test_start_refusals import ROOT, receiver, write_config

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


# --- a hand-run as another user than the state directory's owner --------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="changes owners, runs as nobody"
)
NOBODY = "nobody"
SETPRIV = "setpriv"
RECEIVER = (sys.executable, "-m", "receiver.cli")


@pytest.fixture
def nobodys_state() -> Iterator[tuple[Path, Path]]:
    """A config and a state directory that belongs to ``nobody``, who can reach both (pytest's
    own temporary directories are root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="loa-owner-"))
    try:
        top.chmod(0o755)
        config = with_storage(write_config(top), str(top / "state"), str(top / "cache"))
        config.chmod(0o644)
        user = pwd.getpwnam(NOBODY)
        for directory in (top / "state", top / "cache"):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o700)
            os.chown(directory, user.pw_uid, user.pw_gid)
        yield config, top / "state"
    finally:
        shutil.rmtree(top)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    # nobody may read and search everything (CAP_DAC_READ_SEARCH), so that a checkout and its
    # .venv in a directory only root may enter (a CI's clone) can be imported, but writes only
    # where its own rights let it: what the daemon's user may not write is still refused.
    read_anything = ("--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
    return subprocess.run(
        [
            SETPRIV,
            f"--reuid={NOBODY}",
            "--regid=nogroup",
            "--clear-groups",
            *read_anything,
            *RECEIVER,
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_root
def test_a_start_refused_for_the_owner_of_the_state_leaves_it_as_it_was(
    nobodys_state: tuple[Path, Path],
) -> None:
    """Root's refused start had already made daemon.lock, state.db and relay-gpio.json, only
    root's: the service's own user could then not start at all."""
    config, state = nobodys_state
    run = receiver("run", "--config", str(config))
    assert run.returncode == 78, run.stderr
    assert run.stderr.splitlines() == [
        f"{config}: {state} belongs to nobody, who runs the daemon: make the device key "
        f"{state}/device.key as that user, e.g. sudo -u nobody receiver enroll --config ..."
    ]
    assert list(state.iterdir()) == []


@needs_root
def test_files_another_user_left_in_the_state_are_named_with_the_fix(
    nobodys_state: tuple[Path, Path],
) -> None:
    """What an earlier hand-run as root left: the service's user then got "…/state: Permission
    denied", exit 78, naming neither the file nor a fix."""
    config, state = nobodys_state
    for name in ("daemon.lock", "state.db", "relay-gpio.json"):
        (state / name).write_text("", encoding="utf-8")
        (state / name).chmod(0o600)
    said = (
        f"{config}: storage.state_dir: this user (nobody) may not write to {state}/daemon.lock, "
        f"{state}/relay-gpio.json, {state}/state.db (owned by root): give them back to the "
        f"daemon's user: sudo chown -R nobody {state}"
    )
    run = as_nobody("run", "--config", str(config))
    assert run.returncode == 78, run.stderr
    assert run.stderr.splitlines() == [said, f"{config}: {REFUSAL}"]
    check = as_nobody("check-config", str(config))
    assert check.returncode == 78
    assert check.stderr.splitlines() == [f"warning: {said}"]
    assert sorted(p.name for p in state.iterdir()) == ["daemon.lock", "relay-gpio.json", "state.db"]


def test_a_device_key_others_can_read_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    key = tmp_path / "state" / "device.key"
    key.write_text("not read: its mode refuses it first\n", encoding="utf-8")
    key.chmod(0o644)
    run = receiver("run", "--config", str(config))
    assert run.returncode == 78, run.stderr
    assert run.stderr.splitlines() == [
        f"{config}: the device key {key} is readable by others (mode 0644): anyone who read it "
        "can sign reports as this device. Make a new one (delete the file, restart, enroll "
        "again) or, if nobody else can have read it, chmod 600 it"
    ]
    assert [p.name for p in key.parent.iterdir()] == ["device.key"]


@needs_root
def test_a_hand_run_as_root_in_the_daemon_user_s_state_is_refused_before_anything_is_made(
    nobodys_state: tuple[Path, Path], tmp_path: Path
) -> None:
    """With the device key already there, a start as root went ahead and left state.db, its
    -wal and the cache's files owned by root: the service's own user then could not start."""
    config, state = nobodys_state
    load_or_create_device_key(tmp_path, "made-elsewhere")
    shutil.move(tmp_path / "device.key", state / "device.key")
    user = pwd.getpwnam(NOBODY)
    os.chown(state / "device.key", user.pw_uid, user.pw_gid)
    for command in (("run", "--config", str(config)),):
        run = receiver(*command)
        assert run.returncode == 78, run.stderr
        assert run.stderr.splitlines() == [
            f"{config}: {state} belongs to nobody, who runs the daemon: run it as that user "
            "(sudo systemctl start loa-receiver, or sudo -u nobody receiver run --config ...); "
            "run as root, it would leave files there that nobody cannot open"
        ]
    assert [p.name for p in state.iterdir()] == ["device.key"]
    assert list((state.parent / "cache").iterdir()) == []
    vi = subprocess.run(
        [*RECEIVER, "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "LANG": "vi_VN.UTF-8", "LANGUAGE": "", "LC_ALL": ""},
    )
    assert vi.returncode == 78, vi.stderr
    assert f"{state} thuộc về nobody, người chạy dịch vụ" in vi.stderr
