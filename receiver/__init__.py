"""loa-receiver: the daemon beside a commune loudspeaker.

It verifies signed commands from the central system, plays audio through libVLC and switches the
amplifier relay. The pure decision core lives in :mod:`receiver.core`; everything else is a thin
adapter around one library or one resource.
"""

__version__ = "0.1.0"
