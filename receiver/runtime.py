"""The loop: one thread that owns every decision and every call into VLC, GPIO and the store.

Adapters call back on their own threads and only drop plain events into the inbox. The loop
takes one event at a time, asks the core what to do (``machine.step``), and carries out the
effects in order. It feeds the systemd watchdog only while it turns.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from receiver import __version__, systemd
from receiver.clock import SystemClock
from receiver.config_model import Config
from receiver.core import machine
from receiver.core.clock import Instant
from receiver.core.effects import (
    Effect,
    Emit,
    Fetch,
    PersistFloors,
    PersistResetFloor,
    PersistTrust,
    Play,
    PublishState,
    SetVolume,
    StopPlayback,
    SwitchRelay,
)
from receiver.core.events import Event, LinkChanged, MessageReceived, PlaybackFailed, TimerFired
from receiver.core.reasons import Rejection
from receiver.core.strict_json import StrictJsonError, loads_strict
from receiver.core.trust import Keyring, key_from_config
from receiver.core.trustdoc import parse_trust
from receiver.fetcher import Fetcher
from receiver.gpio import AmpRelay, make_pin_factory
from receiver.inbox import Inbox
from receiver.logs import bounded
from receiver.mqtt_client import MqttLink, Subscription
from receiver.player import Player
from receiver.signing import rfc3339
from receiver.store import Store

IDLE_WAKE_S = 5.0  # the loop turns at least this often, so the watchdog sees it alive
MAX_DETAIL_CHARS = 200


def keyring_from_config(config: Config) -> Keyring:
    """The first keyring (version 0): the keys the technician put in the config."""
    keys = tuple(
        key_from_config(k.id, k.ed25519, k.roles, k.scopes, k.not_after) for k in config.trust.keys
    )
    return Keyring(keys, dict(config.trust.thresholds), version=0)


def settings_from_config(config: Config) -> machine.Settings:
    return machine.Settings(
        device_id=config.device_id,
        env=config.env,
        groups=config.groups,
        topic_prefix=config.broker.topic_prefix,
        default_volume=config.player.default_volume,
        max_volume=config.player.max_volume,
        max_play_duration_s=config.player.max_play_duration_s,
        warm_up_s=config.gpio.warm_up_s,
        tail_s=config.gpio.tail_s,
        allowed_schemes=config.media.allowed_schemes,
        allowed_hosts=config.media.allowed_hosts,
        max_skew_s=float(config.clock.max_skew_s),
        max_command_age_s=float(config.clock.max_command_age_s),
    )


class Topics:
    def __init__(self, prefix: str, device_id: str) -> None:
        self.device_cmd = f"{prefix}/dev/{device_id}/cmd"
        self.state = f"{prefix}/dev/{device_id}/state"
        self.trust = f"{prefix}/trust"
        self.events = f"{prefix}/dev/{device_id}/events"
        self.prefix = prefix

    def group_cmd(self, group: str) -> str:
        return f"{self.prefix}/grp/{group}/cmd"


class Runtime:
    def __init__(self, config: Config, pin_factory: Any = None) -> None:
        self.config = config
        self.log = structlog.get_logger("receiver").bind(device=config.device_id)
        self.clock = SystemClock(config.clock.trust_system_clock)
        self.inbox = Inbox()
        self.topics = Topics(config.broker.topic_prefix, config.device_id)
        self.started_mono = time.monotonic()
        self._stopping = threading.Event()
        self._state_payload: bytes | None = None
        self._link_up = False

        self.store = Store(config.storage.state_dir)
        if self.store.recovered_from is not None:
            self.log.error("store_corrupt_moved_aside", moved_to=str(self.store.recovered_from))
        self.relay = AmpRelay(config.gpio, pin_factory or make_pin_factory(config.gpio.pin_factory))
        self.player = Player(config.player, self.inbox.put_report)
        self.fetcher = Fetcher(config.media, config.storage.cache_dir, self.inbox.put_report)
        subscriptions = (
            [Subscription(self.topics.device_cmd, ignore_retained=True)]
            + [Subscription(self.topics.group_cmd(g), ignore_retained=True) for g in config.groups]
            + [Subscription(self.topics.trust, ignore_retained=False)]
        )
        self.link = MqttLink(
            config.broker,
            config.device_id,
            subscriptions,
            will_topic=self.topics.state,
            will_payload=self._offline_payload(),
            on_message=self.inbox.put_message,
            on_link=self.inbox.put_report,
            on_connected_publish=self._republish_state,
        )
        keyring, trust_digest = self._keyring()
        self.state = machine.initial_state(
            settings_from_config(config),
            keyring,
            floors=self.store.floors(),
            time_floor=self.store.time_floor(),
            reset_floor=self.store.reset_floor(),
            trust_digest=trust_digest,
        )
        if self.state.reset_floor is None:
            self.log.warning(
                "fresh_store",
                why="new or reset state: commands wait for a synchronised clock, and any "
                "issued before that moment are refused",
            )

    def _keyring(self) -> tuple[Keyring, str]:
        """The stored trust document's keyring if one was accepted, else the config's."""
        stored = self.store.trust()
        if stored is not None:
            version, body, digest = stored
            try:
                return parse_trust(loads_strict(body)).keyring, digest
            except (Rejection, StrictJsonError) as exc:
                self.log.error("stored_trust_unreadable", version=version, error=str(exc))
        return keyring_from_config(self.config), ""

    # --- life cycle -------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stopping.set()
        self.inbox.wake()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        """Run until ``request_stop``; always leaves the relay off and the link closed."""
        watchdog = systemd.watchdog_interval_s()
        try:
            first = machine.boot(self.state, self.clock.now())
            self.state = first.state
            self._execute(first.effects)
            deadline = first.deadline
            self.link.start()
            systemd.notify("READY=1")
            self.log.info(
                "daemon_started", version=__version__, groups=",".join(self.config.groups)
            )
            last_ping = 0.0
            while not self._stopping.is_set():
                now_mono = time.monotonic()
                wait = IDLE_WAKE_S if watchdog is None else min(IDLE_WAKE_S, watchdog)
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - now_mono))
                event = self.inbox.get(wait)
                if self._stopping.is_set():
                    break
                now = self.clock.now()
                if watchdog is not None and now.mono - last_ping >= watchdog:
                    systemd.notify("WATCHDOG=1")
                    last_ping = now.mono
                if event is None:
                    if deadline is None or now.mono < deadline:
                        continue
                    event = TimerFired()
                self._note(event)
                result = machine.step(self.state, event, now)
                self.state = result.state
                deadline = result.deadline
                self._execute(result.effects, now)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        systemd.notify("STOPPING=1")
        for name, close in (
            ("player", self.player.close),
            ("relay", self.relay.close),
            ("fetcher", self.fetcher.close),
        ):
            try:
                close()
            except Exception as exc:
                self.log.error("close_failed", part=name, error=str(exc))
        self.log.info("relay_switched", on=False, why="shutdown")
        self.link.stop(self.topics.state, self._offline_payload())
        self.store.close()
        self.log.info("daemon_stopped")

    # --- events in ------------------------------------------------------------------------

    def _note(self, event: Event) -> None:
        if isinstance(event, MessageReceived):
            self.log.debug("message", topic=event.topic, size=len(event.payload))
        elif isinstance(event, LinkChanged):
            self._link_up = event.up
            systemd.notify(f"STATUS=broker {'connected' if event.up else 'disconnected'}")
            if event.up:
                self.log.info("broker_connected")
            else:
                self.log.warning("broker_disconnected", why=self.link.last_error or "unknown")
        if self.inbox.dropped:
            self.log.warning("inbound_messages_dropped", count=self.inbox.dropped)
            self.inbox.dropped = 0

    # --- effects out ----------------------------------------------------------------------

    def _execute(self, effects: tuple[Effect, ...], now: Instant | None = None) -> None:
        now = now or self.clock.now()
        for effect in effects:
            # No try around the Persist effects: if the store cannot record a floor, the action
            # it would allow must not happen, so the error stops the daemon (systemd restarts).
            if isinstance(effect, PersistFloors):
                self.store.save_floors(effect.floors, effect.time_floor)
                continue
            if isinstance(effect, PersistTrust):
                self.store.save_trust(effect.version, effect.body, effect.digest)
                self.log.warning("trust_replaced", version=effect.version)
                continue
            if isinstance(effect, PersistResetFloor):
                self.store.save_reset_floor(effect.utc)
                self.log.info("reset_floor_set", utc=rfc3339(effect.utc))
                continue
            try:
                self._execute_one(effect, now)
            except Exception as exc:
                self.log.error("effect_failed", effect=type(effect).__name__, error=str(exc))
                if isinstance(effect, Play):
                    self.inbox.put_report(PlaybackFailed(effect.token, str(exc)))

    def _execute_one(self, effect: Effect, now: Instant) -> None:
        match effect:
            case Fetch(url=url, sha256=sha256, size=size):
                self.fetcher.fetch(url, sha256, size)
            case Play(token=token, media=media, volume=volume):
                self.log.info("play", token=token, media=media, volume=volume)
                self.player.play(token, media, volume)
            case StopPlayback():
                self.player.stop()
            case SetVolume(level=level):
                self.player.set_volume(level)
            case SwitchRelay(on=on):
                self.relay.switch(on)
                self.log.info("relay_switched", on=on, mono=round(now.mono, 3))
            case Emit():
                self._emit(effect, now)
            case PublishState(fields=fields):
                self._publish_state(fields, now)

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
        log = self.log.warning if effect.kind in ("rejected", "failed") else self.log.info
        extra = {k: v for k, v in (("ref", effect.ref), ("reason", effect.reason)) if v}
        log(
            effect.kind,
            n=event["n"],
            detail=bounded(effect.detail or ""),
            mono=round(now.mono, 3),
            **extra,
        )
        self.link.publish(self.topics.events, _json(event))

    def _publish_state(self, fields: dict[str, Any], now: Instant) -> None:
        state: dict[str, Any] = {
            "device": self.config.device_id,
            "online": True,
            "ts": rfc3339(now.utc),
            "sw": __version__,
            **fields,
            "schedules": {},
            "clock_synced": now.utc_trusted,
            "cache": _cache_summary(self.config.storage.cache_dir),
            "uptime_s": int(now.mono - self.started_mono),
        }
        if "playing" in state:
            state["playing"] = {**state["playing"], "since": rfc3339(state["playing"]["since"])}
        self._state_payload = _json(state)
        self.link.publish(self.topics.state, self._state_payload, retain=True)

    def _republish_state(self) -> None:
        """From the link's thread after each connect: the last state, marked online."""
        payload = self._state_payload
        if payload is not None:
            self.link.publish(self.topics.state, payload, retain=True)

    def _offline_payload(self) -> bytes:
        return _json({"device": self.config.device_id, "online": False})


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _cache_summary(cache_dir: Path) -> dict[str, int]:
    files = 0
    size = 0
    try:
        with os.scandir(cache_dir) as entries:
            for entry in entries:
                if entry.is_file() and len(entry.name) == 64:
                    files += 1
                    size += entry.stat().st_size
    except OSError:
        pass
    return {"bytes": size, "files": files, "missing": 0}


def run_forever(config: Config, on_ready: Callable[[Runtime], None] | None = None) -> None:
    runtime = Runtime(config)
    runtime.install_signal_handlers()
    if on_ready is not None:
        on_ready(runtime)
    runtime.run()
