"""The loop's inbox: where adapter callbacks drop events, and the one place the loop waits.

Reports from our own adapters (player, fetcher, link) are few and must never be lost: they have
their own lane, drained first. Messages from the broker are untrusted and can arrive in floods,
so their lanes are bounded: when one is full its *oldest* message is dropped and counted, so the
message that comes after a flood — an operator's stop, say — is the one that survives.

Messages that name a key we know (a cheap check, no cryptography) go ahead of the rest, so junk
that is cheap to refuse cannot push out a real command. They wait in one lane per key id (the
first known key the envelope names), and the loop takes one message from each waiting key in
turn: a flood of forgeries naming one key cannot delay or push out a command signed by another
(the emergency key, say) by more than one verification per forgery lane. Within a key's lane the
order is kept, so two real commands of one signer are admitted in the order they came (a
reordering would refuse the older one as replayed). A key's lane is short enough that the loop
gets through a full one, one Ed25519 verification each, in well under 100 ms: that bounds how
long a burst of forgeries naming a key can hold up the next real command signed by it. The cost
is that a real command is shed if that many messages naming the same key arrive after it before
its turn — a flood that outruns the verifications sheds whatever is oldest, whatever lane depth
were chosen; docs/security.md says what holds under which flood.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Final

from receiver.core.events import Event, MessageReceived

DEFAULT_MESSAGE_CAPACITY: Final = 256
# Per key id. A forgery costs the loop about 0.15-0.35 ms (one Ed25519 verification, the
# rejection's log line and event): 256 of them take 40-90 ms, inside issue 13's 100 ms for the
# command after a burst (bench/junk measures it). Messages are at most 16 KiB (the envelope
# cap), so a key's lane holds at most 4 MiB; a keyring has a handful of keys.
DEFAULT_PLAUSIBLE_CAPACITY: Final = 256


class Inbox:
    def __init__(
        self,
        message_capacity: int = DEFAULT_MESSAGE_CAPACITY,
        plausible_capacity: int = DEFAULT_PLAUSIBLE_CAPACITY,
    ) -> None:
        self._reports: deque[Event] = deque()
        self._plausible: dict[str, deque[MessageReceived]] = {}  # by the key id named
        self._turns: deque[str] = deque()  # the key ids with messages waiting, next first
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
        self, event: MessageReceived, key_id: str | None = None
    ) -> MessageReceived | None:
        """From the MQTT thread: never blocks; drops (and counts) the oldest of its lane when
        full, and returns it (the caller acknowledges it to the broker: it will not be handled).

        ``key_id``: the known key the envelope names (unverified), or None for everything else.
        """
        dropped = None
        with self._ready:
            lane, capacity = self._messages, self._capacity
            if key_id is not None:
                capacity = self._plausible_capacity
                if key_id not in self._plausible:
                    self._plausible[key_id] = deque()
                    self._turns.append(key_id)
                lane = self._plausible[key_id]
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
            if not (self._reports or self._turns or self._messages or self._woken):
                self._ready.wait(timeout)
            self._woken = False
            return self._take()

    def _take(self) -> Event | None:
        if self._reports:
            return self._reports.popleft()
        if self._turns:
            key_id = self._turns.popleft()
            lane = self._plausible[key_id]
            message = lane.popleft()
            if lane:
                self._turns.append(key_id)  # its next message waits for the other keys' turns
            else:
                del self._plausible[key_id]
            return message
        if self._messages:
            return self._messages.popleft()
        return None
