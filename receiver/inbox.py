"""The loop's inbox: where adapter callbacks drop events, and the one place the loop waits.

Three lanes. Reports from our own adapters (player, fetcher, link) are few and must never be
lost. Messages from the broker are untrusted and can arrive in floods, so their lanes are
bounded: when one is full its *oldest* message is dropped and counted, so the message that comes
after a flood — an operator's stop, say — is the one that survives. Messages that look signed by
a key we know (a cheap check, no cryptography) have their own lane, ahead of the rest, so junk
that is cheap to refuse cannot push out a real command. The loop drains our own reports first,
then plausible messages, then the rest.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Final

from receiver.core.events import Event, MessageReceived

DEFAULT_MESSAGE_CAPACITY: Final = 256
# Plausible messages are at most 16 KiB each (the envelope cap), so this lane holds at most
# 32 MiB, and the loop verifies it in well under a second (bench/junk measures it).
DEFAULT_PLAUSIBLE_CAPACITY: Final = 2048


class Inbox:
    def __init__(
        self,
        message_capacity: int = DEFAULT_MESSAGE_CAPACITY,
        plausible_capacity: int = DEFAULT_PLAUSIBLE_CAPACITY,
    ) -> None:
        self._reports: deque[Event] = deque()
        self._plausible: deque[MessageReceived] = deque()
        self._messages: deque[MessageReceived] = deque()
        self._capacity = message_capacity
        self._plausible_capacity = plausible_capacity
        self._ready = threading.Condition()
        self._woken = False
        self._dropped = 0

    def put_report(self, event: Event) -> None:
        """From an adapter thread: never blocks, never drops."""
        with self._ready:
            self._reports.append(event)
            self._ready.notify()

    def put_message(
        self, event: MessageReceived, plausible: bool = False
    ) -> MessageReceived | None:
        """From the MQTT thread: never blocks; drops (and counts) the oldest when full, and
        returns it (the caller acknowledges it to the broker: it will not be handled)."""
        lane = self._plausible if plausible else self._messages
        capacity = self._plausible_capacity if plausible else self._capacity
        dropped = None
        with self._ready:
            if len(lane) >= capacity:
                dropped = lane.popleft()
                self._dropped += 1
            lane.append(event)
            self._ready.notify()
        return dropped

    def take_dropped(self) -> int:
        """How many messages were dropped since the last call (read and reset together)."""
        with self._ready:
            dropped, self._dropped = self._dropped, 0
            return dropped

    def wake(self) -> None:
        """Make a waiting ``get`` return None at once (shutdown, signals)."""
        with self._ready:
            self._woken = True
            self._ready.notify()

    def get_nowait(self) -> Event | None:
        """The next event if one is waiting, else None; a pending ``wake`` stays pending."""
        with self._ready:
            return self._take()

    def get(self, timeout: float | None) -> Event | None:
        """The next event, or None when ``timeout`` passes or ``wake`` was called."""
        with self._ready:
            if not (self._reports or self._plausible or self._messages or self._woken):
                self._ready.wait(timeout)
            self._woken = False
            return self._take()

    def _take(self) -> Event | None:
        if self._reports:
            return self._reports.popleft()
        if self._plausible:
            return self._plausible.popleft()
        if self._messages:
            return self._messages.popleft()
        return None
