"""One daemon per state directory: the lock a running daemon holds on it.

A second ``receiver run`` with the same state (a technician trying the daemon by hand while the
service runs) would share the database, the outbox and the device key with the first, claim the
same amplifier pin, and take its place on the broker under the same client id, each throwing
the other off in turn. It stops before touching any of that. The lock is an ``flock`` on
``daemon.lock`` in the state directory, which also holds the owner's pid for the message: the
kernel lets go of it when its process ends, however it ends (a crash, a SIGKILL; a power cut
leaves the file but no lock), so nothing ever has to clean it up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

LOCK_FILE: Final = "daemon.lock"


class AlreadyRunningError(Exception):
    """Another process holds the state directory's lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        super().__init__(f"{state_dir} is locked by pid {pid}")
        self.state_dir = state_dir
        self.pid = pid


def hold(state_dir: Path) -> int:
    """Take the state directory's lock for the rest of this process's life (the descriptor is
    returned and must stay open), or raise :class:`AlreadyRunningError`. ``OSError`` if the
    directory cannot take the file."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # as the store makes it
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _owner(fd)
        os.close(fd)
        raise AlreadyRunningError(state_dir, pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def holder(state_dir: Path) -> int | None:
    """The pid of the process holding the state directory's lock (0 if it wrote none yet), or
    None if nobody holds it; creates nothing."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file, no daemon has ever run here (or the file is unreadable)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _owner(fd) or 0
    finally:
        os.close(fd)  # also lets go of the lock if this took it
    return None


def _owner(fd: int) -> int | None:
    """The pid the lock's holder wrote, if it got as far as writing it."""
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
