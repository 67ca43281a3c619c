"""loa-receiver: the daemon beside a commune loudspeaker.

It verifies signed commands from the central system, plays audio through libVLC and switches the
amplifier relay. The pure decision core lives in :mod:`receiver.core`; everything else is a thin
adapter around one library or one resource.
"""

from receiver.deferred import defer_when_imported

__version__ = "0.1.0"

# structlog imports asyncio for async logging methods the daemon never calls (about 2 MiB held
# for nothing): asyncio waits for its first real use, whichever module imports structlog first.
defer_when_imported("structlog", "asyncio")
