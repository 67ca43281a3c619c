"""scripts/install.sh into a temporary root: install, upgrade, uninstall.

Every run uses ``--no-apt`` (the Debian packages are the machine's business) and, except where
the offline ``systemctl --root`` enable is tested, ``--no-systemctl``. The project's
dependencies come from a wheelhouse that ``pip download`` fills once per set of requirements
and keeps in pytest's cache directory (so later runs need no network); ``--pip-args
"--no-index --find-links ..."`` makes the installer use only it. The installer itself makes a
real venv with Debian's ``/usr/bin/python3`` and builds the project from the checkout, as on a Pi.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install.sh"
UNIT_NAME = "loa-receiver.service"
TIMEOUT_S = 180


def requirements() -> list[str]:
    """What the installer's pip needs: the build backend and the project's dependencies."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg", encoding="utf-8")
    runtime = [r for r in setup["options"]["install_requires"].splitlines() if r.strip()]
    build = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    backend: list[str] = build["build-system"]["requires"]
    return sorted({*backend, *runtime})


@pytest.fixture(scope="module")
def wheelhouse(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = requirements()
    key = hashlib.sha256("\n".join([sys.version, *wanted]).encode()).hexdigest()[:16]
    cache = getattr(pytestconfig, "cache", None)
    if cache is not None:
        directory = Path(cache.mkdir(f"install-wheelhouse-{key}"))
    else:
        directory = tmp_path_factory.mktemp("wheelhouse")
    done = directory / ".complete"
    if not done.exists():
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet"),
                *("--disable-pip-version-check", "--only-binary=:all:"),
                *("--dest", str(directory), *wanted),
            ],
            check=True,
            timeout=TIMEOUT_S,
        )
        done.touch()
    return directory


@dataclass
class Tree:
    """A temporary root and the paths the installer writes in it."""

    root: Path

    @property
    def app(self) -> Path:
        return self.root / "opt" / "loa-receiver"

    @property
    def venv(self) -> Path:
        return self.app / "venv"

    @property
    def receiver(self) -> Path:
        return self.venv / "bin" / "receiver"

    @property
    def unit(self) -> Path:
        return self.root / "etc" / "systemd" / "system" / UNIT_NAME

    @property
    def sysusers(self) -> Path:
        return self.root / "usr" / "lib" / "sysusers.d" / "loa-receiver.conf"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "loa-receiver" / "receiver.yaml"

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / "loa-receiver"

    @property
    def cache(self) -> Path:
        return self.root / "var" / "cache" / "loa-receiver"

    def gid(self, group: str) -> int | None:
        for line in (self.root / "etc" / "group").read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if fields[0] == group:
                return int(fields[2])
        return None

    def members(self, group: str) -> list[str]:
        for line in (self.root / "etc" / "group").read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if fields[0] == group:
                return [m for m in fields[3].split(",") if m]
        return []

    def run(
        self,
        *options: str,
        wheels: Path | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        args = ["bash", str(INSTALL), "--root", str(self.root), "--no-apt", *options]
        if wheels is not None:
            args += ["--pip-args", f"--no-index --find-links {wheels}"]
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
            env={**os.environ, **(env or {})},
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result


def new_tree(base: Path) -> Tree:
    """A root that already has the groups root and audio, like Debian (no gpio: not a Pi)."""
    tree = Tree(base / "root")
    (tree.root / "etc").mkdir(parents=True)
    (tree.root / "etc" / "group").write_text("root:x:0:\naudio:x:29:\n", encoding="utf-8")
    return tree


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Tree]:
    base = tmp_path_factory.mktemp("install")
    # Debian's python3-lgpio as Raspberry Pi OS has it: a module and its extension, here two
    # stand-ins that the installer's system python finds.
    system = base / "dist-packages"
    system.mkdir()
    (system / "lgpio.py").write_text("import _lgpio\nFAKE = True\n", encoding="utf-8")
    (system / "_lgpio.py").write_text("", encoding="utf-8")
    tree = new_tree(base)
    tree.run("--no-systemctl", wheels=wheelhouse, env={"PYTHONPATH": str(system)})
    yield tree
    shutil.rmtree(tree.root, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- a first install --------------------------------------------------------------------------


def test_install_puts_the_unit_and_the_user_file_in_place(installed: Tree) -> None:
    assert installed.unit.read_bytes() == (REPO / "systemd" / UNIT_NAME).read_bytes()
    assert mode(installed.unit) == 0o644
    assert installed.sysusers.is_file() and mode(installed.sysusers) == 0o644
    # `receiver` on PATH for technicians: a link to the program (absolute, as seen from the root).
    link = installed.root / "usr" / "local" / "bin" / "receiver"
    assert os.readlink(link) == "/opt/loa-receiver/venv/bin/receiver"


def test_install_creates_the_system_user_in_the_groups_that_exist(installed: Tree) -> None:
    passwd = (installed.root / "etc" / "passwd").read_text(encoding="utf-8")
    (entry,) = [line for line in passwd.splitlines() if line.startswith("loa-receiver:")]
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert int(uid) < 1000 and int(gid) == installed.gid("loa-receiver")  # a system user
    assert (home, shell) == ("/var/lib/loa-receiver", "/usr/sbin/nologin")
    assert installed.members("audio") == ["loa-receiver"]
    # This root has no gpio group: none was made, and the installed file does not ask for it.
    assert installed.gid("gpio") is None
    active = [line for line in installed.sysusers.read_text().splitlines() if line[:1] == "m"]
    assert active == ["m loa-receiver audio"]


def test_install_puts_the_example_config_readable_by_the_daemon_only(installed: Tree) -> None:
    example = REPO / "config" / "receiver.example.yaml"
    assert installed.config.read_bytes() == example.read_bytes()
    assert mode(installed.config) == 0o640 and mode(installed.config.parent) == 0o750
    if os.geteuid() == 0:  # only root can give files away; the installer skips it otherwise
        for path in (installed.config, installed.config.parent):
            owner = path.stat()
            assert (owner.st_uid, owner.st_gid) == (0, installed.gid("loa-receiver")), path
    assert (installed.app / "receiver.example.yaml").read_bytes() == example.read_bytes()
    assert (installed.app / "docs" / "operations.md").is_file()
    assert (installed.app / "docs" / "vi" / "operations.md").is_file()


def test_the_installed_program_runs_from_its_own_venv(installed: Tree) -> None:
    version = re.search(r'__version__ = "([^"]+)"', (REPO / "receiver" / "__init__.py").read_text())
    assert version is not None
    result = subprocess.run(
        [str(installed.receiver), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"loa-receiver {version.group(1)}"
    # The venv is the installer's own (Debian's python3), not the development one, and the
    # package is installed into it, not linked to the checkout.
    target = installed.venv.resolve()
    assert target.parent == installed.app / "releases"
    assert "include-system-site-packages = false" in (target / "pyvenv.cfg").read_text()
    found = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import receiver; print(receiver.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=True,
    )
    assert Path(found.stdout.strip()).resolve().is_relative_to(target)
    # The unit starts venv/bin/receiver; its first line names the release's own python, so a
    # running daemon keeps importing from its release while an upgrade switches the link.
    shebang = installed.receiver.read_text(encoding="utf-8").splitlines()[0]
    assert shebang == f"#!{target}/bin/python3"


def test_debians_lgpio_module_is_linked_into_the_venv_and_nothing_else(installed: Tree) -> None:
    result = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import lgpio; print(lgpio.FAKE)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "True"), result.stderr
    site = next((installed.venv / "lib").glob("python3*/site-packages"))
    links = sorted(p.name for p in site.iterdir() if p.is_symlink())
    assert links == ["_lgpio.py", "lgpio.py"]


def test_check_config_names_the_installed_configs_placeholders_and_exits_78(
    installed: Tree,
) -> None:
    result = subprocess.run(
        [str(installed.receiver), "check-config", str(installed.config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=False,
    )
    assert result.returncode == 78, result.stdout + result.stderr  # what the daemon would exit
    assert result.stdout.startswith(f"{installed.config}: valid (device loa-25-07873-001")
    assert "but the daemon will refuse to start with it" in result.stdout
    assert "broker.host: 'mqtt.example.vn' is the example's placeholder" in result.stderr


def test_a_second_install_is_refused_and_points_to_upgrade(installed: Tree) -> None:
    result = installed.run("--no-systemctl", check=False)
    assert result.returncode != 0
    assert "already installed" in result.stderr and "--upgrade" in result.stderr


# --- upgrade and uninstall --------------------------------------------------------------------


def test_upgrade_keeps_config_and_state_and_uninstall_keeps_them_too(
    tmp_path: Path, wheelhouse: Path
) -> None:
    tree = new_tree(tmp_path)
    # Without --no-systemctl: for another root the installer could only enable, offline; with
    # the example's placeholders it does not, so the next boot does not start a doomed daemon.
    result = tree.run(wheels=wheelhouse)
    wants = tree.root / "etc/systemd/system/multi-user.target.wants" / UNIT_NAME
    assert not wants.exists() and "not enabled" in result.stdout
    assert "systemctl enable --now loa-receiver" in result.stdout
    first = tree.venv.resolve()

    # The example not filled in yet: no version could start with it, so an upgrade (a package
    # reinstalled before its first configuration) goes on, and says what is left to do.
    original = tree.config.read_text(encoding="utf-8")
    upgraded = tree.run("--upgrade", wheels=wheelhouse)
    assert "is the example's placeholder" in upgraded.stderr
    assert "not ready for this version either" in upgraded.stdout
    second = tree.venv.resolve()
    assert second != first

    # A config the new version refuses and the version in place accepted (an earlier version
    # with laxer rules; here a stand-in that answers as one) stops the upgrade before anything
    # is switched: the running loudspeaker is not restarted into a refusal.
    in_place = second / "bin" / "receiver"
    real_program = in_place.read_bytes()
    in_place.write_text('#!/bin/sh\necho "$2: OK — device loa-25-07873-001 in prod"\n')
    tree.config.write_text(original.replace("env: prod", "env: Prod"), encoding="utf-8")
    releases = sorted((tree.app / "releases").iterdir())
    refused = tree.run("--upgrade", wheels=wheelhouse, check=False)
    assert refused.returncode != 0 and "env: 'Prod' is not a valid id" in refused.stderr
    assert "the old version stays" in refused.stderr
    assert tree.venv.resolve() == second
    assert sorted((tree.app / "releases").iterdir()) == releases
    in_place.write_bytes(real_program)

    edited = original.replace("device_id: loa-25-07873-001", "device_id: loa-25-07873-042")
    assert "loa-25-07873-042" in edited
    central = base64.b64encode(
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()
    edited = (
        edited.replace("host: mqtt.example.vn", "host: mqtt.tinh-25.vn")
        .replace("central-commune-25-07873-placeholder", "central-commune-25-07873")
        .replace("D2a95YId0a+MgHdAYzSwhqRFK88Ffq4QRPqR4OEb020=", central)
        .replace("pin_factory: lgpio", "pin_factory: mock")  # no python3-lgpio in this root
    )
    tree.config.write_text(edited, encoding="utf-8")
    tree.state.mkdir(parents=True)
    (tree.state / "state.db").write_bytes(b"replay floors")
    tree.cache.mkdir(parents=True)
    (tree.cache / ("0" * 64)).write_bytes(b"media")

    result = tree.run("--upgrade", wheels=wheelhouse)
    assert "kept the existing config" in result.stdout
    assert tree.config.read_text(encoding="utf-8") == edited and mode(tree.config) == 0o640
    assert (tree.state / "state.db").read_bytes() == b"replay floors"
    third = tree.venv.resolve()
    assert third != second and second.is_dir()  # the previous release stays for a running daemon
    check = subprocess.run(
        [str(tree.receiver), "check-config", str(tree.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0 and "loa-25-07873-042" in check.stdout, check.stderr

    # A technician enabled it once the config was real (as systemctl --root would).
    wants.parent.mkdir(parents=True, exist_ok=True)
    wants.symlink_to(f"/etc/systemd/system/{UNIT_NAME}")
    result = tree.run("--uninstall")
    assert not tree.app.exists() and not tree.unit.exists() and not wants.exists()
    assert not tree.cache.exists() and not (tree.root / "usr/local/bin/receiver").is_symlink()
    assert tree.config.read_text(encoding="utf-8") == edited
    assert (tree.state / "state.db").read_bytes() == b"replay floors"
    assert "kept" in result.stdout and str(tree.config.parent) in result.stdout
    assert str(tree.state) in result.stdout
    # The user stays with the files it owns.
    assert tree.sysusers.is_file() and tree.gid("loa-receiver") is not None


def test_upgrade_of_nothing_is_refused(tmp_path: Path) -> None:
    result = new_tree(tmp_path).run("--upgrade", "--no-systemctl", check=False)
    assert result.returncode != 0 and "not installed" in result.stderr


def test_an_unknown_option_is_refused(tmp_path: Path) -> None:
    result = new_tree(tmp_path).run("--colour", check=False)
    assert result.returncode != 0 and "unknown option: --colour" in result.stderr


def test_the_scripts_parse_and_pass_shellcheck_where_it_is_installed() -> None:
    subprocess.run(["bash", "-n", str(INSTALL)], check=True, timeout=60)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:  # an extra lint, not the product: not installed by bootstrap
        result = subprocess.run(
            [shellcheck, str(INSTALL)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout


def test_the_installed_program_speaks_vietnamese_when_lang_is_vietnamese(
    installed: Tree, tmp_path: Path
) -> None:
    # The catalog was compiled when the installer built the program (no msgfmt on the board).
    site = next((installed.venv / "lib").glob("python3*/site-packages"))
    assert (site / "receiver" / "locale" / "vi" / "LC_MESSAGES" / "loa-receiver.mo").is_file()

    def receiver(lang: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "LANG": lang}
        return subprocess.run(
            [str(installed.receiver), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            env=env,
            check=False,
        )

    vi = receiver("vi_VN.UTF-8", "check-config", str(installed.config))
    assert vi.returncode == 78, vi.stderr  # the placeholders
    assert "hợp lệ (thiết bị loa-25-07873-001 trong môi trường prod" in vi.stdout
    assert "cảnh báo: " in vi.stderr and "là giá trị mẫu" in vi.stderr
    english = receiver("C.UTF-8", "check-config", str(installed.config))
    assert "valid (device loa-25-07873-001 in prod" in english.stdout

    config = tmp_path / "receiver.yaml"
    text = installed.config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("/var/lib/loa-receiver", str(tmp_path / "state")).replace(
            "/var/cache/loa-receiver", str(tmp_path / "cache")
        ),
        encoding="utf-8",
    )
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "status.json").write_text(
        '{"device": "loa-25-07873-001", "online": true, "state": "idle", "volume": 70}',
        encoding="utf-8",
    )
    status = receiver("vi_VN.UTF-8", "status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    labels = [line.split("  ")[0] for line in status.stdout.splitlines()]
    assert labels[:2] == ["thiết bị", "cập nhật"] and "hộp thư đi" in labels
    assert "không phát gì (đang nghỉ)" in status.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("device_id: x\nbroker:\n\thost: y\n", encoding="utf-8")
    syntax = receiver("vi_VN.UTF-8", "check-config", str(broken))
    assert syntax.returncode == 78
    assert f"{broken}:3:1: lỗi cú pháp YAML: có ký tự tab" in syntax.stderr
