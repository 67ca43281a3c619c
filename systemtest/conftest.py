"""The system tier: the installed unit booted under a real systemd (Debian 12's, in a container).

``make systemtest`` (scripts/systemtest.sh) makes the Debian root once (scripts/debian-root.sh,
kept under /var/cache/loa-receiver-systemtest) and a wheelhouse, then runs these tests as root.
Each session boots the root with ``systemd-nspawn --boot --volatile=overlay``: the cached root
is never changed, every write goes to a tmpfs layer that vanishes at the end. The container
shares the host's network, so the daemon inside reaches the Mosquitto and the media server
these tests start on the host's loopback. Commands run inside through ``nsenter`` into the
container's PID 1 (no machined, no dbus on the host).

Anything missing (not root, no systemd-nspawn, no root made) fails loudly: a skipped tier
would pass unseen.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = "loa-receiver.service"
BOOT_TIMEOUT_S = 90


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this tier with `make systemtest`", pytrace=False)
    return value


class Container:
    """A booted Debian root; :meth:`sh` runs a shell command inside it, as root."""

    def __init__(self, root: Path, wheels: Path) -> None:
        for tool in ("systemd-nspawn", "nsenter"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is missing (package systemd-container / util-linux)")
        if os.geteuid() != 0:
            pytest.fail("the system tier must run as root (systemd-nspawn)", pytrace=False)
        if not (root / ".complete").exists():
            pytest.fail(f"{root} is not a complete Debian root (scripts/debian-root.sh)")
        self.log = open(REPO / ".systemtest-console.log", "w", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                "systemd-nspawn", "--boot", "--register=no", "--keep-unit",
                "--volatile=overlay", "--system-call-filter=bpf adjtimex clock_adjtime",
                "--console=pipe", "--machine=loa-systemtest", "-D", str(root),
                f"--bind-ro={REPO}:/src", f"--bind-ro={wheels}:/wheels",
            ],
            env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.leader = self._find_leader()
        self._wait_booted()

    def _find_leader(self) -> int:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"systemd-nspawn exited: {(REPO / '.systemtest-console.log').read_text()}"
                )
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            time.sleep(0.2)
        pytest.fail("the container's systemd did not start")

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        pytest.fail(f"the container did not finish booting (state {state!r})")

    def sh(
        self, command: str, *, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the container: {command}\nexit {result.returncode}\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def show(self, unit: str = UNIT) -> dict[str, str]:
        out = self.sh(
            f"systemctl show {unit} -p ActiveState,SubState,Result,NRestarts,MainPID,"
            "ExecMainStatus,ExecMainCode,UnitFileState,InvocationID"
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait(
        self, predicate: Callable[[dict[str, str]], bool], what: str, timeout: float = 60
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        state = self.show()
        while time.monotonic() < deadline:
            state = self.show()
            if predicate(state):
                return state
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; unit: {state}\n{self.journal()}")

    def journal(self, since_cursor: str | None = None, unit: str = UNIT) -> str:
        after = f"--after-cursor={shlex.quote(since_cursor)}" if since_cursor else ""
        return self.sh(f"journalctl -u {unit} -o cat --no-pager {after}", check=False).stdout

    def cursor(self) -> str:
        out = self.sh("journalctl -n 0 --show-cursor --no-pager", check=False).stdout
        return out.strip().rsplit("cursor: ", 1)[-1]

    def write(self, path: str, text: str, mode: str = "0644", owner: str = "root:root") -> None:
        quoted = shlex.quote(path)
        command = f"mkdir -p $(dirname {quoted}) && cat > {quoted} && chmod {mode} {quoted}"
        subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c",
             f"{command} && chown {owner} {quoted}"],
            input=text, text=True, check=True, timeout=60,
        )  # fmt: skip

    def close(self) -> None:
        # SIGTERM asks nspawn to shut the container down cleanly; then it is killed.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    box = Container(
        Path(_required("LOA_SYSTEMTEST_ROOT")), Path(_required("LOA_SYSTEMTEST_WHEELS"))
    )
    try:
        yield box
    finally:
        box.close()
