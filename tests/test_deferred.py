"""Deferred modules (receiver.deferred): not loaded until used, then the real module, whoever
bound the stand-in and from whichever thread. Each case runs in a fresh interpreter, whose
``sys.modules`` the test controls."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import receiver


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


def test_a_submodule_imported_first_is_the_one_its_package_loaded() -> None:
    """``from asyncio.events import X`` as the first use: reading the stand-in's ``__path__``
    loads asyncio, which imports asyncio.events; the import system, which had found
    asyncio.events missing just before, must hand back that module, not run it a second time
    (two event-loop policies, failing isinstance checks)."""
    run(
        """
        import importlib.machinery, sys
        from receiver.deferred import defer
        defer("asyncio")
        from asyncio.events import AbstractEventLoop
        import asyncio.coroutines
        import asyncio
        assert type(sys.modules["asyncio"]).__name__ == "module"
        assert AbstractEventLoop is asyncio.AbstractEventLoop
        assert sys.modules["asyncio.events"] is asyncio.events
        assert asyncio.coroutines.iscoroutinefunction is asyncio.iscoroutinefunction
        assert isinstance(asyncio.new_event_loop(), AbstractEventLoop)
        # The module keeps its own spec, which says where it came from.
        assert isinstance(asyncio.events.__spec__.loader, importlib.machinery.SourceFileLoader)
        assert asyncio.events.__spec__.origin.endswith("asyncio/events.py")
        """
    )


def test_a_deferred_packages_nested_submodules_run_once_and_reload_still_works(
    tmp_path: Path,
) -> None:
    package = tmp_path / "deferredpkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from deferredpkg.sub import leaf\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "leaf.py").write_text(
        "import builtins\nbuiltins.leaf_runs = getattr(builtins, 'leaf_runs', 0) + 1\n"
    )
    run(
        f"""
        import builtins, importlib, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from receiver.deferred import defer
        defer("deferredpkg")
        import deferredpkg.sub.leaf
        assert builtins.leaf_runs == 1, builtins.leaf_runs
        assert deferredpkg.sub.leaf is sys.modules["deferredpkg.sub.leaf"]
        assert sys.modules["deferredpkg"].leaf is deferredpkg.sub.leaf
        importlib.reload(deferredpkg.sub.leaf)
        assert builtins.leaf_runs == 2, builtins.leaf_runs
        """
    )


def test_the_stand_in_tells_where_the_module_is_without_loading_it() -> None:
    """find_spec() gives the real spec; inspect.getmodule, which asks every module in
    sys.modules for ``__file__``, leaves the module unloaded."""
    run(
        """
        import importlib.util, inspect, json, sys
        from receiver.deferred import defer
        defer("asyncio")
        spec = importlib.util.find_spec("asyncio")
        assert spec.loader is not None and spec.origin.endswith("asyncio/__init__.py"), spec
        assert spec.submodule_search_locations
        assert inspect.getmodule(json.dumps) is sys.modules["json"]
        assert type(sys.modules["asyncio"]).__name__ == "_StandIn"
        assert not [m for m in sys.modules if m.startswith(("asyncio.", "_asyncio"))]
        """
    )


def test_a_module_that_does_not_exist_is_not_stood_in_for() -> None:
    run(
        """
        import sys
        from receiver.deferred import defer
        defer("no_such_module_here")
        assert "no_such_module_here" not in sys.modules
        try:
            import no_such_module_here
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("imported a module that does not exist")
        """
    )


def _modules_importing_structlog() -> list[str]:
    """The receiver's modules that import structlog when they are imported."""
    package = Path(receiver.__file__).parent
    return sorted(
        ".".join(("receiver", *path.relative_to(package).with_suffix("").parts))
        for path in package.rglob("*.py")
        if re.search(r"^(import structlog|from structlog)", path.read_text(), re.MULTILINE)
    )


def test_the_receivers_structlog_modules_are_many_enough_to_check() -> None:
    assert {"receiver.logs", "receiver.runtime"} <= set(_modules_importing_structlog())


@pytest.mark.parametrize("module", _modules_importing_structlog())
def test_whichever_receiver_module_is_imported_first_asyncio_waits(module: str) -> None:
    """structlog imports asyncio; the deferral must not depend on receiver.logs coming first."""
    out = run(
        f"""
        import sys
        import {module}
        assert "structlog" in sys.modules
        print(sorted(m for m in sys.modules if m.startswith(("asyncio.", "_asyncio"))))
        """
    )
    assert out == "[]"


def test_a_process_without_structlog_holds_no_asyncio_stand_in() -> None:
    """The player's child process imports the receiver package but not structlog."""
    out = run(
        """
        import sys
        import receiver.player_child
        print("asyncio" in sys.modules, "structlog" in sys.modules)
        """
    )
    assert out == "False False"
