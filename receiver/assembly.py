"""From the config to what the loop needs: the real adapters behind the ports, the core's
settings, the first keyring, topics, and the state restored from the store."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, Final

import structlog

from receiver.config_model import Config
from receiver.core import machine
from receiver.core.admission import schedule_still_authorised, stored_schedule
from receiver.core.reasons import Rejection
from receiver.core.record import record
from receiver.core.schedule import Schedule
from receiver.core.strict_json import StrictJsonError, loads_strict
from receiver.core.trust import Keyring, key_from_config
from receiver.core.trustdoc import parse_trust
from receiver.device_key import STATE_TYPE, DeviceKey, load_or_create_device_key, seal_report
from receiver.ports import Hooks, Ports
from receiver.ports import Outbox as OutboxPort
from receiver.ports import Store as StorePort

if TYPE_CHECKING:
    from collections.abc import Sequence

    from receiver.mqtt_client import Subscription

MAX_PACKET_BYTES: Final = 32 * 1024  # commands are capped at 16 KiB; the broker sends no more


def real_ports(config: Config, hooks: Hooks, pin_factory: Any = None) -> Ports:
    """The real adapters, built from the config: SQLite, gpiozero, libVLC, HTTP, paho."""
    # Imported here: libVLC, gpiozero and paho are loaded only by a daemon that runs.
    from receiver.clock import make_clock
    from receiver.fetcher import Fetcher
    from receiver.gpio import AmpRelay, LocalInputs, make_pin_factory
    from receiver.mqtt_client import MqttLink
    from receiver.outbox import Outbox
    from receiver.player_process import ProcessPlayer
    from receiver.store import Store

    topics = Topics(config.broker.topic_prefix, config.device_id)
    store = Store(config.storage.state_dir)
    device_key, made = load_or_create_device_key(config.storage.state_dir, config.device_id)
    factory = pin_factory or make_pin_factory(config.gpio.pin_factory)
    return Ports(
        device_key=device_key,
        device_key_made=made,
        clock=make_clock(config.clock.trust_system_clock),
        store=store,
        outbox=Outbox(config.storage.state_dir / "outbox.db"),
        relay=AmpRelay(config.gpio, factory),
        inputs=LocalInputs(config.gpio, factory, hooks.input),
        # libVLC runs in a supervised child process: no stream can take the daemon down.
        player=ProcessPlayer(
            config.player,
            hooks.report,
            media=config.media,
        ),
        fetcher=Fetcher(config.media, config.storage.cache_dir, hooks.report),
        link=MqttLink(
            config.broker,
            config.device_id,
            topics.subscriptions(config.groups),
            will_topic=topics.state,
            will_payload=offline_payload(config.device_id, device_key, config.groups),
            on_message=hooks.message,
            max_packet_size=MAX_PACKET_BYTES,
            manual_ack=True,
            on_link=hooks.report,
            on_connected_publish=hooks.connected,
        ),
    )


def offline_payload(device_id: str, device_key: DeviceKey, groups: Sequence[str]) -> bytes:
    """The retained state of a device that is not running (the will, and the last word), signed
    with the device's key like every report. It lists the device's groups (fixed by its config
    for as long as the daemon runs): a group whose boards are all off is not a mistyped one."""
    offline = {"device": device_id, "online": False, "groups": list(groups)}
    body = json.dumps(offline, separators=(",", ":")).encode()
    return seal_report(device_key, STATE_TYPE, body)


def keyring_from_config(config: Config) -> Keyring:
    """The first keyring (version 0): the keys the technician put in the config."""
    keys = tuple(
        key_from_config(k.id, k.ed25519, k.roles, k.scopes, k.not_after) for k in config.trust.keys
    )
    return Keyring(keys, dict(config.trust.thresholds), version=0)


def settings_from_config(config: Config) -> machine.Settings:
    policy = config.policy
    return machine.Settings(
        device_id=config.device_id,
        env=config.env,
        groups=config.groups,
        topic_prefix=config.broker.topic_prefix,
        default_volume=config.player.default_volume,
        max_volume=config.player.max_volume,
        emergency_volume=policy.emergency_volume,
        max_play_duration_s=config.player.max_play_duration_s,
        warm_up_s=config.gpio.warm_up_s,
        tail_s=config.gpio.tail_s,
        relay_max_toggles_per_min=policy.relay_max_toggles_per_min,
        allowed_schemes=config.media.allowed_schemes,
        allowed_hosts=config.media.allowed_hosts,
        max_skew_s=float(config.clock.max_skew_s),
        max_command_age_s=float(config.clock.max_command_age_s),
        sync_grace_s=float(config.clock.sync_grace_s),
        max_file_bytes=config.media.max_file_bytes,
        timezone=policy.timezone,
        quiet_hours=policy.quiet_hours,
        late_join_s=policy.late_join_s,
        stall_timeout_s=config.player.stall_timeout_s,
        stream_max_restarts=config.player.stream_max_restarts,
        stream_healthy_s=config.player.stream_healthy_s,
        fallback_file=str(config.player.fallback_file) if config.player.fallback_file else None,
        rejections_per_window=policy.rejections_per_window,
        rejection_window_s=policy.rejection_window_s,
    )


@record
class Topics:
    prefix: str
    device_id: str

    @property
    def device_cmd(self) -> str:
        return f"{self.prefix}/dev/{self.device_id}/cmd"

    @property
    def state(self) -> str:
        return f"{self.prefix}/dev/{self.device_id}/state"

    @property
    def events(self) -> str:
        return f"{self.prefix}/dev/{self.device_id}/events"

    @property
    def trust(self) -> str:
        return f"{self.prefix}/trust"

    def group_cmd(self, group: str) -> str:
        return f"{self.prefix}/grp/{group}/cmd"

    def group_schedule(self, group: str) -> str:
        return f"{self.prefix}/grp/{group}/schedule"

    def subscriptions(self, groups: tuple[str, ...]) -> list[Subscription]:
        from receiver.mqtt_client import Subscription  # paho: only for a daemon that runs

        """Commands never from retained messages; schedules and trust are retained on purpose."""
        return [
            Subscription(self.device_cmd, ignore_retained=True),
            *(Subscription(self.group_cmd(g), ignore_retained=True) for g in groups),
            *(Subscription(self.group_schedule(g), ignore_retained=False) for g in groups),
            Subscription(self.trust, ignore_retained=False),
        ]


# The kinds that end an item for good (``preempted`` waits to resume; ``fault`` ends nothing).
ENDING_KINDS: Final = frozenset({"finished", "stopped", "failed"})


def retire_reported_ends(store: StorePort, outbox: OutboxPort) -> list[str]:
    """At start, before the state is restored: retire what a report still in the outbox says
    has ended, and return those refs.

    The core writes a report before the write that retires what it reports (the intent of a
    command, the done mark of a programme's occurrence), in two commits to two files: a crash
    between them must cost neither the report nor the retiring. Without this, a crash there
    left the occurrence to play again after the restart, and the intent to be reported
    ``failed`` after its ``finished``. A report leaves the outbox only once the broker has it,
    which is after its retiring write: so what is not retired here was retired already.
    """
    ended: list[str] = []
    for _n, payload in outbox.pending():
        try:
            body = json.loads(base64.b64decode(json.loads(payload)["payload"]))
            kind, ref = body["kind"], body["ref"]
        except (ValueError, KeyError, TypeError):  # not ours to judge: the link sends it as is
            continue
        if kind in ENDING_KINDS and isinstance(ref, str) and ref not in ended:
            ended.append(ref)
    retired = []
    open_intents = {intent.ref for intent in store.intents()}
    done = store.done()
    for ref in ended:
        if ref in open_intents:
            store.forget_intent(ref)
            retired.append(ref)
        elif ref.count("/") == 2 and ref not in done:  # a programme's occurrence: sid/entry/date
            store.save_done(ref)
            retired.append(ref)
    return retired


def restore_state(config: Config, store: StorePort) -> machine.State:
    """The core's state after a restart: floors, keyring, schedules and done occurrences."""
    log = structlog.get_logger("receiver").bind(device=config.device_id)
    keyring, trust_digest = keyring_from_config(config), ""
    stored_trust = store.trust()
    if stored_trust is not None:
        version, body, digest = stored_trust
        try:
            keyring, trust_digest = parse_trust(loads_strict(body)).keyring, digest
        except (Rejection, StrictJsonError) as exc:
            # Fail closed: going back to the config's keys could re-trust a key that a
            # rotation removed. Nothing is trusted until the state directory is cleared.
            keyring = Keyring((), version=version)
            log.error(
                "stored_trust_unreadable",
                version=version,
                error=str(exc),
                action="no key is trusted; clear the state directory to start over",
            )
    schedules: dict[str, tuple[Schedule, str]] = {}
    stored_schedules: dict[str, bytes] = {}
    for schedule_id, (version, body, digest) in store.schedules().items():
        try:
            schedule, envelope = stored_schedule(body)
        except (Rejection, StrictJsonError) as exc:
            log.error(
                "stored_schedule_unreadable", schedule=schedule_id, version=version, error=str(exc)
            )
            continue
        # Judged again by the keyring in force: a rotation that removed its signers withdrew
        # it (its version stays the floor).
        if envelope is not None and not schedule_still_authorised(
            envelope, schedule, keyring, config.device_id, config.groups
        ):
            log.error(
                "stored_schedule_untrusted",
                schedule=schedule_id,
                version=version,
                action="left out: the keyring in force does not authorise its signers",
            )
            continue
        schedules[schedule_id] = (schedule, digest)
        stored_schedules[schedule_id] = body
    return machine.initial_state(
        settings_from_config(config),
        keyring,
        floors=store.floors(),
        time_floor=store.time_floor(),
        reset_floor=store.reset_floor(),
        trust_digest=trust_digest,
        schedules=schedules,
        stored_schedules=stored_schedules,
        done=store.done(),
        recovered=store.intents(),
    )
