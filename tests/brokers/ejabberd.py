"""A two-node ejabberd cluster (Debian's ejabberd 23.01, ``mod_mqtt``) on loopback, for tests.

Each node is ``erl ... -s ejabberd`` run directly (as ``ejabberdctl foreground`` would, without
its switch to the ``ejabberd`` user), with a config, a Mnesia directory and a log of its own in
the test's directory, and a node name of its own (``ejabberd-<tag>-<i>@localhost``), so it never
meets a system ejabberd. Both share ``HOME`` (so the same Erlang cookie); the second joins the
first's cluster. Users are registered with ``ejabberd_ctl``. The MQTT listener is set as
docs/operations.md asks of a cluster: ``max_payload_size`` 32 KiB (ejabberd ignores the client's
Maximum Packet Size) and a session expiry of 7 days (the default caps it at 5 minutes).

A missing ejabberd fails the test: ``scripts/bootstrap.sh`` installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.lab.tools import MissingToolError, pick_port

ERL_LIBS = "/usr/lib/x86_64-linux-gnu"
EJABBERD_EBIN = Path(ERL_LIBS) / "ejabberd-23.01" / "ebin"

CONFIG = """\
hosts:
  - localhost
loglevel: info
certfiles: []
listen:
  -
    port: {port}
    ip: "127.0.0.1"
    module: mod_mqtt
    backlog: 1000
    max_payload_size: 32768
auth_method: [internal]
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
modules:
  mod_mqtt:
    session_expiry: 7d
    max_queue: 100000
"""


def _find_erl() -> str:
    erl = shutil.which("erl")
    if erl is None or not EJABBERD_EBIN.is_dir():
        raise MissingToolError(
            "ejabberd is not installed: these tests need Debian's ejabberd 23.01 "
            "(scripts/bootstrap.sh installs it: apt-get install ejabberd)"
        )
    return erl


class EjabberdNode:
    def __init__(self, home: Path, workdir: Path, name: str) -> None:
        self.erl = _find_erl()
        self.home = home
        self.workdir = workdir
        self.name = name
        self.host = "127.0.0.1"
        self.port = pick_port()
        self.spool = workdir / "spool"
        self.log = workdir / "ejabberd.log"
        self.config = workdir / "ejabberd.yml"
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.spool.mkdir(exist_ok=True)
        self.config.write_text(CONFIG.format(port=self.port), encoding="utf-8")

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "ERL_LIBS": ERL_LIBS,
            "EJABBERD_CONFIG_PATH": str(self.config),
            "EJABBERD_LOG_PATH": str(self.log),
        }

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self.workdir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [self.erl, "-sname", self.name, "-noinput",
                 "-mnesia", "dir", f'"{self.spool}"', "-s", "ejabberd"],
                cwd=self.workdir, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ejabberd {self.name} exited:\n{self.tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.1)
        raise AssertionError(f"ejabberd {self.name} did not listen within {timeout_s} s")

    def ctl(self, *words: str, timeout_s: float = 60.0) -> str:
        done = subprocess.run(
            [self.erl, "-sname", f"ctl-{uuid.uuid4().hex[:8]}@localhost", "-hidden", "-noinput",
             "-s", "ejabberd_ctl", "-extra", self.name, *words],
            env=self.env(), capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"ejabberdctl {' '.join(words)}: {done.stdout}{done.stderr}")
        return done.stdout

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "".join(self.log.read_text(errors="replace").splitlines(True)[-lines:])
        return "(no log)"


class EjabberdCluster:
    """Two ejabberd nodes in one cluster; users registered once (Mnesia shares them)."""

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        tag = uuid.uuid4().hex[:6]
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            EjabberdNode(home, workdir / f"node{i}", f"ejabberd-{tag}-{i}@localhost")
            for i in (1, 2)
        ]
        self.users = users

    def start(self) -> None:
        first, second = self.nodes
        first.start()
        second.start()
        second.ctl("join_cluster", first.name)
        for user, password in self.users.items():
            first.ctl("register", user, "localhost", password)
        listed = first.ctl("list_cluster")
        if second.name not in listed:
            raise AssertionError(f"the second node did not join: {listed}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
