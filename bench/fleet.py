"""Fleet: many real daemons on a district Mosquitto behind the province's bridge, or on a cluster.

Every daemon is the real ``receiver run`` process (its own device id, state, cache and signed
reports). By default they connect to a district broker made from ``config/brokers/district.conf``,
which the province broker (``config/brokers/province.conf``) bridges to; with ``--cluster`` they
connect to the first node of a two-node ejabberd 23.01 cluster (``tests/brokers/ejabberd.py``)
with the second as their failover. Measured, each beside a floor taken in the same run:

1. a group emergency ``play``, published on the daemons' broker and then one hop away (on the
   province broker, or on the cluster's other node): from the publish to every daemon's
   ``started`` event, median, p99 and max. Floor: the same message, the same size, fanned out to
   as many plain MQTT subscribers on the daemons' broker, published where the play was;
2. a trust rotation (a trust document signed by two root keys, retained, published on the
   province, or on both nodes): until every daemon has said ``accepted`` for it;
3. the daemons' broker goes away: the district broker restarts (SIGTERM, 2 s, start again on the
   same port), or the first cluster node is killed. Until every daemon has logged
   ``broker_connected`` again, and the connection attempts per second the broker logged (the
   reconnect jitter must spread them);
4. memory per daemon: PSS (``/proc/<pid>/smaps_rollup``; shared libVLC pages are divided among
   the daemons that map them) and RSS.

The audio output is ``file`` (libVLC's afile writing a WAV), the lightest the config allows: no
sound card, a 0.3 s tone, about 26 KiB of WAV per play. The daemons use the field's reconnect
settings (``reconnect_min_s`` 1, ``reconnect_max_s`` 120) and log at ``info``.

Heavy: ``--daemons 100`` starts 100 Python processes with libVLC (about 34 MB PSS each) on this
machine; develop with the default 10. Last line: ``fleet: N daemons, emergency fan-out p99 X ms
(floor Y ms), all online Z s after a broker restart``. Nothing here is asserted.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt

from bench._common import (
    PREFIX,
    BenchError,
    TimedClient,
    as_json,
    bench_config,
    dev_topic,
    is_online,
    load_line,
    log_tail,
    paho_client,
    parser_for,
    run_main,
)
from receiver.central.signing import (
    SigningKey,
    command_payload,
    key_entry,
    sign_command,
    sign_trust,
    trust_payload,
)
from tests.brokers.bridge import loopback
from tests.brokers.ejabberd import EjabberdCluster
from tests.lab.audio import write_tone
from tests.lab.broker import MosquittoBroker, Received
from tests.lab.daemon import Daemon
from tests.lab.web import MediaServer

GROUP = "fleet-bench"
GROUP_TOPIC = f"{PREFIX}/grp/{GROUP}/cmd"
FLOOR_TOPIC = f"{PREFIX}/grp/fleet-floor/cmd"  # bridged like a group command; no daemon reads it
TONE_S = 0.3
START_BATCH = 10


@dataclass(frozen=True)
class Endpoint:
    """Where a benchmark client connects (ejabberd wants a user; Mosquitto here does not)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def client(self, tag: str) -> mqtt.Client:
        client = paho_client(tag)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        return client


@dataclass
class Target:
    """The brokers the daemons live on, and what each step publishes where."""

    name: str
    near: Endpoint  # the daemons' first broker; the floor's subscribers
    far: tuple[str, Endpoint]  # a second place to publish from (one hop more)
    trust_at: tuple[Endpoint, ...]  # where the retained trust document is published
    broker_yaml: str  # lines added to the daemons' broker section
    disrupt: Callable[[], str]  # stops the daemons' broker for a while; says what it did
    attempts_log: Callable[[], list[str]]  # the broker's log lines, for connection attempts
    attempt_pattern: re.Pattern[str]


def device_name(i: int) -> str:
    return f"fleet-{i:03d}"


class Keys:
    def __init__(self) -> None:
        self.operator = SigningKey.generate("fleet-operator")
        self.roots = [SigningKey.generate(f"fleet-root-{i}") for i in (1, 2)]
        self.seq = 0

    def config_keys(self) -> list[tuple[SigningKey, list[str], list[str]]]:
        return [(self.operator, ["operator", "emergency"], ["*"])] + [
            (root, ["root"], ["*"]) for root in self.roots
        ]

    def play(self, media: MediaServer, tone: Path, ref: str, priority: str) -> bytes:
        data = tone.read_bytes()
        body = {
            "priority": priority,
            "source": {
                "files": [
                    {
                        "url": media.url(tone.name),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "title": ref,
                    }
                ]
            },
            "max_duration_s": 30,
        }
        self.seq = max(self.seq + 1, int(time.time() * 1000))
        payload = command_payload(
            "play", body, env="lab", aud=[f"grp:{GROUP}"], message_id=ref, seq=self.seq
        )
        return sign_command(payload, [self.operator])

    def trust(self, version: int) -> bytes:
        entries = [key_entry(self.operator, ["operator", "emergency"])] + [
            key_entry(root, ["root"]) for root in self.roots
        ]
        return sign_trust(trust_payload(version, entries, env="lab"), self.roots)


def write_configs(root: Path, n: int, target: Target, media: MediaServer, keys: Keys) -> list[Path]:
    edits = [
        ("  reconnect_min_s: 0.2\n", "  reconnect_min_s: 1\n" + target.broker_yaml),
        ("  reconnect_max_s: 2.0\n", "  reconnect_max_s: 120\n"),
        ("  level: debug\n", "  level: info\n"),
        ("  warm_up_s: 0.3\n", "  warm_up_s: 0\n"),
        ("groups: [commune-e2e]\n", f"groups: [{GROUP}]\n"),
    ]
    configs = []
    for i in range(n):
        home = root / device_name(i)
        home.mkdir()
        configs.append(
            bench_config(
                home / "receiver.yaml",
                device_id=device_name(i),
                edits=edits,
                broker_port=target.near.port,
                media_port=media.port,
                keys=keys.config_keys(),
                wav=home / "out.wav",
                state_dir=home / "state",
                cache_dir=home / "cache",
            )
        )
    return configs


def trust_accepted(topic: str, version: int) -> Callable[[Received], bool]:
    return lambda m: (
        m.topic == topic
        and as_json(m).get("kind") == "accepted"
        and as_json(m).get("detail") == f"trust version {version}"
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary(values_s: Sequence[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (
        f"median {percentile(ms, 0.5):.0f} ms, p99 {percentile(ms, 0.99):.0f} ms, "
        f"max {max(ms):.0f} ms"
    )


def floor_fanout(publish_at: Endpoint, receive_at: Endpoint, n: int, size: int) -> list[float]:
    """Publish one message of ``size`` bytes; when each of ``n`` plain subscribers got it."""
    arrivals: list[float] = []
    lock = threading.Lock()
    ready = threading.Semaphore(0)
    clients: list[mqtt.Client] = []

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        with lock:
            arrivals.append(at)

    def on_subscribe(*_args: Any) -> None:
        ready.release()

    try:
        for _ in range(n):
            client = receive_at.client("floor")
            client.on_message = on_message
            client.on_subscribe = on_subscribe
            client.on_connect = lambda c, *_: c.subscribe(FLOOR_TOPIC, qos=1)
            client.connect(receive_at.host, receive_at.port)
            client.loop_start()
            clients.append(client)
        for _ in range(n):
            if not ready.acquire(timeout=30):
                raise BenchError("floor subscribers did not all subscribe")
        time.sleep(0.5)
        publisher = publish_at.client("floor-pub")
        publisher.connect(publish_at.host, publish_at.port)
        publisher.loop_start()
        start = time.monotonic()
        publisher.publish(FLOOR_TOPIC, os.urandom(size), qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 30
        while len(arrivals) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        publisher.disconnect()
        publisher.loop_stop()
        if len(arrivals) < n:
            raise BenchError(f"the floor message reached {len(arrivals)} of {n} subscribers")
        return [at - start for at in arrivals]
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()


def fanout(
    watcher: TimedClient,
    publish_at: Endpoint,
    payload: bytes,
    ref: str,
    names: Sequence[str],
) -> tuple[list[float], float]:
    """Publish the group play; publish-to-``started`` of each daemon (then wait until done),
    and the moment of the publish."""
    publisher = publish_at.client("fleet-pub")
    publisher.connect(publish_at.host, publish_at.port)
    publisher.loop_start()
    start = time.monotonic()
    publisher.publish(GROUP_TOPIC, payload, qos=1).wait_for_publish(10)
    publisher.disconnect()
    publisher.loop_stop()

    def step(name: str, kind: str) -> Any:
        topic = dev_topic(name, "events")
        return lambda m: (
            m.topic == topic and as_json(m).get("ref") == ref and as_json(m).get("kind") == kind
        )

    found = watcher.wait_sequences(
        {name: [step(name, "started"), step(name, "finished")] for name in names},
        f"started and finished of {ref}",
        timeout_s=120,
    )
    return [times[0] - start for times in found.values()], start


def inside(daemons: dict[str, Daemon], ref: str, published: float) -> str:
    """Where the time went, from the daemons' own logs (their ``mono`` is this machine's
    CLOCK_MONOTONIC): publish to ``accepted``, and ``accepted`` to ``started``."""
    to_accepted: list[float] = []
    to_started: list[float] = []
    for daemon in daemons.values():
        marks = {
            str(line["event"]): float(line["mono"])
            for line in list(daemon.lines)
            if line.get("ref") == ref and line.get("event") in ("accepted", "started")
        }
        if len(marks) == 2:
            to_accepted.append(marks["accepted"] - published)
            to_started.append(marks["started"] - marks["accepted"])
    if not to_started:
        return "  (no daemon logged both accepted and started)"
    return (
        f"  inside the daemons: publish to accepted {summary(to_accepted)}; "
        f"accepted to started {summary(to_started)}"
    )


def wait_connected_again(
    daemons: dict[str, Daemon], before: dict[str, int], timeout_s: float
) -> float:
    """Wall-clock time of the last daemon's new ``broker_connected`` log line."""
    deadline = time.monotonic() + timeout_s
    last = 0.0
    pending = set(daemons)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            lines = daemons[name].logged("broker_connected")
            if len(lines) > before[name]:
                stamp = datetime.fromisoformat(
                    lines[before[name]]["timestamp"].replace("Z", "+00:00")
                )
                last = max(last, stamp.timestamp())
                pending.discard(name)
        time.sleep(0.1)
    if pending:
        raise BenchError(f"{len(pending)} daemons did not reconnect within {timeout_s:g} s")
    return last


_CONNECTION = re.compile(r"^(\d\d:\d\d:\d\d): New connection from ")


_EJABBERD_CONNECTION = re.compile(r"^\S+ (\d\d:\d\d:\d\d)\.\d+\S* \[info\] .*Accepted connection ")


def attempts_per_second(lines: Sequence[str], pattern: re.Pattern[str]) -> Counter[str]:
    return Counter(m[1] for line in lines if (m := pattern.match(line)))


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="ascii").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/smaps_rollup has no Pss")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no VmRSS")


def mosquitto_target(root: Path, stack: ExitStack) -> Target:
    district = MosquittoBroker(
        root / "district", extra_config=loopback("district.conf"),
        max_packet_size=None, max_queued_messages=None,
    )  # fmt: skip
    district.start()
    stack.callback(district.stop)
    province = MosquittoBroker(
        root / "province", extra_config=loopback("province.conf", district.port),
        max_packet_size=None, max_queued_messages=None,
    )  # fmt: skip
    province.start()
    stack.callback(province.stop)
    near = Endpoint(district.host, district.port)
    far = Endpoint(province.host, province.port)

    def restart() -> str:
        district.stop()
        time.sleep(2.0)  # a short restart, as after an upgrade
        district.start()
        return "district broker down 2 s"

    def log() -> list[str]:
        return district.log_file.read_text(encoding="utf-8", errors="replace").splitlines()

    return Target(
        "Mosquitto district broker behind the province's bridge",
        near, ("province broker (one bridge hop)", far), (far,), "", restart, log, _CONNECTION,
    )  # fmt: skip


def ejabberd_target(root: Path, stack: ExitStack) -> Target:
    cluster = EjabberdCluster(root / "ejabberd", {"fleet": "fleet-pw"})
    stack.callback(cluster.stop)
    cluster.start()
    first, second = cluster.nodes
    near = Endpoint(first.host, first.port, "fleet", "fleet-pw")
    far = Endpoint(second.host, second.port, "fleet", "fleet-pw")
    broker_yaml = (
        f"  username: fleet\n  password: fleet-pw\n  failover: ['127.0.0.1:{second.port}']\n"
    )

    def restart() -> str:
        first.kill()  # the daemons fail over to the second node
        return "first ejabberd node killed (the daemons fail over to the second)"

    def log() -> list[str]:
        return second.log.read_text(encoding="utf-8", errors="replace").splitlines()

    return Target(
        "ejabberd 23.01 cluster of two nodes",
        near, ("other node of the cluster", far), (near, far), broker_yaml, restart, log,
        _EJABBERD_CONNECTION,
    )  # fmt: skip


@contextmanager
def named_in_error(daemons: dict[str, Daemon], lines: int = 25) -> Iterator[None]:
    """A :class:`BenchError` that names daemons gets their last log lines added."""
    try:
        yield
    except BenchError as exc:
        named = [name for name in daemons if name in str(exc)][:3]
        tails = "".join(f"--- {name} ---\n{log_tail(daemons[name], lines)}" for name in named)
        raise BenchError(f"{exc}\n{tails}") from exc


def run(root: Path, n: int, cluster: bool) -> None:  # noqa: PLR0915 - one scenario, in order
    load_before = os.getloadavg()
    keys = Keys()
    with ExitStack() as stack:
        target = ejabberd_target(root, stack) if cluster else mosquitto_target(root, stack)
        print(f"target: {target.name}")
        media_dir = root / "media"
        media_dir.mkdir()
        tone = write_tone(media_dir / "tone.wav", 440.0, TONE_S)
        media = MediaServer(media_dir)
        stack.callback(media.close)
        configs = write_configs(root, n, target, media, keys)
        names = [device_name(i) for i in range(n)]

        # The timed client reads only host and port of what it is given (and our credentials).
        watcher = TimedClient(
            cast(MosquittoBroker, target.near),
            [f"{PREFIX}/dev/+/state", f"{PREFIX}/dev/+/events"],
            timeout_s=120,
        )
        if target.near.username is not None:
            watcher._client.username_pw_set(target.near.username, target.near.password)
        watcher.start()
        stack.callback(watcher.close)
        daemons: dict[str, Daemon] = {}

        def stop_daemons() -> None:
            for daemon in daemons.values():
                daemon.kill()

        stack.callback(stop_daemons)
        stack.enter_context(named_in_error(daemons))
        started_at = time.monotonic()
        for first in range(0, n, START_BATCH):
            batch = names[first : first + START_BATCH]
            for name, config in zip(batch, configs[first : first + START_BATCH], strict=True):
                daemons[name] = Daemon(config).start()
            watcher.wait_all(
                {name: is_online(dev_topic(name, "state")) for name in batch},
                "online state",
                timeout_s=120,
            )
        took = time.monotonic() - started_at
        print(f"{n} daemons online in {took:.0f} s (started {START_BATCH} at a time)")

        # A fresh daemon publishes "online" a moment before it sets its reset floor (the first
        # trusted instant of a new store); a command signed in between is refused as issued
        # before the reset. Wait past it.
        time.sleep(1.0)
        # Warm-up: every daemon fetches the tone once, so the measured plays start from cache.
        fanout(watcher, target.near, keys.play(media, tone, "warm-up", "normal"), "warm-up", names)
        time.sleep(1.0)

        size = len(keys.play(media, tone, "size-probe", "emergency"))
        results: dict[str, tuple[list[float], list[float]]] = {}
        for label, at in (("daemons' broker", target.near), target.far):
            floor = floor_fanout(at, target.near, n, size)
            time.sleep(0.5)
            ref = f"emergency-{uuid.uuid4().hex[:6]}"
            measured, published = fanout(
                watcher, at, keys.play(media, tone, ref, "emergency"), ref, names
            )
            results[label] = (measured, floor)
            print(
                f"emergency play published on the {label}: publish to started {summary(measured)}"
            )
            print(inside(daemons, ref, published))
            print(f"  floor, the same {size} bytes to {n} plain subscribers: {summary(floor)}")
            time.sleep(1.0)

        # Trust rotation, published retained (on every node of a cluster).
        start = time.monotonic()
        for endpoint in target.trust_at:
            publisher = endpoint.client("fleet-trust")
            publisher.connect(endpoint.host, endpoint.port)
            publisher.loop_start()
            publisher.publish(
                f"{PREFIX}/trust", keys.trust(1), qos=1, retain=True
            ).wait_for_publish(10)
            publisher.disconnect()
            publisher.loop_stop()
        accepted = watcher.wait_all(
            {name: trust_accepted(dev_topic(name, "events"), 1) for name in names},
            "trust version 1 accepted",
            timeout_s=120,
        )
        rotation = [at - start for at in accepted.values()]
        print(f"trust rotation reached every daemon: {summary(rotation)}")

        # Memory, idle, after all of the above.
        pss = sorted(pss_kib(d.process.pid) for d in daemons.values() if d.process)
        rss = sorted(rss_kib(d.process.pid) for d in daemons.values() if d.process)
        print(
            f"memory per daemon: PSS median {pss[len(pss) // 2] / 1024:.1f} MiB "
            f"(max {pss[-1] / 1024:.1f}), RSS median {rss[len(rss) // 2] / 1024:.1f} MiB; "
            f"all {n}: PSS {sum(pss) / 1024:.0f} MiB"
        )

        # The daemons' broker goes away for a while.
        before = {name: len(d.logged("broker_connected")) for name, d in daemons.items()}
        log_mark = len(target.attempts_log())
        what = target.disrupt()
        back_wall = time.time()
        last = wait_connected_again(daemons, before, timeout_s=300)
        all_online_s = max(0.0, last - back_wall)
        per_second = attempts_per_second(target.attempts_log()[log_mark:], target.attempt_pattern)
        busiest = max(per_second.values()) if per_second else 0
        total = sum(per_second.values())
        print(
            f"{what}: every daemon connected again {all_online_s:.1f} s later; {total} "
            f"connection attempts logged over {len(per_second)} s, at most {busiest} in one second"
        )

        load_after = os.getloadavg()
        print(load_line(load_before, load_after))
        measured, floor = results["daemons' broker"]
        print(
            f"fleet: {n} daemons, emergency fan-out p99 {percentile(measured, 0.99) * 1000:.0f} ms "
            f"(floor {percentile(floor, 0.99) * 1000:.0f} ms), all online {all_online_s:.1f} s "
            "after a broker restart"
        )


def main(argv: Sequence[str] = ()) -> int:
    parser = parser_for("fleet", __doc__)
    parser.add_argument("--daemons", type=int, default=10, help="how many (default 10)")
    parser.add_argument(
        "--cluster", action="store_true", help="on a two-node ejabberd cluster, not Mosquitto"
    )
    args = parser.parse_args(list(argv))
    return run_main("fleet", lambda root: run(root, args.daemons, args.cluster))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
