"""Run inside a unit with loa-receiver.service's sandbox: what may it do? Prints one JSON object.

Each entry is "allowed" or "denied (ERRNO)". Standard library and ctypes only: it runs with the
installed program's Python, under the same seccomp filter, namespaces and device policy.
"""

import ctypes
import errno
import json
import os
import resource
import socket
import sys
import time
from collections.abc import Callable

results: dict[str, str] = {}
libc = ctypes.CDLL(None, use_errno=True)


def attempt(name: str, action: Callable[[], object]) -> None:
    try:
        action()
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        results[name] = f"denied ({code})"
    else:
        results[name] = "allowed"


def checked(result: int) -> int:
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def write(path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("probe")
    os.unlink(path)


def sock(family: int, kind: int) -> None:
    socket.socket(family, kind).close()


def read_ntp_state() -> None:
    timex = ctypes.create_string_buffer(256)  # struct timex with modes = 0: read only
    checked(libc.adjtimex(timex))


def set_clock() -> None:
    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    checked(libc.clock_settime(0, ctypes.byref(Timespec(int(time.time()), 0))))


def writable_executable_memory() -> None:
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    address = libc.mmap(None, 4096, 7, 0x22, -1, 0)  # PROT_READ|WRITE|EXEC, PRIVATE|ANONYMOUS
    if address in (None, ctypes.c_void_p(-1).value):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def realtime_priority() -> None:
    param = ctypes.c_int(1)
    checked(libc.sched_setscheduler(0, 1, ctypes.byref(param)))  # SCHED_FIFO


def new_user_namespace() -> None:
    checked(libc.unshare(0x10000000))  # CLONE_NEWUSER


attempt("write /etc", lambda: write("/etc/loa-probe"))
attempt("write /opt/loa-receiver", lambda: write("/opt/loa-receiver/loa-probe"))
attempt("write /var/lib/loa-receiver", lambda: write("/var/lib/loa-receiver/loa-probe"))
attempt("write /var/cache/loa-receiver", lambda: write("/var/cache/loa-receiver/loa-probe"))
attempt("write /tmp (private)", lambda: write("/tmp/loa-probe"))
attempt("list /root", lambda: os.listdir("/root"))
attempt("list /home", lambda: os.listdir("/home"))
attempt(
    "read /etc/loa-receiver/receiver.yaml", lambda: open("/etc/loa-receiver/receiver.yaml").close()
)
attempt("socket AF_INET", lambda: sock(socket.AF_INET, socket.SOCK_STREAM))
attempt("socket AF_INET6", lambda: sock(socket.AF_INET6, socket.SOCK_STREAM))
attempt("socket AF_UNIX", lambda: sock(socket.AF_UNIX, socket.SOCK_DGRAM))
attempt("socket AF_NETLINK", lambda: sock(socket.AF_NETLINK, socket.SOCK_RAW))
attempt("socket AF_PACKET", lambda: sock(socket.AF_PACKET, socket.SOCK_RAW))
attempt("read the NTP state (adjtimex)", read_ntp_state)
attempt("set the clock", set_clock)
attempt("writable+executable memory", writable_executable_memory)
attempt("real-time priority", realtime_priority)
# glibc's setrlimit() is the prlimit64 call, which @resources does not name: lowering its own
# limits stays possible (harmless; raising them needs CAP_SYS_RESOURCE, which it has not).
attempt("lower its own resource limit", lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
attempt("lower its own priority (setpriority)", lambda: os.setpriority(os.PRIO_PROCESS, 0, 19))
attempt("new user namespace", new_user_namespace)
attempt("become root", lambda: os.setuid(0))
# A device node that exists in the container but is not in the unit's DeviceAllow= list.
attempt("open /dev/net/tun", lambda: open("/dev/net/tun", "rb").close())
json.dump(results, sys.stdout)
