"""In-memory doubles of the shell's ports (:mod:`receiver.ports`), and a lab that runs the real
:class:`~receiver.runtime.Runtime` on them in a thread.

Every double writes what it is asked to do into one shared journal, in order, so a test can
check what happened before what: floors on disk before a sound, the events' commit before the
broker's PUBACK, the relay off whatever way the loop ends.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from receiver.central.signing import SigningKey, command_payload, sign_command
from receiver.config import load_config
from receiver.config_model import Config
from receiver.core.clock import Instant
from receiver.core.events import (
    FetchFinished,
    LinkChanged,
    MessageReceived,
    PlaybackEnded,
    PlaybackStarted,
)
from receiver.core.state import Intent
from receiver.device_key import load_or_create_device_key
from receiver.errors import StoreError
from receiver.ports import Hooks, Ports
from receiver.runtime import Runtime
from tests.lab.broker import report_json

DEVICE = "dev-shell"
GROUP = "grp-shell"
CMD_TOPIC = f"loa/v1/dev/{DEVICE}/cmd"
EVENTS_TOPIC = f"loa/v1/dev/{DEVICE}/events"


class Journal:
    """What the doubles were asked to do, in order, from any thread."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self._lock = threading.Lock()

    def note(self, entry: str) -> None:
        with self._lock:
            self.entries.append(entry)

    def index(self, entry: str) -> int:
        with self._lock:
            return self.entries.index(entry)

    def has(self, entry: str) -> bool:
        with self._lock:
            return entry in self.entries

    def starting(self, prefix: str) -> list[str]:
        with self._lock:
            return [e for e in self.entries if e.startswith(prefix)]


class Clock:
    """The real clocks, the wall clock synchronised (commands are signed with the real time)."""

    speed = 1.0

    def now(self) -> Instant:
        return Instant(time.monotonic(), time.time(), True)


@dataclass
class Store:
    journal: Journal
    fail_saves: bool = False
    fail_commits: bool = False  # a commit left to run in the background fails
    recovered_from: Path | None = None
    saved_floors: dict[str, tuple[int, str]] = field(default_factory=dict)
    open_intents: dict[str, Intent] = field(default_factory=dict)
    event_number: int = 0
    saved_time_floors: list[float] = field(default_factory=list)
    _committing: Callable[[], None] | None = None  # a commit under way (save_floors(wait=False))

    def floors(self) -> dict[str, tuple[int, str]]:
        return dict(self.saved_floors)

    def time_floor(self) -> float:
        return 0.0

    def reset_floor(self) -> float | None:
        return time.time() - 86400.0

    def trust(self) -> tuple[int, bytes, str] | None:
        return None

    def schedules(self) -> dict[str, tuple[int, bytes, str]]:
        return {}

    def done(self) -> frozenset[str]:
        return frozenset()

    def intents(self) -> tuple[Intent, ...]:
        return tuple(self.open_intents.values())

    def save_floors(
        self,
        changed: dict[str, tuple[int, str]],
        time_floor: float,
        intent: Intent | None = None,
        *,
        wait: bool = True,
    ) -> None:
        """Noted in the journal when the commit is done: at once, or at :meth:`settle`."""
        self.settle()
        if self.fail_saves:
            raise OSError("disk full")

        def commit() -> None:
            self.saved_floors.update(changed)
            if intent is not None:
                self.open_intents[intent.ref] = intent
            self.journal.note("store floors")

        self._committing = commit
        if wait:
            self.settle()

    def settle(self) -> None:
        commit, self._committing = self._committing, None
        if commit is not None and self.fail_commits:
            raise OSError("disk I/O error")  # the commit failed: nothing of it is stored
        if commit is not None:
            commit()

    def mark_intent_started(self, ref: str) -> None:
        self.settle()
        self.journal.note(f"store intent started {ref}")

    def forget_intent(self, ref: str) -> None:
        self.settle()
        self.open_intents.pop(ref, None)
        self.journal.note(f"store intent done {ref}")

    def save_reset_floor(self, utc: float) -> None:
        self.settle()
        self.journal.note("store reset floor")

    def save_time_floor(self, utc: float) -> None:
        self.settle()
        self.saved_time_floors.append(utc)

    def save_trust(self, version: int, body: bytes, digest: str) -> None:
        self.settle()
        self.journal.note("store trust")

    def save_schedule(self, schedule_id: str, version: int, body: bytes, digest: str) -> None:
        self.settle()
        self.journal.note("store schedule")

    def save_done(self, key: str) -> None:
        self.settle()
        self.journal.note("store done")

    def next_event_number(self) -> int:
        self.event_number += 1
        return self.event_number

    def close(self) -> None:
        self.journal.note("store closed")


@dataclass
class Outbox:
    """Events committed only when a batch ends (or at once outside one), like the real one."""

    journal: Journal
    recovered_from: Path | None = None
    unwritable: bool = False  # every write fails, as on a locked, full or failing card
    commit_fails: bool = False  # a batch's commit fails (its adds went through), as on a full card
    committed: dict[int, bytes] = field(default_factory=dict)
    commits: int = 0
    dropped_total: int = 0
    _open: dict[int, bytes] | None = None

    def add(self, n: int, payload: bytes) -> int:
        if self.unwritable:
            raise StoreError("cannot store an event in the outbox: database is locked")
        if self._open is not None:
            self._open[n] = payload
        else:
            self._commit({n: payload})
        return 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        if self._open is not None:
            yield
            return
        if self.unwritable:
            raise StoreError("cannot start a transaction in the outbox: database is locked")
        self._open = {}
        try:
            yield
            if self._open and self.commit_fails:
                self.journal.note("outbox commit failed")
                raise StoreError("cannot store events in the outbox: database or disk is full")
            if self._open:
                self._commit(self._open)
        finally:
            self._open = None

    def _commit(self, events: dict[int, bytes]) -> None:
        self.committed.update(events)
        self.commits += 1
        kinds = ",".join(json.loads(report_json(p))["kind"] for p in events.values())
        self.journal.note(f"outbox commit {kinds}")

    def pending(self, limit: int | None = None) -> list[tuple[int, bytes]]:
        # As SQLite: the connection that writes a transaction reads its rows before the commit.
        rows = {**self.committed, **(self._open or {})}
        return sorted(rows.items())[: limit if limit is not None else None]

    def ack(self, n: int) -> None:
        self.journal.note(f"outbox ack {n}")
        self.committed.pop(n, None)

    def __len__(self) -> int:
        return len(self.committed)

    def kinds(self) -> list[str]:
        return [json.loads(report_json(p))["kind"] for _, p in sorted(self.committed.items())]

    def close(self) -> None:
        pass


@dataclass
class Relay:
    journal: Journal
    on: bool = False

    def switch(self, on: bool) -> None:
        self.on = on
        self.journal.note(f"relay {'on' if on else 'off'}")

    def close(self) -> None:
        self.on = False
        self.journal.note("relay closed off")


@dataclass
class Inputs:
    def current(self) -> list[tuple[str, bool]]:
        return []

    def close(self) -> None:
        pass


@dataclass
class Player:
    """Starts at once and ends when the test says; ``fail_with`` makes ``play`` raise."""

    journal: Journal
    report: Callable[[Any], None]
    fail_with: BaseException | None = None
    token: int | None = None

    def play(
        self,
        token: int,
        media: str,
        volume: int,
        start_ms: int = 0,
        *,
        live: bool = False,
        at: float | None = None,
    ) -> None:
        self.journal.note(f"play {token}" if at is None else f"play {token} at instant")
        if self.fail_with is not None:
            raise self.fail_with
        self.token = token
        self.report(PlaybackStarted(token))

    def preroll(self, token: int, media: str, volume: int, start_ms: int = 0) -> None:
        self.journal.note(f"preroll {token}")

    def drop_preroll(self, token: int) -> None:
        self.journal.note(f"drop preroll {token}")

    def end(self) -> None:
        assert self.token is not None
        self.report(PlaybackEnded(self.token))

    def stop(self) -> None:
        self.journal.note("player stop")

    def set_volume(self, level: int) -> None:
        pass

    def position_ms(self) -> int:
        return -1

    def close(self) -> None:
        self.journal.note("player closed")


@dataclass(frozen=True)
class Usage:
    bytes: int = 0
    files: int = 0


@dataclass
class Fetcher:
    """Every file is in the cache already."""

    report: Callable[[Any], None]

    def fetch(self, url: str, sha256: str, size: int) -> None:
        self.report(FetchFinished(sha256, f"/cache/{sha256}"))

    def cached_path(self, sha256: str) -> Path | None:
        return Path(f"/cache/{sha256}")

    def set_protected(self, hashes: Iterable[str]) -> None:
        pass

    def touch(self, sha256: str) -> None:
        pass

    def usage(self) -> Usage:
        return Usage()

    def missing(self, hashes: Iterable[str]) -> int:
        return 0

    def close(self) -> None:
        pass


@dataclass
class Link:
    journal: Journal
    report: Callable[[Any], None]
    published: list[tuple[str, bytes]] = field(default_factory=list)
    connected: bool = True
    last_error: str | None = None
    socket_inode: int | None = None
    attempts: int = 0
    cause: str | None = None

    @property
    def status(self) -> dict[str, Any]:
        return {
            "up": self.connected,
            "since": None,
            "last_error": self.last_error,
            "reconnects": 0,
            "broker": "memory",
            "attempts": self.attempts,
            "cause": self.cause,
        }

    def start(self) -> None:
        self.report(LinkChanged(True))

    def publish(
        self,
        topic: str,
        payload: bytes,
        retain: bool = False,
        on_ack: Callable[[], None] | None = None,
    ) -> bool:
        self.published.append((topic, report_json(payload)))  # the report inside the seal
        if topic.endswith("/events"):
            self.journal.note(f"publish {json.loads(report_json(payload))['kind']}")
        if on_ack is not None:
            on_ack()  # the broker has it at once
        return True

    def ack(self, message: MessageReceived) -> None:
        self.journal.note(f"puback {message.mid}")

    def stop(self, final_topic: str | None = None, final_payload: bytes | None = None) -> None:
        self.journal.note("link stopped")


def write_config(root: Path, operator: SigningKey, warm_up_s: float = 0.05) -> Config:
    """A config through the daemon's own parser: what a technician would write."""
    path = root / "receiver.yaml"
    (root / "state").mkdir(exist_ok=True)
    path.write_text(
        f"""device_id: {DEVICE}
env: lab
groups: [{GROUP}]
broker:
  host: 127.0.0.1
trust:
  keys:
    - id: {operator.id}
      ed25519: {operator.public_b64}
      roles: [operator]
      scopes: ["*"]
player:
  output: file
  wav_file: {root / "out.wav"}
gpio:
  pin_factory: mock
  warm_up_s: {warm_up_s}
  tail_s: 0.05
media:
  allowed_schemes: [http]
  allowed_hosts: ["127.0.0.1"]
storage:
  state_dir: {root / "state"}
  cache_dir: {root / "cache"}
""",
        encoding="utf-8",
    )
    return load_config(path)


@dataclass
class Shell:
    """The real Runtime on doubles, its loop in a thread."""

    runtime: Runtime
    operator: SigningKey
    journal: Journal
    store: Store
    outbox: Outbox
    relay: Relay
    player: Player
    link: Link
    thread: threading.Thread | None = None
    error: BaseException | None = None
    _mid: int = 0

    def start(self) -> Shell:
        def run() -> None:
            try:
                self.runtime.run()
            except BaseException as exc:  # handed to the test
                self.error = exc

        self.thread = threading.Thread(target=run, name="loop", daemon=True)
        self.thread.start()
        self.wait(lambda: self.journal.has("relay off"), "the boot's relay off")
        return self

    def stop(self) -> None:
        self.runtime.request_stop()
        self.join()

    def join(self, timeout: float = 10.0) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the loop did not end"

    def command(self, kind: str, body: dict[str, Any], ref: str) -> MessageReceived:
        payload = command_payload(kind, body, env="lab", aud=[f"dev:{DEVICE}"], message_id=ref)
        return self.message(sign_command(payload, [self.operator]))

    def message(self, raw: bytes) -> MessageReceived:
        self._mid += 1
        event = MessageReceived(CMD_TOPIC, raw, mid=self._mid, qos=1)
        self.runtime._message_arrived(event)  # as the link's thread does
        return event

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.error is not None:
                raise AssertionError(f"the loop failed waiting for {what}") from self.error
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.journal.entries}")
            time.sleep(0.002)


def open_shell(root: Path, *, store_fails: bool = False, warm_up_s: float = 0.05) -> Shell:
    operator = SigningKey.generate("op-shell")
    config = write_config(root, operator, warm_up_s)
    journal = Journal()
    made: dict[str, Any] = {}

    def build(config: Config, hooks: Hooks) -> Ports:
        made["store"] = Store(journal, fail_saves=store_fails)
        made["outbox"] = Outbox(journal)
        made["relay"] = Relay(journal)
        made["player"] = Player(journal, hooks.report)
        made["link"] = Link(journal, hooks.report)
        key, _ = load_or_create_device_key(config.storage.state_dir, config.device_id)
        return Ports(
            device_key=key,
            clock=Clock(),
            store=made["store"],
            outbox=made["outbox"],
            relay=made["relay"],
            inputs=Inputs(),
            player=made["player"],
            fetcher=Fetcher(hooks.report),
            link=made["link"],
        )

    runtime = Runtime(config, ports=build)
    return Shell(runtime, operator, journal, **made)


def play_body(url: str = "http://127.0.0.1/a.mp3") -> dict[str, Any]:
    return {
        "priority": "normal",
        "source": {"files": [{"url": url, "sha256": "b" * 64, "size": 1000, "title": "News"}]},
        "max_duration_s": 600,
    }
