"""A fake world for the pure core: a clock, signing keys, and a record of every effect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from receiver.assembly import settings_from_config
from receiver.central.signing import SigningKey, command_payload, sign_command
from receiver.config import parse_config
from receiver.core import machine
from receiver.core.clock import Instant
from receiver.core.effects import Effect, Emit, PersistFloors, Play, SwitchRelay
from receiver.core.events import Event, MessageReceived, TimerFired
from receiver.core.trust import Key, Keyring

DEVICE = "dev-001"
GROUPS = ("prov-25", "commune-25-07873")
TOPIC = f"loa/v1/dev/{DEVICE}/cmd"
TRUST_TOPIC = "loa/v1/trust"
T0 = 1_800_000_000.0  # 2027-01-15, a trusted wall clock at the start of each test
SHA = "a" * 64


def trusted_key(signer: SigningKey, roles: Sequence[str], scopes: Sequence[str] = ("*",)) -> Key:
    raw = signer.private.public_key().public_bytes_raw()
    return Key(signer.id, raw, frozenset(roles), frozenset(scopes))


def play_body(
    priority: str = "normal", sha: str = SHA, url: str = "https://media.example/a.mp3", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "priority": priority,
        "source": {"files": [{"url": url, "sha256": sha, "size": 1000, "title": "Bulletin"}]},
        "max_duration_s": 600,
    }
    body.update(extra)
    return body


def core_settings(operator: SigningKey, extra_yaml: str = "") -> machine.Settings:
    """The core's settings as the daemon makes them: a config text through the config's own
    parser (its defaults, its rules), then ``settings_from_config``."""
    text = (
        f"device_id: {DEVICE}\nenv: prod\ngroups: [{', '.join(GROUPS)}]\n"
        "broker:\n  host: broker.example\n"
        f"trust:\n  keys:\n    - id: {operator.id}\n      ed25519: {operator.public_b64}\n"
        "      roles: [operator]\n      scopes: ['*']\n"
        "media:\n  allowed_schemes: [https]\n  allowed_hosts: [media.example]\n" + extra_yaml
    )
    return settings_from_config(parse_config(text, "tests/core/harness.py"))


@dataclass
class World:
    operator: SigningKey = field(default_factory=lambda: SigningKey.generate("op-1"))
    emergency: SigningKey = field(default_factory=lambda: SigningKey.generate("em-1"))
    roots: tuple[SigningKey, ...] = field(
        default_factory=lambda: tuple(SigningKey.generate(f"root-{i}") for i in range(3))
    )
    extra_keys: tuple[Key, ...] = ()
    mono: float = 100.0
    utc: float = T0
    utc_trusted: bool = True
    warm_up_s: float = 1.0
    tail_s: float = 5.0
    max_volume: int = 100
    effects: list[Effect] = field(default_factory=list)
    seq: int = 1000
    sim: Any = None  # a tests.core.sim.Sim driving this world, if any

    def __post_init__(self) -> None:
        keyring = Keyring(
            (
                trusted_key(self.operator, ["operator"]),
                trusted_key(self.emergency, ["emergency"]),
                *(trusted_key(root, ["root"]) for root in self.roots),
                *self.extra_keys,
            )
        )
        settings = core_settings(
            self.operator,
            f"player:\n  max_volume: {self.max_volume}\n"
            f"gpio:\n  warm_up_s: {self.warm_up_s}\n  tail_s: {self.tail_s}\n",
        )
        # A device whose store has known a synchronised clock for ten days.
        self.state = machine.initial_state(
            settings, keyring, floors={}, time_floor=0.0, reset_floor=T0 - 10 * 86400
        )
        self.deadline: float | None = None
        self.feed(TimerFired())  # settle: the first step plans the schedule checks
        self.effects.clear()

    @property
    def now(self) -> Instant:
        return Instant(self.mono, self.utc, self.utc_trusted)

    def feed(self, event: Event) -> list[Effect]:
        result = machine.step(self.state, event, self.now)
        self.state, self.deadline = result.state, result.deadline
        self.effects.extend(result.effects)
        return list(result.effects)

    def advance(self, seconds: float) -> list[Effect]:
        """Move both clocks, firing the core's timers when their deadlines pass."""
        out: list[Effect] = []
        target = self.mono + seconds
        while self.deadline is not None and self.deadline <= target:
            step_to = max(self.deadline, self.mono)
            self.utc += step_to - self.mono
            self.mono = step_to
            out += self.feed(TimerFired())
        self.utc += target - self.mono
        self.mono = target
        return out

    def payload(self, kind: str, body: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        self.seq += 1
        fields: dict[str, Any] = {
            "env": "prod",
            "aud": [f"dev:{DEVICE}"],
            "seq": self.seq,
            "iat": self.utc,
            "message_id": f"c{self.seq}",
        }
        fields.update(overrides)
        return command_payload(kind, body, **fields)

    def signed(self, kind: str, body: dict[str, Any], *keys: SigningKey, **kw: Any) -> bytes:
        return sign_command(self.payload(kind, body, **kw), keys or (self.operator,))

    def send(self, raw: bytes, topic: str = TOPIC, retained: bool = False) -> list[Effect]:
        return self.feed(MessageReceived(topic, raw, retained))


def emitted(effects: Sequence[Effect], kind: str | None = None) -> list[Emit]:
    return [e for e in effects if isinstance(e, Emit) and (kind is None or e.kind == kind)]


def only_rejection(effects: Sequence[Effect]) -> Emit:
    """Assert the effects are exactly one rejection and nothing else, and return it."""
    assert len(effects) == 1, effects
    (effect,) = effects
    assert isinstance(effect, Emit) and effect.kind == "rejected", effect
    return effect


def plays(effects: Sequence[Effect]) -> list[Play]:
    return [e for e in effects if isinstance(e, Play)]


def relay_switches(effects: Sequence[Effect]) -> list[bool]:
    return [e.on for e in effects if isinstance(e, SwitchRelay)]


def persisted(effects: Sequence[Effect]) -> list[PersistFloors]:
    return [e for e in effects if isinstance(e, PersistFloors)]


def unchanged(after: machine.State, before: machine.State) -> bool:
    """Nothing that matters changed: the only allowed difference is the count of rejections
    reported in the current window (the flood limiter's bookkeeping)."""
    return replace(after, rejection_window=before.rejection_window) == before
