"""Deferred modules (receiver.deferred): not loaded until used, then the real module, whoever
bound the stand-in and from whichever thread. Each case runs in a fresh interpreter, whose
``sys.modules`` the test controls."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_deferred_module_loads_on_first_use_and_is_then_the_real_one() -> None:
    out = run(
        """
        import sys
        from receiver.deferred import defer
        defer("colorsys")
        import colorsys
        before = type(sys.modules["colorsys"]).__name__
        assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
        import colorsys as again
        from colorsys import hsv_to_rgb
        assert again is sys.modules["colorsys"] and type(again).__name__ == "module"
        assert hsv_to_rgb is again.hsv_to_rgb is colorsys.hsv_to_rgb
        print(before)
        """
    )
    assert out == "_StandIn"


def test_a_deferred_package_serves_its_submodules() -> None:
    run(
        """
        import sys
        from receiver.deferred import defer
        assert "email" not in sys.modules
        defer("email")
        import email.message
        assert email.message.Message().get_content_type() == "text/plain"
        assert sys.modules["email"].__path__
        """
    )


def test_threads_that_touch_a_deferred_module_at_once_get_the_same_real_module() -> None:
    run(
        """
        import sys, threading
        from receiver.deferred import defer
        defer("colorsys")
        import colorsys
        start, seen = threading.Barrier(8), []
        def touch():
            start.wait()
            seen.append(colorsys.rgb_to_hls)
        threads = [threading.Thread(target=touch) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 8 and len(set(seen)) == 1
        assert seen[0] is sys.modules["colorsys"].rgb_to_hls
        """
    )


def test_after_the_logging_setup_asyncio_waits_and_still_works_when_used() -> None:
    """receiver.logs defers asyncio before importing structlog (which imports it)."""
    out = run(
        """
        import sys
        import receiver.logs
        import structlog
        loaded = sorted(m for m in sys.modules if m.startswith(("asyncio.", "_asyncio")))
        import asyncio
        async def answer():
            await asyncio.sleep(0)
            return 42
        assert asyncio.run(answer()) == 42
        print(loaded)
        """
    )
    assert out == "[]"
