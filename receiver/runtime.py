"""The loop: one thread that owns every decision and every call into the adapters.

Adapters (:mod:`receiver.ports`, built by :mod:`receiver.assembly`) call back on their own
threads and only drop plain events into the inbox. Each loop turn takes the events waiting (a
bounded number, and none after one whose step reports more than a refusal), asks the core what
to do with each (``machine.step``) and carries out the effects in order; the turn's events
reach the outbox in one durable write, and only then are the messages acknowledged to the
broker. The loop feeds the systemd watchdog only while it turns, and polls the player's position
(the only way to see a stalled stream) while a live relay plays.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Final

import structlog

from receiver import __version__, systemd
from receiver.assembly import (
    Topics,
    offline_payload,
    real_ports,
    restore_state,
    retire_reported_ends,
)
from receiver.config_model import Config
from receiver.core import machine
from receiver.core.clock import Instant
from receiver.core.effects import (
    DropPreroll,
    Effect,
    Emit,
    Fetch,
    PersistDone,
    PersistFloors,
    PersistIntentDone,
    PersistIntentStarted,
    PersistResetFloor,
    PersistSchedule,
    PersistTrust,
    Play,
    Preroll,
    PublishState,
    SetVolume,
    StopPlayback,
    SwitchRelay,
)
from receiver.core.envelope import MAX_MESSAGE_BYTES
from receiver.core.events import (
    Event,
    LinkChanged,
    LocalInputChanged,
    MessageReceived,
    PlaybackFailed,
    PlaybackProgress,
    PlaybackStarted,
    PlayerCrashed,
    TimerFired,
)
from receiver.device_key import EVENT_TYPE, STATE_TYPE, seal_report
from receiver.errors import ReceiverError
from receiver.health import TrafficMeter, read_health
from receiver.inbox import Inbox, named_key
from receiver.logs import bounded
from receiver.ports import ANY_TOKEN, Hooks, Ports
from receiver.pump import OutboxPump
from receiver.status import write_status
from receiver.timefmt import rfc3339

IDLE_WAKE_S: Final = 5.0  # the loop turns at least this often, so the watchdog sees it alive
PROGRESS_POLL_S: Final = 1.0  # how often a live stream's position is read
# How often a trusted time is saved: a power cut, then a clock spoofed back at boot, can make
# commands issued in the last this-many seconds before the cut look fresh again. One small
# SQLite write each time: 288 a day, nothing to an SD card.
TIME_FLOOR_SAVE_S: Final = 300.0
STATE_EVERY_S: Final = 60.0  # the retained state is also refreshed this often (docs/protocol.md)
#: A link that keeps failing for the reason the status file says: its count of attempts is
#: rewritten at most this often (a new reason is written at once); SD card wear.
LINK_NEWS_EVERY_S: Final = 30.0
# After a turn that issued a Play, a due state waits for libVLC's start report (a few ms later),
# at most this long: building, signing, writing and sending it in between would only delay the
# turn that takes the report, and so the `started` event (bench/latency.py).
STATE_HOLD_AFTER_PLAY_S: Final = 0.05
# And after the start report, a little longer: building and sending the state at once would
# hold the interpreter while the link's thread is about to send the `started` event.
STATE_HOLD_AFTER_START_S: Final = 0.01
START_REPORTS: Final = (PlaybackStarted, PlaybackFailed, PlayerCrashed)
# How long a turn that started a local file waits for its start report (libVLC's few ms) before
# it ends without it. While it waits, the turn's reports (the command's `accepted`) are already
# on their way; their commit, and the command's PUBACK, wait to go with the `started`.
START_AWAIT_S: Final = 0.05
# Effects that may go ahead while a command's floors are still being committed: none of them
# is an action the floors must precede (a report is sent only once the turn's store writes are
# on disk, at its end; a fetch only fills the cache).
WITHOUT_FLOORS: Final = (Emit, Fetch, PublishState)
MAX_DETAIL_CHARS: Final = 200
GIL_SWITCH_S: Final = 0.0005  # see run_forever
PERSIST_EFFECTS: Final = (
    PersistFloors,
    PersistIntentStarted,
    PersistIntentDone,
    PersistTrust,
    PersistResetFloor,
    PersistSchedule,
    PersistDone,
)
# After a file opened for a command not yet checked was let go (the command was refused, or is
# not due now), files are opened so only after the command's check for this long.
UNCHECKED_OPEN_REST_S: Final = 1.0
MAX_EVENTS_PER_TURN: Final = 256  # events stepped before their reports are committed together
SHA256_HEX_CHARS: Final = 64

PortsFactory = Callable[[Config, Hooks], Ports]


class Runtime:
    def __init__(
        self, config: Config, pin_factory: Any = None, ports: PortsFactory | None = None
    ) -> None:
        self.config = config
        self.log = structlog.get_logger("receiver").bind(device=config.device_id)
        self.inbox = Inbox()
        self.topics = Topics(config.broker.topic_prefix, config.device_id)
        self._stopping = threading.Event()
        self._state_payload: bytes | None = None
        self._state_due: dict[str, Any] | None = None  # the core's newest state, to publish
        self._play_issued = False  # by the turn under way
        self._local_play_issued = False  # ... of a local file, to start now (_await_start_report)
        self._state_held_until: float | None = None  # monotonic; a Play's start is awaited
        self._protected: frozenset[str] = frozenset()
        self._opened_ahead = False  # a file opened for a play not yet named (_open_ahead)
        self._opened_unchecked = False  # ... and opened before its command was checked
        self._unchecked_rest_until = 0.0  # monotonic; see _open_ahead_of_check
        self._next_poll = 0.0
        self._next_time_save = 0.0
        self._next_state = 0.0
        self._link_written: tuple[Any, ...] | None = None  # the link as the status file has it
        self._link_written_at = 0.0  # monotonic: when the status file was written

        hooks = Hooks(
            report=self.inbox.put_report,
            message=self._message_arrived,
            input=self._input_changed,
            connected=self._republish_state,
        )
        build = ports or (lambda cfg, h: real_ports(cfg, h, pin_factory))
        self.ports = build(config, hooks)
        self.clock = self.ports.clock
        self.store = self.ports.store
        self.outbox = self.ports.outbox
        self.relay = self.ports.relay
        self.inputs = self.ports.inputs
        self.player = self.ports.player
        self.fetcher = self.ports.fetcher
        self.link = self.ports.link
        self.started_mono = self.clock.now().mono
        # Signs every event and state (protocol §14); made by the assembly on the first start.
        self.device_key = self.ports.device_key
        if self.ports.device_key_made:
            self.log.warning("device_key_made", detail="enroll it: receiver enroll --config ...")
        if self.outbox.recovered_from is not None:
            self.log.error("outbox_corrupt_moved_aside", moved_to=str(self.outbox.recovered_from))
        if self.store.recovered_from is not None:
            self.log.error("store_corrupt_moved_aside", moved_to=str(self.store.recovered_from))
        self.pump = OutboxPump(
            self.outbox, self.link, self.topics.events, self.inbox.wake, self.log
        )
        # libVLC's connections live in the media engine's child process: it reports their bytes.
        self.traffic = TrafficMeter(
            lambda: self.link.socket_inode, other_media=getattr(self.player, "media_bytes", None)
        )
        retired = retire_reported_ends(self.store, self.outbox)
        if retired:
            self.log.warning(
                "retired_from_reports",
                refs=",".join(retired),
                why="reported ended before the last stop or crash, whose retiring write did "
                "not follow: they are not carried out again",
            )
        self.state = restore_state(config, self.store)
        # Read by the link's thread; replaced (never changed) by the loop after each step.
        self._key_ids = frozenset(key.id for key in self.state.floors.keyring.keys)
        if self.state.recovered:
            self.log.warning(
                "commands_unfinished_at_start",
                refs=",".join(intent.ref for intent in self.state.recovered),
                why="accepted before the last stop or crash and not carried out to their end: "
                "each is carried out if its window is still open, else reported failed",
            )
        if self.state.floors.reset_floor is None:
            self.log.warning(
                "fresh_store",
                why="new or reset state: commands wait for a synchronised clock, and any "
                "issued before that moment are refused",
            )

    def _message_arrived(self, event: MessageReceived) -> None:
        """From the link's thread: sort the message into the inbox's lanes, and nothing else."""
        dropped = self.inbox.put_message(event, named_key(event.payload, self._key_ids))
        if dropped is not None:
            self.link.ack(dropped)  # shed in a flood: the broker must not keep it in flight

    def _input_changed(self, name: str, active: bool) -> None:
        self.inbox.put_report(LocalInputChanged(name, active))

    # --- life cycle -------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stopping.set()
        self.inbox.wake()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        # A hand-run's terminal going away (SIGHUP) or a Ctrl-\ (SIGQUIT) would otherwise end
        # the daemon on the spot, the amplifier relay left on: each stops it as SIGTERM does.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, handler)

    def run(self) -> None:
        """Run until ``request_stop``; always leaves the relay off and the link closed."""
        watchdog = systemd.watchdog_interval_s()
        try:
            first = machine.boot(self.state, self.clock.now())
            self.state = first.state
            with self.pump.turn():
                self._execute(first.effects)
                self.store.settle()
            self.pump.release_logs()  # the boot's lines come before daemon_started, whatever
            self._publish_due_state(self.clock.now())
            deadline = first.deadline
            for name, active in self.inputs.current():
                self.inbox.put_report(LocalInputChanged(name, active))
            self.pump.send()
            self.link.start()
            self.traffic.start()
            systemd.notify("READY=1")
            self.log.info(
                "daemon_started", version=__version__, groups=",".join(self.config.groups)
            )
            last_ping = -1e9
            while not self._stopping.is_set():
                event = self.inbox.get(self._wait_s(deadline, watchdog))
                if self._stopping.is_set():
                    break
                now = self.clock.now()
                if watchdog is not None and time.monotonic() - last_ping >= watchdog:
                    systemd.notify("WATCHDOG=1")
                    last_ping = time.monotonic()
                if now.mono >= self._next_state or self._link_news(now.mono):
                    self._state_due = None  # this one is newer
                    self._publish_state(machine.state_fields(self.state), now)
                if event is None:
                    event = self._poll_progress(now) or self._timer(now, deadline)
                    if event is None:
                        self._settle_outbox()
                        self._publish_held_state(now)
                        continue
                deadline = self._turn(event, now)
                self._settle_outbox()
        finally:
            self._shutdown()

    def _turn(self, first: Event, now: Instant) -> float | None:
        """Step ``first`` and the events already waiting behind it (a bounded number, up to the
        first whose step reports an outcome); their reports go to disk together, and only then
        are the messages acknowledged."""
        handled: list[MessageReceived] = []
        event: Event | None = first
        deadline: float | None = None
        turns = 0
        start_reported = False
        told = False  # a step of this turn reported an outcome
        with self.pump.turn():
            while event is not None:
                if not handled and isinstance(event, MessageReceived):  # a turn's first only
                    self._open_ahead_of_check(event, now)
                start_reported = start_reported or isinstance(event, START_REPORTS)
                self._note(event, now)
                result = machine.step(self.state, event, now)
                self.state = result.state
                deadline = result.deadline
                self._execute(result.effects, now)
                if isinstance(event, MessageReceived):
                    handled.append(event)
                turns += 1
                if turns >= MAX_EVENTS_PER_TURN or self._stopping.is_set():
                    break
                told = told or _tells_an_outcome(result.effects)
                # After an outcome, written and sent at the turn's end, not after the flood
                # that may wait behind it: only the adapters' reports already waiting join it
                # (a command's cache hit, so its play follows its floors at once).
                event = self.inbox.get_report_nowait() if told else self.inbox.get_nowait()
                if event is None and self._local_play_issued and not start_reported:
                    event = self._await_start_report()
                now = self.clock.now()
            self.store.settle()  # before the turn's reports are sent and its messages acked
        if self._play_issued or (
            not start_reported and self._state_held_until is None and self._start_coming(now)
        ):
            # A play issued, or one due now that waits for its cache hit (the turn of its
            # command ends with the `accepted` report): the state waits for the start report.
            self._state_held_until = now.mono + STATE_HOLD_AFTER_PLAY_S
        elif start_reported:
            self._state_held_until = now.mono + STATE_HOLD_AFTER_START_S
        self._play_issued = self._local_play_issued = False
        if self._opened_ahead and not self._start_coming(now):
            self._opened_ahead = False  # opened for a play that is not coming after all
            if self._opened_unchecked:
                self._unchecked_rest_until = now.mono + UNCHECKED_OPEN_REST_S
            self.player.drop_preroll(ANY_TOKEN)
        self._opened_unchecked = False
        self._publish_held_state(now)
        self._after_turn(now)
        # Handled, its floors and reports on disk: only now may the broker forget it.
        for message in handled:
            self.link.ack(message)
        return deadline

    def _await_start_report(self) -> Event | None:
        """The turn's reports so far are sent now, and the turn waits (at most
        :data:`START_AWAIT_S`) for the start report of the local file it played: committed now,
        the `accepted` of its command would stand between that report and its `started` event
        (one fsync, a millisecond on this disk, more on a card), which are then written in one
        commit. Messages wait meanwhile; any adapter report that comes is taken."""
        self.store.settle()  # the floors on disk before a report leaves
        self.pump.send()
        until = time.monotonic() + START_AWAIT_S
        while not self._stopping.is_set():
            left = until - time.monotonic()
            if left <= 0:
                return None
            report = self.inbox.get_report(left)
            if report is not None:
                return report
        return None

    def _settle_outbox(self) -> None:
        """After a turn: what the broker acknowledged is forgotten, in a durable write of its
        own; not while a play's start report is awaited, nor for a moment after it while the
        `started` event leaves (the hold of the state): that write would stand between them."""
        held = self._state_held_until
        if held is None or self.clock.now().mono >= held:
            self.pump.settle()

    def _wait_s(self, deadline: float | None, watchdog: float | None) -> float:
        """Real seconds to wait: until the core's deadline, a stream poll, or the watchdog."""
        wait = IDLE_WAKE_S if watchdog is None else min(IDLE_WAKE_S, watchdog)
        now = self.clock.now().mono
        if deadline is not None:
            wait = min(wait, (deadline - now) / self.clock.speed)
        if self._streaming():
            wait = min(wait, (self._next_poll - now) / self.clock.speed)
        wait = min(wait, (self._next_state - now) / self.clock.speed)
        if self._state_held_until is not None:  # the due state, the outbox's acks
            wait = min(wait, (self._state_held_until - now) / self.clock.speed)
        return max(0.0, wait)

    def _streaming(self) -> bool:
        item = self.state.playback.active
        return item is not None and item.is_stream and item.phase == "playing"

    def _poll_progress(self, now: Instant) -> Event | None:
        if not self._streaming() or now.mono < self._next_poll:
            return None
        self._next_poll = now.mono + PROGRESS_POLL_S
        active = self.state.playback.active
        token = active.token if active is not None else 0
        return PlaybackProgress(token, self.player.position_ms())

    @staticmethod
    def _timer(now: Instant, deadline: float | None) -> Event | None:
        return TimerFired() if deadline is not None and now.mono >= deadline else None

    def _after_turn(self, now: Instant) -> None:
        key_ids = frozenset(key.id for key in self.state.floors.keyring.keys)
        if key_ids != self._key_ids:
            self._key_ids = key_ids
        needed = machine.needed_media(self.state)
        if needed != self._protected:
            self._protected = needed
            self.fetcher.set_protected(needed)
        if now.utc_trusted and now.mono >= self._next_time_save:
            self._next_time_save = now.mono + TIME_FLOOR_SAVE_S
            self.store.save_time_floor(now.utc)

    def _save_time_floor_at_stop(self) -> None:
        """The newest trusted time, once more as the daemon stops (a reboot, an upgrade)."""
        now = self.clock.now()
        if not now.utc_trusted:
            return
        try:
            self.store.save_time_floor(now.utc)
        except Exception as exc:  # shutting down: report and go on
            self.log.error("time_floor_save_failed", error=str(exc))

    def _shutdown(self) -> None:
        systemd.notify("STOPPING=1")
        self.pump.release_logs()
        for name, close in self.ports.closers():
            try:
                close()
            except Exception as exc:  # shutting down: report and go on
                self.log.error("close_failed", part=name, error=str(exc))
        self.log.info("relay_switched", on=False, why="shutdown")
        last_word = offline_payload(self.config.device_id, self.device_key, self.config.groups)
        self.link.stop(self.topics.state, last_word)
        self.traffic.stop()
        try:  # so that `receiver status` says the daemon stopped, and when
            offline = {
                "device": self.config.device_id,
                "online": False,
                "ts": rfc3339(self.clock.now().utc),
            }
            write_status(self.config.storage.state_dir, _json(offline))
        except OSError as exc:
            self.log.error("status_write_failed", error=str(exc))
        self.pump.settle()
        self._save_time_floor_at_stop()
        self.outbox.close()
        self.store.close()
        self.log.info("daemon_stopped")

    # --- events in ------------------------------------------------------------------------

    def _note(self, event: Event, now: Instant) -> None:
        if isinstance(event, MessageReceived):
            self.log.debug("message", topic=event.topic, size=len(event.payload))
        elif isinstance(event, LinkChanged):
            systemd.notify(f"STATUS=broker {'connected' if event.up else 'disconnected'}")
            if event.up:
                self.log.info("broker_connected")
                self._publish_state(machine.state_fields(self.state), now)  # link: up
            else:
                self.log.warning("broker_disconnected", why=self.link.last_error or "unknown")
        elif isinstance(event, LocalInputChanged):
            self.log.info("local_input", input=event.name, active=event.active)
        dropped = self.inbox.take_dropped()
        if dropped:
            self.log.warning("inbound_messages_dropped", count=dropped)

    # --- effects out ----------------------------------------------------------------------

    def _execute(self, effects: tuple[Effect, ...], now: Instant | None = None) -> None:
        now = now or self.clock.now()
        self._open_ahead(effects, now)
        for effect in effects:
            # No try around storing: if the store cannot record a floor, the action it would
            # allow must not happen, so the error stops the daemon (and systemd restarts it).
            if self._persist(effect):
                continue
            if not isinstance(effect, WITHOUT_FLOORS):
                self.store.settle()  # the floors on disk before what they allow
            try:
                self._execute_one(effect, now)
            except ReceiverError as exc:  # an adapter's expected failure: report, go on
                self.log.error("effect_failed", effect=type(effect).__name__, error=str(exc))
                if isinstance(effect, Play):
                    self.inbox.put_report(PlaybackFailed(effect.token, str(exc)))
            except Exception as exc:  # a bug: with its traceback, and the loop still goes on
                self.log.exception("effect_bug", effect=type(effect).__name__, error=repr(exc))
                if isinstance(effect, Play):
                    self.inbox.put_report(PlaybackFailed(effect.token, type(effect).__name__))

    def _open_ahead(self, effects: tuple[Effect, ...], now: Instant) -> None:
        """Open a file paused before the durable writes that must precede its sound, so that
        libVLC opens it while they go to disk, and the ``Play`` after them only resumes it:

        * a file that starts in this step behind writes (a command's first sound: the reports
          before its started mark, the mark), under its token;
        * a command's file found in the cache while the player is idle and the command due now
          (its floors and intent are written in this step, its started mark in the one that
          starts it: the cache hit's, or after the amplifier's warm-up), under
          :data:`ANY_TOKEN`: its ``Play`` adopts it; once no play is on its way
          (:meth:`_start_coming`), a turn that has not seen that play drops it.

        The write-ahead still comes before the action: a file opened paused makes no sound and
        nothing a restart could see, and the ``Play`` still comes after the writes. Nothing
        here waits for the player (a failure to open shows at the play, which then opens the
        file itself)."""
        behind_writes = False
        for effect in effects:
            if isinstance(effect, PERSIST_EFFECTS):
                behind_writes = True
            elif isinstance(effect, Play):
                local = effect.at_mono is None and not effect.live and "://" not in effect.media
                if behind_writes and local and not self._opened_ahead:
                    self._preroll_ahead(effect.token, effect.media, effect.start_ms)
                return
            elif isinstance(effect, Fetch) and self._player_idle() and not self._opened_ahead:
                due = any(
                    item.not_before_mono <= now.mono
                    and any(f.sha256 == effect.sha256 for f in item.files)
                    for item in self.state.playback.queue
                )
                path = self.fetcher.cached_path(effect.sha256) if due else None
                if path is not None:
                    self._opened_ahead = self._preroll_ahead(ANY_TOKEN, str(path), 0)

    def _open_ahead_of_check(self, message: MessageReceived, now: Instant) -> None:
        """Open the cached file that a play command names, paused, as soon as the loop takes
        the command and before the core checks it (parsing, signatures, floors: about a
        millisecond), so that libVLC's open (a few) starts that much sooner. The command is
        read without any check: this only guesses which file its play will resume. Opening
        paused makes no sound, and nothing plays before the command is checked and its writes
        are on disk; a file opened for a command that is refused (or not due now) is let go
        at the turn's end, and then nothing is opened so for a while
        (:data:`UNCHECKED_OPEN_REST_S`), so a flood of refused plays costs libVLC little. Only
        a turn's first message is read so: a flood costs one read a turn."""
        if self._opened_ahead or now.mono < self._unchecked_rest_until:
            return
        if message.retained or not message.topic.endswith("/cmd") or not self._player_idle():
            return
        sha256 = _file_named_by_play(message.payload)
        path = None if sha256 is None else self.fetcher.cached_path(sha256)
        if path is not None:
            self._opened_ahead = self._preroll_ahead(ANY_TOKEN, str(path), 0)
            self._opened_unchecked = self._opened_ahead

    def _start_coming(self, now: Instant) -> bool:
        """Whether a play is on its way: an item warming up, or, with none active, one due now
        (waiting for its cache hit to come back)."""
        playback = self.state.playback
        if playback.active is not None:
            return playback.active.phase == "warming"
        return any(item.not_before_mono <= now.mono for item in playback.queue)

    def _player_idle(self) -> bool:
        """Nothing sounds or waits in the player: no active item, no file prerolled."""
        playback = self.state.playback
        return playback.active is None and not any(i.preroll_token for i in playback.queue)

    def _preroll_ahead(self, token: int, media: str, start_ms: int) -> bool:
        try:  # at volume 0: the play sets its own
            self.player.preroll(token, media, 0, start_ms)
        except (ReceiverError, ValueError) as exc:  # the play opens it itself
            self.log.warning("open_ahead_failed", token=token, error=str(exc))
            return False
        return True

    def _persist(self, effect: Effect) -> bool:
        if isinstance(effect, PERSIST_EFFECTS) and not isinstance(effect, PersistIntentStarted):
            # The store's writes keep the core's order with the reports before them: a report
            # is on disk before the write that retires what it reports (an intent, a done mark).
            # The started mark retires nothing (the intent stays until the item ends), so the
            # `accepted` of a command goes to disk after its play, while libVLC starts it: a
            # crash in between finds the intent marked started and reports it `failed`, and the
            # broker's copy of the command (not acknowledged yet) is answered `accepted`.
            # And the floors before the reports they admit: settled first.
            self.store.settle()
            self.pump.commit()
        match effect:
            case PersistFloors(floors=floors, time_floor=time_floor, intent=intent):
                # Its commit (the flush to the card) runs while the loop signs the report and
                # finds the file; every action, report commit and turn's end after it waits for
                # it (Store.settle in _execute, above in _persist, and in _turn).
                self.store.save_floors(floors, time_floor, intent, wait=False)
            case PersistIntentStarted(ref=ref):
                self.store.mark_intent_started(ref)
            case PersistIntentDone(ref=ref):
                self.store.forget_intent(ref)
            case PersistTrust(version=version, body=body, digest=digest):
                self.store.save_trust(version, body, digest)
                self.log.warning("trust_replaced", version=version)
            case PersistResetFloor(utc=utc):
                self.store.save_reset_floor(utc)
                self.log.info("reset_floor_set", utc=rfc3339(utc))
            case PersistSchedule(schedule_id=sid, version=version, body=body, digest=digest):
                self.store.save_schedule(sid, version, body, digest)
                self.log.info("schedule_in_force", schedule=sid, version=version)
            case PersistDone(key=key):
                self.store.save_done(key)
            case _:
                return False
        return True

    def _execute_one(self, effect: Effect, now: Instant) -> None:
        match effect:
            case Fetch(url=url, sha256=sha256, size=size):
                self.fetcher.fetch(url, sha256, size)
            case Play(
                token=token,
                media=media,
                volume=volume,
                start_ms=start_ms,
                live=live,
                at_mono=at_mono,
            ):
                self._opened_ahead = False  # adopted or replaced
                at = None if at_mono is None else self._monotonic_at(at_mono, now)
                if at is None:
                    self._play_issued = True  # else its start report is a while away
                    self._local_play_issued = not live and "://" not in media
                    self.pump.hold_logs()  # until the start is reported (as the state waits)
                self.player.play(token, media, volume, start_ms, live=live, at=at)
                self._log_action(
                    "play",
                    token=token,
                    media=media,
                    volume=volume,
                    start_ms=start_ms,
                    mono=round(now.mono, 3),
                    **({} if at is None else {"at": round(at, 6)}),
                )
                name = Path(media).name
                if len(name) == SHA256_HEX_CHARS:  # a cached file: keep it fresh in the LRU
                    self.fetcher.touch(name)
            case Preroll(token=token, media=media, volume=volume, start_ms=start_ms):
                self._opened_ahead = False  # replaced
                self.player.preroll(token, media, volume, start_ms)
                self._log_action("preroll", token=token, media=media, mono=round(now.mono, 3))
            case DropPreroll(token=token):
                self.player.drop_preroll(token)
            case StopPlayback():
                self._opened_ahead = False  # let go
                self.player.stop()
            case SetVolume(level=level):
                self.player.set_volume(level)
            case SwitchRelay(on=on):
                self.relay.switch(on)
                self._log_action("relay_switched", on=on, mono=round(now.mono, 3))
            case Emit():
                self._emit(effect, now)
            case PublishState(fields=fields):
                # Published once the turn's events are sent (a state never overtakes the
                # events that led to it), only the newest, and after a Play once its start is
                # reported (STATE_HOLD_AFTER_PLAY_S).
                self._state_due = fields

    def _log_action(self, what: str, **fields: Any) -> None:
        """Logged with the turn's events, after them (:meth:`OutboxPump.log_action`)."""
        self.pump.log_action(self.log.info, what, **fields)

    def _monotonic_at(self, mono: float, now: Instant) -> float:
        """The core's instant ``mono`` on ``time.monotonic()``, which the player's child process
        shares (the same unless a test clock runs faster than real time)."""
        if self.clock.speed == 1.0:
            return mono
        return time.monotonic() + (mono - now.mono) / self.clock.speed

    def _emit(self, effect: Emit, now: Instant) -> None:
        event: dict[str, Any] = {
            "device": self.config.device_id,
            "n": self.store.next_event_number(),
            "ts": rfc3339(now.utc),
            "kind": effect.kind,
        }
        if effect.ref is not None:
            event["ref"] = effect.ref
        if effect.reason is not None:
            event["reason"] = effect.reason
        if effect.detail:
            event["detail"] = effect.detail[:MAX_DETAIL_CHARS]
        payload = seal_report(self.device_key, EVENT_TYPE, _json(event))
        # On disk first (when the turn ends), and only then logged: a log line never names an
        # event that a power cut could lose. It leaves the outbox when the broker has it.
        log = self.log.warning if effect.kind in ("rejected", "failed", "fault") else self.log.info
        extra = {k: v for k, v in (("ref", effect.ref), ("reason", effect.reason)) if v}
        self.pump.add(
            event["n"],
            payload,
            log,
            effect.kind,
            n=event["n"],
            detail=bounded(effect.detail or ""),
            mono=round(now.mono, 3),
            **extra,
        )

    def _publish_due_state(self, now: Instant) -> None:
        fields, self._state_due = self._state_due, None
        if fields is not None:
            self._publish_state(fields, now)

    def _publish_held_state(self, now: Instant) -> None:
        """The due state, unless a Play's start report is still awaited (for a short while)."""
        if self._state_held_until is not None and now.mono < self._state_held_until:
            return
        self._state_held_until = None
        self.pump.release_logs()
        self._publish_due_state(now)

    def _publish_state(self, fields: dict[str, Any], now: Instant) -> None:
        usage = self.fetcher.usage()
        state: dict[str, Any] = {
            "device": self.config.device_id,
            "online": True,
            "ts": rfc3339(now.utc),
            "sw": __version__,
            "groups": list(self.config.groups),
            **fields,
            "clock_synced": now.utc_trusted,
            "cache": {
                "bytes": usage.bytes,
                "files": usage.files,
                "missing": self.fetcher.missing(machine.needed_media(self.state)),
            },
            "uptime_s": int(now.mono - self.started_mono),
            "link": self._link_status(),
            "outbox": {"pending": len(self.outbox), "dropped": self.outbox.dropped_total},
            "health": read_health(
                self.config.storage.state_dir,
                self.config.storage.cache_dir,
                traffic=self.traffic,
            ),
        }
        if "playing" in state:
            state["playing"] = {**state["playing"], "since": rfc3339(state["playing"]["since"])}
        body = _json(state)
        self._state_payload = seal_report(self.device_key, STATE_TYPE, body)
        self._next_state = now.mono + STATE_EVERY_S
        try:
            write_status(self.config.storage.state_dir, self._status_file(state, now))
        except OSError as exc:
            self.log.error("status_write_failed", error=str(exc))
        if self.link.connected:
            # Offline, only the newest state matters: it is sent on reconnect, and queueing a
            # day of states would crowd out the events.
            self.link.publish(self.topics.state, self._state_payload, retain=True)

    def _link_status(self) -> dict[str, Any]:
        status = self.link.status
        return {
            "up": status["up"],
            "last_error": status["last_error"],
            "reconnects": status["reconnects"],
            "broker": status["broker"],
        }

    def _link_news(self, mono: float) -> bool:
        """Whether the link changed since the status file was written: a new reason (the link
        went down, or fails otherwise) at once, so ``receiver status`` says why without waiting
        for the next minute's state; more failed attempts for the same reason (or its wording
        with another broker's address) at most every :data:`LINK_NEWS_EVERY_S`, for a link
        retried every second or two would otherwise rewrite the file at each attempt."""
        if self.link.connected:  # the connect publishes a state itself (and: every turn's cost)
            return False
        status = self.link.status
        seen = (status["up"], status["last_error"], status.get("attempts"), status.get("cause"))
        written = self._link_written
        if written is None or (seen[0], seen[3]) != (written[0], written[3]):
            return True
        return seen != written and mono >= self._link_written_at + LINK_NEWS_EVERY_S

    def _status_file(self, state: dict[str, Any], now: Instant) -> bytes:
        """The state as published, plus what only the board's technician needs about the link:
        since when it is in its state, how many attempts failed since it was last up, and why
        in a word (``cause``) that ``receiver status`` says in the technician's language."""
        status = self.link.status
        self._link_written = (
            status["up"],
            status["last_error"],
            status.get("attempts"),
            status.get("cause"),
        )
        self._link_written_at = now.mono
        link = dict(state["link"])
        since = status.get("since")
        if since is not None:  # monotonic: as a wall-clock time, as of this state
            link["since"] = rfc3339(now.utc - max(0.0, time.monotonic() - since))
        for name in ("attempts", "cause"):
            if name in status:
                link[name] = status[name]
        return _json({**state, "link": link})

    def _republish_state(self) -> None:
        """From the link's thread after each connect: the last state, marked online."""
        payload = self._state_payload
        if payload is not None:
            self.link.publish(self.topics.state, payload, retain=True)


def _tells_an_outcome(effects: tuple[Effect, ...]) -> bool:
    """Whether a step reported something someone waits for (``accepted``, ``started``, ...):
    its turn ends there. Refusals, what a flood is made of, stay grouped in one write."""
    return any(isinstance(effect, Emit) and effect.kind != "rejected" for effect in effects)


def _file_named_by_play(raw: bytes) -> str | None:
    """The sha256 of the first file that a ``play`` command's envelope names, for a play due
    at once (no ``start_at``); None for anything else. Read the cheap way, without checking
    anything (see :meth:`Runtime._open_ahead_of_check`): a guess, never a decision."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        payload = json.loads(base64.b64decode(json.loads(raw)["payload"], validate=True))
        if payload["type"] != "play" or "start_at" in payload["body"]:
            return None
        sha256 = payload["body"]["source"]["files"][0]["sha256"]
    except Exception:  # junk of any shape (too deep, not an object, ...) names no file
        return None
    return sha256 if isinstance(sha256, str) else None


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def run_forever(config: Config, on_ready: Callable[[Runtime], None] | None = None) -> None:
    # libVLC's and paho's threads hand their news to the loop through the interpreter lock; a
    # thread waiting for it gets it after at most this long (Python's default is 5 ms, more
    # than the whole start of a sound).
    sys.setswitchinterval(GIL_SWITCH_S)
    runtime = Runtime(config)
    runtime.install_signal_handlers()
    if on_ready is not None:
        on_ready(runtime)
    runtime.run()
