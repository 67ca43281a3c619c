"""Audio helpers for tests: write a sine-tone WAV, read a WAV back and measure it.

Standard library only (``wave``, ``array``, ``math``): no numpy on a Pi Zero. Everything here is
16-bit signed PCM, which is what libVLC's ``afile`` output writes by default (``s16``).
"""

from __future__ import annotations

import math
import struct
import sys
import time
import wave
from array import array
from dataclasses import dataclass
from pathlib import Path

FULL_SCALE = 32767


@dataclass(frozen=True)
class WavInfo:
    """A WAV file read back: its format and its first channel as samples (-32768..32767)."""

    rate: int
    channels: int
    frames: int
    samples: tuple[int, ...]  # channel 0 only

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate if self.rate else 0.0


def write_tone(
    path: Path,
    freq_hz: float,
    duration_s: float,
    *,
    rate: int = 44100,
    amplitude: float = 0.5,
    channels: int = 1,
) -> Path:
    """Write a sine tone of ``freq_hz`` as a 16-bit PCM WAV; ``amplitude`` is 0..1 of full scale."""
    n = round(duration_s * rate)
    peak = amplitude * FULL_SCALE
    # An integer tone repeats exactly every rate/gcd(rate, freq) samples: compute that, then tile.
    period = rate // math.gcd(rate, int(freq_hz)) if float(freq_hz).is_integer() else n
    cycle = array("h")
    for i in range(min(period, n)):
        value = round(peak * math.sin(2.0 * math.pi * freq_hz * i / rate))
        cycle.extend([value] * channels)
    samples = cycle * (n // max(len(cycle) // channels, 1) + 1)
    del samples[n * channels :]
    if sys.byteorder != "little":
        samples.byteswap()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def read_wav(path: Path) -> WavInfo:
    """Read a 16-bit PCM WAV; return its format and channel 0.

    The frame count is taken from the data actually present, not only from the header, so that
    a file whose header was not finalised still reads.
    """
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit samples, expected 16-bit")
        rate = w.getframerate()
        channels = w.getnchannels()
        raw = w.readframes(w.getnframes())
    data = array("h")
    data.frombytes(raw[: len(raw) - len(raw) % 2])
    if sys.byteorder != "little":
        data.byteswap()
    first = tuple(data[0::channels])
    return WavInfo(rate=rate, channels=channels, frames=len(first), samples=first)


def wav_is_final(path: Path) -> bool:
    """True when ``path`` is a RIFF/WAVE file whose header sizes match the bytes on disk.

    libVLC's afile output writes its header with zero sizes when it starts and fills them in when
    it stops, which happens a little after libVLC reports the end of an item.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return False
    # Only the data chunk's size is checked: afile writes the RIFF size 4 bytes too large.
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        size: int = struct.unpack_from("<I", data, offset + 4)[0]
        if chunk_id == b"data":
            return size > 0 and offset + 8 + size == len(data)
        offset += 8 + size + (size & 1)
    return False


def wait_for_final_wav(path: Path, timeout_s: float = 5.0) -> WavInfo:
    """Poll until ``path`` holds a finished WAV (see :func:`wav_is_final`), then read it."""
    deadline = time.monotonic() + timeout_s
    while not wav_is_final(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not become a finished WAV within {timeout_s} s")
        time.sleep(0.02)
    return read_wav(path)


def trim_silence(samples: tuple[int, ...], threshold: int = 64) -> tuple[int, ...]:
    """Drop leading and trailing samples whose magnitude is below ``threshold``."""
    start = 0
    end = len(samples)
    while start < end and abs(samples[start]) < threshold:
        start += 1
    while end > start and abs(samples[end - 1]) < threshold:
        end -= 1
    return samples[start:end]


def rms(samples: tuple[int, ...]) -> float:
    """Root mean square level, in sample units (full-scale sine: about 23170)."""
    if not samples:
        return 0.0
    return math.sqrt(math.fsum(float(s) * s for s in samples) / len(samples))


def zero_crossing_freq(samples: tuple[int, ...], rate: int) -> float:
    """Estimate the frequency of a pure tone from its upward zero crossings.

    Uses the span between the first and the last crossing, so a partial period at either end
    does not bias the result.
    """
    crossings: list[int] = []
    for i in range(1, len(samples)):
        if samples[i - 1] < 0 <= samples[i]:
            crossings.append(i)
    if len(crossings) < 2:
        return 0.0
    periods = len(crossings) - 1
    return periods * rate / (crossings[-1] - crossings[0])


def goertzel_power(samples: tuple[int, ...], rate: int, freq_hz: float) -> float:
    """Relative power of ``freq_hz`` in ``samples`` (Goertzel algorithm), normalised by length."""
    if not samples:
        return 0.0
    coeff = 2.0 * math.cos(2.0 * math.pi * freq_hz / rate)
    s_prev = 0.0
    s_prev2 = 0.0
    for x in samples:
        s = x + coeff * s_prev - s_prev2
        s_prev2 = s_prev
        s_prev = s
    power = s_prev2 * s_prev2 + s_prev * s_prev - coeff * s_prev * s_prev2
    return power / (len(samples) ** 2)


def dominant_of(samples: tuple[int, ...], rate: int, candidates: tuple[float, ...]) -> float:
    """Which of ``candidates`` carries the most power (Goertzel at each)."""
    return max(candidates, key=lambda f: goertzel_power(samples, rate, f))
