"""The outbox pump: events from the loop to the outbox on disk, and from there to the broker.

Owns the bookkeeping between the two: which stored events are in the link's hands, which the
broker has acknowledged, and the log line of each event, written only once the event is on
disk. A loop turn opens one :meth:`OutboxPump.turn`; every event added in it is committed in one
transaction when it ends (an SD card then pays one durable write per turn, not per event, which
is what keeps a flood of rejections cheap). They are handed to the link as that commit begins,
so they travel while it waits for the card, and logged only once it is done.
Called from the loop thread only; :meth:`_on_ack` is the link's and only queues.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final

import structlog

from receiver.errors import StoreError
from receiver.ports import Link, Outbox

MAX_IN_FLIGHT: Final = 500  # events handed to the link at once (paho queues at most 1000)

_Log = tuple[Callable[..., Any], str, dict[str, Any]]


class OutboxPump:
    def __init__(
        self, outbox: Outbox, link: Link, topic: str, wake: Callable[[], None], log: Any = None
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.topic = topic
        self._wake = wake
        self._log = log if log is not None else structlog.get_logger("receiver")
        self._acked: deque[int] = deque()
        self._in_flight: set[int] = set()
        self._logs: list[_Log] = []  # the turn's event lines, written once it is committed
        self._ready: list[_Log] = []  # lines to write (events committed, actions done), in order
        self._holding = False  # see hold_logs
        self._in_turn = False
        self._batch: AbstractContextManager[None] | None = None  # this turn's, once opened
        self._unavailable: StoreError | None = None  # the outbox could not open this turn's batch

    @contextmanager
    def turn(self) -> Iterator[None]:
        """One loop turn: its events are committed together when it ends, and logged once they
        are (sent as the commit begins: neither the commit nor their log lines delay them).

        The transaction opens with the turn's first event (a turn without events writes
        nothing). If the turn fails, nothing of it was committed, so nothing of it is logged
        (what the loop sent early, :meth:`send`, may reach the broker all the same). If the
        outbox cannot be written (a locked, full or failing card), the turn's events are lost
        and reported as such, and the loop goes on: the actions and floors do not wait for the
        reports.
        """
        if self._in_turn:
            yield
            return
        self._in_turn = True
        try:
            yield
        except BaseException as exc:
            self._logs.clear()
            self._end_batch(exc)
            raise
        finally:
            self._in_turn = False
            self._unavailable = None
        self._commit(then_send=True)

    def commit(self) -> None:
        """Put the turn's events so far on disk now, before a store write that relies on them
        (the core orders its effects: a report before the write that retires what it reports).
        The turn goes on; its next event opens a new transaction."""
        if self._batch is not None:
            self._commit()

    def _commit(self, *, then_send: bool = False) -> None:
        if then_send:
            # Handed to the link before the commit: its thread sends them while the commit
            # waits for the card (SQLite lets other threads run during the fsync), so the
            # commit does not stand between an event and central. A power cut before the
            # commit costs the board its copy, as it did when they were sent after it; they
            # may have reached the broker meanwhile, which is no loss.
            self.send()
        try:
            self._end_batch(None)
        except StoreError as exc:
            lost = sum(1 for _, what, _ in self._logs if what != "outbox_overflow")
            self._logs.clear()
            self._log.error("effect_failed", effect="Emit", error=str(exc), events_lost=lost)
        self._flush_logs()

    def add(
        self, n: int, payload: bytes, log: Callable[..., Any], what: str, /, **fields: Any
    ) -> None:
        """Store event ``n``; ``log(what, **fields)`` is written once it is on disk."""
        if self._unavailable is not None:
            raise self._unavailable
        if self._in_turn and self._batch is None:
            batch = self.outbox.batch()
            try:
                batch.__enter__()
            except StoreError as exc:
                self._unavailable = exc
                raise
            self._batch = batch
        dropped = self.outbox.add(n, payload)
        if dropped:
            self._logs.append(
                (
                    self._log.error,
                    "outbox_overflow",
                    {"dropped": dropped, "total": self.outbox.dropped_total},
                )
            )
        self._logs.append((log, what, fields))
        if not self._in_turn:
            self._flush_logs()
            self.send()

    def _end_batch(self, exc: BaseException | None) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            if exc is None:
                batch.__exit__(None, None, None)
            else:
                batch.__exit__(type(exc), exc, exc.__traceback__)

    def settle(self) -> None:
        """Forget what the broker has acknowledged (one transaction), then send more."""
        if not self._acked:
            return
        acked = list(self._acked)
        try:
            with self.outbox.batch():
                for n in acked:
                    self.outbox.ack(n)
        except StoreError as exc:  # kept for the next turn; the broker has them already
            self._log.error("outbox_ack_failed", error=str(exc), events=len(acked))
            return
        for n in acked:
            self._acked.popleft()
            self._in_flight.discard(n)
        self.send()

    def send(self) -> None:
        """Hand the link what the outbox holds, oldest first, a bounded number at a time;
        in a turn, also what the turn has added and not yet committed."""
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return
        for n, payload in self.outbox.pending(limit=room + len(self._in_flight)):
            if n in self._in_flight:
                continue
            self._in_flight.add(n)
            self.link.publish(self.topic, payload, on_ack=self._ack_callback(n))

    def _on_ack(self, n: int) -> None:
        """From the link's thread: the broker has event ``n``; the loop forgets it."""
        self._acked.append(n)
        self._wake()

    def _ack_callback(self, n: int) -> Callable[[], None]:
        return lambda: self._on_ack(n)

    def log_action(self, log: Callable[..., Any], what: str, /, **fields: Any) -> None:
        """Write ``log(what, **fields)`` (the line of an action done, not an event) with the
        event lines: at the turn's end, after its events are committed and sent."""
        self._ready.append((log, what, fields))
        if not self._in_turn:
            self._write_ready()

    def hold_logs(self) -> None:
        """Keep every line (events committed, actions done) until :meth:`release_logs`: while
        a play's start is awaited, formatting and writing them would only delay taking it."""
        self._holding = True

    def release_logs(self) -> None:
        self._holding = False
        self._write_ready()

    def _flush_logs(self) -> None:
        self._ready.extend(self._logs)
        self._logs = []
        self._write_ready()

    def _write_ready(self) -> None:
        if self._holding:
            return
        logs, self._ready = self._ready, []
        for log, what, fields in logs:
            log(what, **fields)
