"""Synchronised start: four receivers given one group ``play`` with ``start_at``, how together.

What it measures. Four real daemons (``receiver run`` as child processes, distinct device ids,
one group, each with its own state and cache directories and its own WAV output) on one real
Mosquitto. Each trial the benchmark signs one ``play`` of a cached 0.5 s tone with ``start_at``
about 3 s ahead and publishes it once, on the group's command topic. A daemon's actual start is
the ``mono`` of its ``started`` log line: the loop's ``time.monotonic()`` when it took libVLC's
PlaybackStarted (CLOCK_MONOTONIC is machine-wide on Linux, so the four compare with each other
and with ours; the daemon logs it to 1 ms). The target is ``start_at`` converted to monotonic
time here, with the wall-minus-monotonic offset read (tightest of nine bracketed readings)
right before the command is signed and sent; ``start_at`` is a whole millisecond, written out
exactly.

Two starts per daemon and trial. The **sound** start: libVLC's ``Playing`` for the item, stamped
(``time.monotonic()``, to the microsecond) in the player's child process by the callback itself
and logged as ``started_at_instant`` (``playing_mono``): when the sound began, the figure that
says how together the loudspeakers are. The **loop** start: the ``mono`` of the ``started`` log
line (to 1 ms), when the daemon's loop took the report; it adds the hop back from the child, and
is what earlier runs of this benchmark measured.

Per trial: the spread (latest minus earliest of the four starts), and each start's error from
the target (positive = late). The daemon hands the Play to its player's child process a moment
ahead, with the instant (``play`` log line: ``mono`` when, ``at`` the instant); the child sleeps
to the instant and resumes the prerolled file itself (``resume_late_ms``: its wake-up lateness),
then libVLC says ``Playing``. The core fixes the instant at ``max(start, relay on +
warm_up_s)``, from when the relay was actually switched; the relay is due ``warm_up_s +
START_LEAD_S`` before the target, so a late relay-on wake-up moves the instant only if it is
later than ``START_LEAD_S``: its lateness is shown too.

Each trial starts from idle, relay off (the previous tone finished and the relay tail ran out).
The config differs from the end-to-end tests' in five printed settings: device id,
``warm_up_s`` (small, so the relay warm-up does not stretch each trial), ``tail_s`` (short, to
keep the run short), log level ``info`` and ``policy.relay_max_toggles_per_min: 60`` (at the
default 6 the core keeps the relay on after the third trial in a minute, and later trials would
not start cold). All four clocks are trusted (``clock.trust_system_clock: always``, as in the
e2e config): without a trusted clock the core refuses ``start_at``. A warm-up trial (uncounted)
downloads the tone into each cache and loads libVLC's plugins; the media server is then shut
down, so a later start that were not a cache hit would fail loudly instead of timing a download.

Pre-roll: a daemon opens a file due at an instant one second ahead, paused (``Preroll``,
``receiver.player.Player.preroll``), and at the instant only resumes it; its ``preroll`` log
line says when. So ``sound - resume`` is libVLC resuming, as floor (a).

Floors, measured in the same run, one of each after every trial (never while the daemons wait):

(a) libVLC's own start: ``receiver.player.Player`` (output ``file``, as the daemons) in this
    process, ``play()`` of the same file, prerolled a second before as the daemons do, to its
    PlaybackStarted callback. Compare with ``sound - resume``. (a0), printed beside it: the
    same without the pre-roll, libVLC opening the file at the instant, as before pre-roll.
(b) The OS lining up four wake-ups: four threads of this one process each wait (``Condition.wait``
    with a timeout) for the same monotonic instant 0.25 s ahead and stamp ``time.monotonic()``
    when they are past it. Its spread is how well the machine alone lines up four wake-ups (one
    process: the threads also queue for the GIL; four processes on this 2-core machine queue for
    the CPUs instead); its error is the wake-up lateness alone. Compare with the children's
    resume lateness.

How to read it. Spread says how together four loudspeakers start; the error says how close to
the asked-for instant. A sound spread near floor (b)'s and a sound error near floor (a) plus
(b)'s lateness means the receiver adds little of its own. Ratios are printed of medians.
Compare ratios between runs, not raw milliseconds: the machine is shared. No figure is
asserted; the run fails only if a command is refused or an event never comes.

Run: ``python -m bench.sync_start [--trials N] [--lead S]`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    GROUP_TOPIC,
    BenchError,
    Lab,
    TimedClient,
    TimedPlayer,
    dev_topic,
    event_for,
    explained_by_logs,
    is_idle,
    load_line,
    median,
    mono_of,
    open_lab,
    parser_for,
    ratio,
    rfc3339_ms,
    run_main,
    start_daemons,
    wait_log,
    wait_online,
    wall_minus_mono,
    worst,
)
from receiver.core.engine import START_LEAD_S
from tests.lab.daemon import GROUP, Daemon

DEVICES = 4
DEFAULT_TRIALS = 20
DEFAULT_LEAD_S = 3.0
TONE_S = 0.5
WARM_UP_S = 0.05
TAIL_S = 0.2
WAKE_LEAD_S = 0.25
TIMEOUT_S = 20.0
CONFIG_EDITS = (
    ("  warm_up_s: 0.3\n", f"  warm_up_s: {WARM_UP_S}\n"),
    ("  tail_s: 0.5\n", f"  tail_s: {TAIL_S}\n"),
    ("  level: debug\n", "  level: info\n"),
)
# Two relay switches per trial, a trial every ~4 s: above the default cap of 6 a minute, the
# core would keep the relay on (its safe side) and later trials would no longer start cold.
CONFIG_APPEND = "policy:\n  relay_max_toggles_per_min: 60\n"


@dataclass
class Site:
    lab: Lab
    devices: tuple[str, ...]
    daemons: tuple[Daemon, ...]
    client: TimedClient
    player: TimedPlayer

    def play_command(self, ref: str, start_at: str) -> bytes:
        body = self.lab.play_body("sync tone", max_duration_s=60, start_at=start_at)
        return self.lab.signed("play", body, ref, aud=f"grp:{GROUP}")


@contextmanager
def open_site(root: Path) -> Iterator[Site]:
    """Broker, media, four daemons online, our client and a player; all stopped on the way out."""
    with (
        open_lab(root, tone_name="tone.wav", tone_s=TONE_S, key_id="op-sync") as lab,
        ExitStack() as stack,
    ):
        devices = tuple(f"sync-dev-{i}" for i in range(DEVICES))
        topics = [dev_topic("+", "events"), dev_topic("+", "state")]
        client = TimedClient(lab.broker, topics, timeout_s=TIMEOUT_S).start()
        stack.callback(client.close)
        configs = []
        for device in devices:
            home = root / device
            home.mkdir()
            configs.append(
                lab.daemon_config(home, device_id=device, edits=CONFIG_EDITS, append=CONFIG_APPEND)
            )
        daemons = start_daemons(stack, configs)
        player = TimedPlayer(root / "floor-out.wav", TIMEOUT_S)
        stack.callback(player.close)
        with explained_by_logs(dict(zip(devices, daemons, strict=True)), 8):
            wait_online(client, devices)
            yield Site(lab, devices, tuple(daemons), client, player)


# --- one trial and the floors ----------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One group command: the target and each daemon's stamps (monotonic seconds)."""

    target: float
    accepted: tuple[float, ...]  # the loop took the command
    relay_on: tuple[float, ...]  # the loop switched the relay on (due at target - warm_up_s)
    play: tuple[float, ...]  # the loop handed the Play to the player's process
    instant: tuple[float, ...]  # the instant the daemon gave it (``at``)
    resumed: tuple[float, ...]  # the child resumed the file (``at`` + ``resume_late_ms``)
    sounded: tuple[float, ...]  # libVLC's Playing, stamped in the child
    started: tuple[float, ...]  # the loop took libVLC's PlaybackStarted

    @property
    def spread(self) -> float:
        return max(self.sounded) - min(self.sounded)

    @property
    def loop_spread(self) -> float:
        return max(self.started) - min(self.started)

    @property
    def errors(self) -> tuple[float, ...]:
        return tuple(s - self.target for s in self.sounded)

    @property
    def loop_errors(self) -> tuple[float, ...]:
        return tuple(s - self.target for s in self.started)


def run_trial(site: Site, ref: str, lead_s: float) -> Trial:
    """Send one group play ``lead_s`` ahead; return once all four finished and are idle again."""
    marks = [len(d.lines) for d in site.daemons]
    offset = wall_minus_mono()
    start_ms = math.ceil((time.monotonic() + offset + lead_s) * 1000.0)
    target = start_ms / 1000.0 - offset
    site.client.publish(GROUP_TOPIC, site.play_command(ref, rfc3339_ms(start_ms)))
    site.client.wait_sequences(
        {
            d: [
                event_for(ref, "started", dev_topic(d, "events")),
                event_for(ref, "finished", dev_topic(d, "events")),
                is_idle(dev_topic(d, "state")),
            ]
            for d in site.devices
        },
        f"started, finished and relay off for {ref}",
        timeout_s=lead_s + TIMEOUT_S,
    )
    accepted, relay_on, play, started = [], [], [], []
    instant, resumed, sounded = [], [], []
    for daemon, mark in zip(site.daemons, marks, strict=True):
        kept = wait_log(
            daemon, mark, lambda ln: ln.get("event") == "started_at_instant", "started_at_instant"
        )
        if kept.get("playing_mono") is None:
            raise BenchError(f"libVLC's Playing was not reported in time: {kept}")
        at = float(kept["at"])
        instant.append(at)
        resumed.append(at + float(kept["resume_late_ms"]) / 1000.0)
        sounded.append(float(kept["playing_mono"]))
        started.append(
            mono_of(
                wait_log(
                    daemon,
                    mark,
                    lambda ln: ln.get("event") == "started" and ln.get("ref") == ref,
                    f"started log line for {ref}",
                )
            )
        )
        play.append(mono_of(wait_log(daemon, mark, lambda ln: ln.get("event") == "play", "play")))
        relay_on.append(
            mono_of(
                wait_log(
                    daemon,
                    mark,
                    lambda ln: ln.get("event") == "relay_switched" and ln.get("on") is True,
                    "relay on",
                )
            )
        )
        accepted.append(
            mono_of(
                wait_log(
                    daemon,
                    mark,
                    lambda ln: ln.get("event") == "accepted" and ln.get("ref") == ref,
                    f"accepted log line for {ref}",
                )
            )
        )
    return Trial(
        target,
        tuple(accepted),
        tuple(relay_on),
        tuple(play),
        tuple(instant),
        tuple(resumed),
        tuple(sounded),
        tuple(started),
    )


PREROLL_S = 1.0  # as receiver.core.engine.PREROLL_S


def libvlc_start(site: Site, *, prerolled: bool = True) -> float:
    """Seconds from ``Player.play()`` of the tone to ``PlaybackStarted`` (the tone prerolled
    first, as the daemons do, unless not ``prerolled``); waits for its end."""
    return site.player.start_s(site.lab.tone, prerolled_s=PREROLL_S if prerolled else 0.0)


def wake_round(threads: int = DEVICES, lead_s: float = WAKE_LEAD_S) -> list[float]:
    """Each thread's wake-up minus the common target instant, in seconds."""
    gate = threading.Barrier(threads + 1)
    woke = [0.0] * threads
    target = 0.0

    def worker(i: int) -> None:
        condition = threading.Condition()
        gate.wait()
        with condition:
            while (now := time.monotonic()) < target:
                condition.wait(target - now)  # nobody notifies: a timed wait, as the loop's
        woke[i] = now

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    target = time.monotonic() + lead_s
    gate.wait()
    for thread in workers:
        thread.join()
    return [w - target for w in woke]


# --- figures ---------------------------------------------------------------------------------


def _ms(values: Sequence[float]) -> list[float]:
    return [v * 1000.0 for v in values]


def _line(label: str, values_s: Sequence[float], floor_ms: float | None = None) -> str:
    ms = _ms(values_s)
    text = f"  {label:<52} {median(ms):9.2f} {worst(ms):9.2f}"
    if floor_ms is not None:
        text += f" {ratio(median(ms), floor_ms):8.2f}"
    return text


def report(
    trials: Sequence[Trial],
    vlc_starts: Sequence[float],
    vlc_opens: Sequence[float],
    wakes: Sequence[Sequence[float]],
    *,
    lead_s: float,
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    errors = [e for t in trials for e in t.errors]
    loop_errors = [e for t in trials for e in t.loop_errors]
    instant_off = [i - t.target for t in trials for i in t.instant]
    lateness = [r - i for t in trials for r, i in zip(t.resumed, t.instant, strict=True)]
    relay_late = [r - (t.target - WARM_UP_S - START_LEAD_S) for t in trials for r in t.relay_on]
    vlc_in_child = [s - r for t in trials for s, r in zip(t.sounded, t.resumed, strict=True)]
    hop_back = [s - p for t in trials for s, p in zip(t.started, t.sounded, strict=True)]
    ahead = [i - p for t in trials for i, p in zip(t.instant, t.play, strict=True)]
    margins = [t.target - a for t in trials for a in t.accepted]
    wake_spreads = [max(w) - min(w) for w in wakes]
    wake_errors = [e for w in wakes for e in w]
    floor_spread = median(_ms(wake_spreads))
    floor_vlc = median(_ms(vlc_starts))
    floor_late = median(_ms(wake_errors))
    print(
        f"\n{DEVICES} daemons, one group `play` per trial with start_at {lead_s:g} s ahead, "
        f"{len(trials)} trials ({len(errors)} starts); config: warm_up_s {WARM_UP_S:g}, "
        f"tail_s {TAIL_S:g}, log level info, relay_max_toggles_per_min 60, trusted clock;\n"
        "sound start = libVLC's Playing stamped in each daemon's player process "
        "(`started_at_instant`, to 1 us); loop start = `mono` of the `started` log line (to 1 ms);"
        "\ntarget = start_at in this process's monotonic time; worst = farthest from zero."
    )
    floor_error = floor_vlc + floor_late
    header = f"  {'':<52} {'median ms':>9} {'worst ms':>9} {'/ floor':>8}"
    print(header)
    print(_line("spread of the four sound starts", [t.spread for t in trials], floor_spread))
    print(_line("  the same, loop starts", [t.loop_spread for t in trials], floor_spread))
    print(_line("floor (b): spread of 4 threads waking at one instant", wake_spreads, floor_spread))
    print(_line("sound start error, sound - target (signed)", errors, floor_error))
    print(_line("sound start error, |sound - target|", [abs(e) for e in errors], floor_error))
    print(
        f"  {'  earliest / latest sound start vs target':<52} {min(errors) * 1e3:9.2f} "
        f"{max(errors) * 1e3:9.2f}"
    )
    print(_line("  of which: instant given - target", instant_off, floor_late))
    print(_line("    (relay-on lateness: moves it only past 250 ms)", relay_late, floor_late))
    print(_line("  of which: child's wake-up lateness, resume - instant", lateness, floor_late))
    print(_line("  of which: libVLC resuming, sound - resume", vlc_in_child, floor_vlc))
    print(_line("loop start error, started - target (signed)", loop_errors, floor_error))
    print(_line("  of which: the hop back, started - sound", hop_back, floor_vlc))
    print(_line("play handed to the player ahead of the instant", ahead))
    print(_line("floor (a): libVLC resumes a prerolled file, here", vlc_starts, floor_vlc))
    print(_line("  (a0): libVLC play() of an unopened file, here", vlc_opens, floor_vlc))
    print(_line("floor (b): thread wake-up lateness, woke - target", wake_errors, floor_late))
    print(f"  floor for the error: (a) + (b) lateness medians = {floor_error:.2f} ms")
    per_device = "  ".join(
        f"{i}: {median(_ms([t.errors[i] for t in trials])):+.2f}" for i in range(DEVICES)
    )
    print(f"  median signed sound start error per daemon, ms: {per_device}")
    per_device = "  ".join(
        f"{i}: {median(_ms([t.instant[i] - t.target for t in trials])):+.2f}"
        for i in range(DEVICES)
    )
    print(f"  median instant given - target per daemon, ms: {per_device}")
    print(
        f"  command arrived (accepted) ahead of the target: min {min(margins):.3f} s, "
        f"median {median(margins):.3f} s of {lead_s:g} s"
    )
    print(load_line(*load))


# --- the run ---------------------------------------------------------------------------------


def run(root: Path, count: int, lead_s: float) -> None:
    load_before = os.getloadavg()
    print(f"sync_start: starting Mosquitto, {DEVICES} daemons and a player in {root}", flush=True)
    with open_site(root) as site:
        run_trial(site, "warmup", lead_s)  # downloads the tone into every cache
        site.lab.media.close()
        for home in (site.lab.cached(site.lab.root / d) for d in site.devices):
            if not home.is_file():
                raise BenchError(f"the tone is not in a daemon's cache at {home}")
        libvlc_start(site)
        wake_round()
        print(f"sync_start: warm-up done; measuring {count} trials", flush=True)
        trials: list[Trial] = []
        vlc_starts: list[float] = []
        vlc_opens: list[float] = []
        wakes: list[list[float]] = []
        for i in range(count):
            trials.append(run_trial(site, f"sync-{i}", lead_s))
            vlc_starts.append(libvlc_start(site))
            vlc_opens.append(libvlc_start(site, prerolled=False))
            wakes.append(wake_round())
    report(trials, vlc_starts, vlc_opens, wakes, lead_s=lead_s, load=(load_before, os.getloadavg()))


def main(argv: Sequence[str] = ()) -> int:
    parser = parser_for("sync_start", __doc__)
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="measured trials")
    parser.add_argument("--lead", type=float, default=DEFAULT_LEAD_S, help="start_at lead, s")
    args = parser.parse_args(list(argv))
    if args.trials < 2:
        parser.error("--trials must be at least 2")
    if args.lead < 0.5:
        parser.error("--lead must be at least 0.5 s")
    return run_main("sync_start", lambda root: run(root, args.trials, args.lead), tmp_tag="sync")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
