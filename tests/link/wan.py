"""A rural 4G link between two network namespaces: delay, jitter, loss, rate, silence, flaps.

This is the part ``tc netem`` plays on a kernel that has it. The kernels this tier runs on (the
CI machines, built without ``CONFIG_NET_SCH_NETEM``) do not, so the link is emulated in user space
instead: one TUN device in each namespace (``wan0``), and this process in between, reading each
IP packet from one side and writing it to the other once its time has come. What it does per
direction, per packet, in this order:

- ``down`` (or the "down" half of a flap cycle): the packet is dropped, silently, as a NAT that
  forgot the mapping does (no RST, no ICMP);
- ``loss``: dropped with that probability;
- ``rate_bps``: serialised behind the packets before it (a bottleneck of that many bits a second),
  with at most ``queue_packets`` waiting (tail drop beyond, as a full modem buffer does);
- ``delay_ms`` +- ``jitter_ms`` (uniform): one-way delay, never reordering (4G's radio layer
  delivers in order; the jitter shows as a varying RTT).

It counts every IP packet and byte it forwards or drops per direction: the ground truth the
receiver's own byte counters are checked against.

Control is one JSON object per line on stdin, each answered with one JSON line on stdout:
``{"profile": {...}}`` sets the profile (both directions), ``{"stats": true}`` answers the
counters. It prints ``{"ready": true}`` once both devices exist; stdin at EOF ends it, and the
devices go with it (they are not persistent). Random choices are seeded (``--seed``).

Run as ``python -m tests.link.wan --dev-ns A --central-ns B --seed N`` (root).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
DEVICE_NAME = "wan0"
UP, DOWN = 0, 1  # directions: device -> central, central -> device


def setns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path`` (/run/netns/NAME)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


@dataclass
class Profile:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_bps: float = 0.0
    queue_packets: int = 200
    down: bool = False
    flap_up_s: float = 0.0  # with flap_down_s: a cycle of so long up, then so long down
    flap_down_s: float = 0.0

    def is_down(self, now: float, since: float) -> bool:
        if self.down:
            return True
        cycle = self.flap_up_s + self.flap_down_s
        if self.flap_down_s <= 0 or cycle <= 0:
            return False
        return (now - since) % cycle >= self.flap_up_s


@dataclass
class Direction:
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    busy_until: float = 0.0
    last_due: float = 0.0
    queued: int = 0


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    direction: int = field(compare=False)
    packet: bytes = field(compare=False)


class Wan:
    def __init__(self, dev_fd: int, central_fd: int, seed: int) -> None:
        self.fds = (dev_fd, central_fd)
        self.rng = random.Random(seed)  # noqa: S311 - a link model, not a secret
        self.profile = Profile()
        self.profile_since = time.monotonic()
        self.dirs = (Direction(), Direction())
        self.heap: list[_Due] = []
        self.seq = 0

    def receive(self, direction: int, packet: bytes, now: float) -> None:
        prof, stats = self.profile, self.dirs[direction]
        if prof.is_down(now, self.profile_since) or self.rng.random() < prof.loss:
            stats.dropped += 1
            return
        if stats.queued >= prof.queue_packets:
            stats.dropped += 1
            return
        leave = now
        if prof.rate_bps > 0:
            stats.busy_until = max(now, stats.busy_until) + len(packet) * 8 / prof.rate_bps
            leave = stats.busy_until
        delay = max(0.0, prof.delay_ms + self.rng.uniform(-prof.jitter_ms, prof.jitter_ms))
        due = max(leave + delay / 1000.0, stats.last_due)
        stats.last_due = due
        stats.queued += 1
        self.seq += 1
        heapq.heappush(self.heap, _Due(due, self.seq, direction, packet))

    def deliver(self, now: float) -> None:
        while self.heap and self.heap[0].at <= now:
            item = heapq.heappop(self.heap)
            stats = self.dirs[item.direction]
            stats.queued -= 1
            try:
                os.write(self.fds[1 - item.direction], item.packet)
            except OSError:
                stats.dropped += 1
                continue
            stats.packets += 1
            stats.bytes += len(item.packet)

    def control(self, line: str) -> dict[str, Any]:
        request = json.loads(line)
        if "profile" in request:
            self.profile = Profile(**request["profile"])
            self.profile_since = time.monotonic()
        names = ("up", "down")
        return {
            name: {"packets": d.packets, "bytes": d.bytes, "dropped": d.dropped}
            for name, d in zip(names, self.dirs, strict=True)
        }

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        buffer = b""
        while True:
            now = time.monotonic()
            timeout = max(0.0, self.heap[0].at - now) if self.heap else 0.5
            readable, _, _ = select.select([self.fds[0], self.fds[1], stdin], [], [], timeout)
            now = time.monotonic()
            for fd in readable:
                if fd == stdin:
                    chunk = os.read(stdin, 4096)
                    if not chunk:
                        return
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            print(json.dumps(self.control(line.decode())), flush=True)
                    continue
                direction = UP if fd == self.fds[0] else DOWN
                for _ in range(64):  # drain what is there, then look at the clock again
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    self.receive(direction, packet, now)
            self.deliver(time.monotonic())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dev-ns", required=True)
    parser.add_argument("--central-ns", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    setns(f"/run/netns/{args.dev_ns}")
    dev_fd = open_tun(DEVICE_NAME)
    setns(f"/run/netns/{args.central_ns}")
    central_fd = open_tun(DEVICE_NAME)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.setns(home, CLONE_NEWNET)
    os.close(home)
    print(json.dumps({"ready": True}), flush=True)
    Wan(dev_fd, central_fd, args.seed).run()


if __name__ == "__main__":
    main()
