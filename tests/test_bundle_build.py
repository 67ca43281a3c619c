"""scripts/bundle.sh builds, for each board, a .deb whose wheels all run there.

What is checked without the board (systemtest/test_bundle.py installs and plays on it under
qemu): every wheel is pure Python or built for the architecture and CPython 3.11; on armhf,
where PyYAML and cffi publish no wheels, they are in Depends: instead (Debian 12's
python3-yaml and python3-cffi), the venv is made with access to them, and the cryptography
inside accepts Debian's cffi 1.15.1 (cryptography 46.0.1 and later require cffi>=2).
Needs PyPI, as the bundle does.
"""

from __future__ import annotations

import email
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DEBIAN_CFFI = Version("1.15.1")
# The machine part of a wheel's platform tag on each Debian architecture.
MACHINES = {"arm64": "aarch64", "armhf": "armv7l"}


def wheel_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "usr/share/loa-receiver/wheels").glob("*.whl"))


def project(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("-", maxsplit=1)[0]).lower()


@pytest.fixture(scope="module", params=sorted(MACHINES))
def bundle(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path]:
    arch: str = request.param
    out = tmp_path_factory.mktemp(f"bundle-{arch}")
    result = subprocess.run(
        ["bash", str(REPO / "scripts/bundle.sh"), arch],
        env={**os.environ, "BUNDLE_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (deb,) = out.glob(f"loa-receiver_*_{arch}.deb")
    root = out / "root"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True)
    return arch, deb, root


def test_every_wheel_is_pure_python_or_built_for_the_board(bundle: tuple[str, Path, Path]) -> None:
    arch, _deb, root = bundle
    names = wheel_names(root)
    assert any(project(n) == "cryptography" for n in names), names
    for name in names:
        tags = name.removesuffix(".whl").split("-")[-3:]
        python, abi, platform = tags
        assert platform == "any" or MACHINES[arch] in platform, name
        assert python in {"py3", "py2.py3", "cp311"}, name
        assert abi in {"none", "abi3", "cp311"}, name


def test_the_armhf_bundle_takes_yaml_and_cffi_from_debian(
    bundle: tuple[str, Path, Path],
) -> None:
    arch, deb, root = bundle
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    postinst = (root / "DEBIAN/postinst").read_text(encoding="utf-8")
    bundled = {project(n) for n in wheel_names(root)}
    if arch != "armhf":
        assert {"pyyaml", "cffi"} <= bundled
        assert "python3-yaml" not in depends and "--system-site-packages" not in postinst
        return
    assert not {"pyyaml", "cffi", "pycparser"} & bundled
    assert "python3-yaml (>= 6.0)" in depends and "python3-cffi (>= 1.15.1)" in depends
    assert "--system-site-packages" in postinst
    (wheel,) = (root / "usr/share/loa-receiver/wheels").glob("cryptography-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = email.message_from_bytes(archive.read(metadata)).get_all("Requires-Dist")
    board = {
        "python_full_version": "3.11.2",
        "python_version": "3.11",
        "platform_machine": "armv7l",
    }
    needed = [
        r
        for r in map(Requirement, requires or [])
        if r.name == "cffi" and (r.marker is None or r.marker.evaluate({**board, "extra": ""}))
    ]
    assert needed, requires
    assert all(r.specifier.contains(DEBIAN_CFFI) for r in needed), [str(r) for r in needed]
