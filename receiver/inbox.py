"""The loop's inbox: where adapter callbacks drop events, and the one place the loop waits.

Reports from our own adapters (player, fetcher, link) are few and must never be lost: they have
their own lane, drained first. Messages from the broker are untrusted and can arrive in floods,
so their lanes are bounded: when one is full its *oldest* message is dropped and counted, so the
message that comes after a flood — an operator's stop, say — is the one that survives.

Messages that name a key we know (a cheap check, no cryptography) go ahead of the rest, so junk
that is cheap to refuse cannot push out a real command. They wait in one lane per key id (the
first known key the envelope names), and the loop takes one message from each waiting key in
turn. The lanes share one bound; when it is reached, the oldest message of the *longest* lane is
dropped. So a flood of forgeries naming one key cannot delay a command signed by another key (the
emergency key, say) by more than one verification per flooded lane, nor push it out; and a key
that is flooded alone keeps the whole bound for itself, so its own next command survives as many
forgeries after it as before. Within a key's lane the order is kept, so two real commands of one
signer are admitted in the order they came (a reordering would refuse the older one as
replayed).

Central publishes everything at QoS 1 (protocol §1), so the key lanes come in two sets: messages
delivered at QoS 1 go ahead of those delivered at QoS 0, and when the bound is reached a QoS 0
message is dropped first. A QoS 0 flood, the cheapest there is (no acknowledgement, as fast as
the link carries it), thus neither delays a command nor pushes it out; a QoS 1 flood is paced by
the broker, which sends the device no more than its in-flight window of unacknowledged messages
(Mosquitto: 20) and keeps the rest in its own queue. A command that a misconfigured bridge
downgrades to QoS 0 is still handled, behind the QoS 1 traffic. The order of a signer's commands
is kept within one QoS: were one of them downgraded on its way and not the next, the next could
go first and the older be refused as replayed. docs/security.md says what holds under which
flood.

Which key a message names is read in the MQTT thread (:func:`named_key`), for every message of a
flood, so it is a guess as cheap as it can be: it decides only which lane a message waits in, and
every message is then parsed, checked and verified by the core whatever its lane.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Final

from receiver.core.envelope import MAX_MESSAGE_BYTES, MAX_SIGNATURES
from receiver.core.events import Event, MessageReceived

DEFAULT_MESSAGE_CAPACITY: Final = 256
# All key lanes together. Plausible messages are at most 16 KiB each (the envelope cap), so they
# hold at most 32 MiB. A forgery costs the loop one Ed25519 verification and a little more (about
# 0.14 ms on the lab machine), so a full lane of one key takes about 0.3 s to work through: the
# price of keeping a real command that 2,000 forgeries naming its key follow (bench/junk).
DEFAULT_PLAUSIBLE_CAPACITY: Final = 2048


def named_key(raw: bytes, key_ids: frozenset[str]) -> str | None:
    """The first key of ``key_ids`` that the envelope's signatures name, or None; no Ed25519
    work, and no checks beyond what finding the names needs.

    For an envelope that the core's strict parser takes, the answer is the one the parsed
    envelope gives (JSON has one reading of it). Anything else may land in either kind of lane,
    and the core refuses it there: a wrong guess costs only the order of waiting.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        for entry in json.loads(raw)["signatures"][:MAX_SIGNATURES]:
            key_id = entry["keyid"]
            if key_id in key_ids:
                return str(key_id)
    except Exception:  # junk of any shape (too deep, not a list, ...) names no key
        return None
    return None


class _KeyLanes:
    """One lane per key id, taken in turn; no lock of its own (the inbox's guards it)."""

    def __init__(self) -> None:
        self.lanes: dict[str, deque[MessageReceived]] = {}  # by the key id named
        self.turns: deque[str] = deque()  # the key ids with messages waiting, next first
        self.count = 0

    def put(self, key_id: str, event: MessageReceived) -> None:
        if key_id not in self.lanes:
            self.lanes[key_id] = deque()
            self.turns.append(key_id)
        self.lanes[key_id].append(event)
        self.count += 1

    def take(self) -> MessageReceived:
        key_id = self.turns.popleft()
        lane = self.lanes[key_id]
        message = lane.popleft()
        self.count -= 1
        if lane:
            self.turns.append(key_id)  # its next message waits for the other keys' turns
        else:
            del self.lanes[key_id]
        return message

    def drop_from_longest(self, arriving: str) -> MessageReceived:
        """The oldest message of the longest lane, taken out (the arriving key's lane if it is
        one of the longest: a flood pushes out its own first)."""
        longest = max(self.lanes, key=lambda key_id: len(self.lanes[key_id]))
        if len(self.lanes.get(arriving, ())) == len(self.lanes[longest]):
            longest = arriving
        lane = self.lanes[longest]
        dropped = lane.popleft()
        self.count -= 1
        if not lane:
            del self.lanes[longest]
            self.turns.remove(longest)
        return dropped


class Inbox:
    def __init__(
        self,
        message_capacity: int = DEFAULT_MESSAGE_CAPACITY,
        plausible_capacity: int = DEFAULT_PLAUSIBLE_CAPACITY,
    ) -> None:
        self._reports: deque[Event] = deque()
        self._acknowledged = _KeyLanes()  # delivered at QoS 1, as central publishes
        self._unacknowledged = _KeyLanes()  # delivered at QoS 0
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
        """From the MQTT thread: never blocks; when full, drops (and counts) the oldest message
        of its lane, or for a plausible one of the longest key lane (a QoS 0 one first; the
        arriving QoS 0 message itself when QoS 1 ones fill the bound), and returns it (the
        caller acknowledges it to the broker: it will not be handled).

        ``key_id``: the known key the envelope names (unverified), or None for everything else.
        """
        dropped = None
        with self._ready:
            if key_id is None:
                if len(self._messages) >= self._capacity:
                    dropped = self._messages.popleft()
                self._messages.append(event)
            else:
                lanes = self._acknowledged if event.qos > 0 else self._unacknowledged
                if self._acknowledged.count + self._unacknowledged.count >= (
                    self._plausible_capacity
                ):
                    if self._unacknowledged.count:
                        dropped = self._unacknowledged.drop_from_longest(key_id)
                    elif lanes is self._acknowledged:
                        dropped = self._acknowledged.drop_from_longest(key_id)
                    else:  # QoS 1 messages fill the bound: a QoS 0 one does not push them out
                        dropped = event
                if dropped is not event:
                    lanes.put(key_id, event)
            if dropped is not None:
                self._dropped += 1
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

    def get_report_nowait(self) -> Event | None:
        """The next adapter report if one is waiting (never a message), else None."""
        with self._ready:
            return self._reports.popleft() if self._reports else None

    def get_report(self, timeout: float) -> Event | None:
        """The next adapter report (never a message), waiting at most ``timeout`` for one; None
        if none came, or at any ``wake`` or new message (the caller decides whether to wait
        on). A pending ``wake`` stays pending for :meth:`get`."""
        with self._ready:
            if not self._reports:
                self._ready.wait(timeout)
            return self._reports.popleft() if self._reports else None

    def get(self, timeout: float | None) -> Event | None:
        """The next event, or None when ``timeout`` passes or ``wake`` was called."""
        with self._ready:
            if not (self._reports or self._has_messages() or self._woken):
                self._ready.wait(timeout)
            self._woken = False
            return self._take()

    def _has_messages(self) -> bool:
        return bool(self._acknowledged.count or self._unacknowledged.count or self._messages)

    def _take(self) -> Event | None:
        if self._reports:
            return self._reports.popleft()
        if self._acknowledged.count:
            return self._acknowledged.take()
        if self._unacknowledged.count:
            return self._unacknowledged.take()
        if self._messages:
            return self._messages.popleft()
        return None
