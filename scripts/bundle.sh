#!/usr/bin/env bash
# `make bundle ARCH=arm64|armhf|amd64`: one .deb per architecture that installs loa-receiver
# with no network but Debian's own packages (Python 3.11 of Debian 12 / Raspberry Pi OS).
#
#   dist/loa-receiver_<version>_<arch>.deb       (another directory: BUNDLE_DIR=...)
#
# Inside: /usr/share/loa-receiver/src (the installer, the unit, the example config, the docs
# and the program's source) and /usr/share/loa-receiver/wheels (every Python dependency as a
# wheel built for that architecture and CPython 3.11, plus the build backend). Its maintainer
# scripts run scripts/install.sh with --no-apt and "--no-index --find-links" on those wheels:
#   apt install ./loa-receiver_<v>_arm64.deb    first install; config from the example, the
#                                                service neither started nor enabled
#   apt install ./loa-receiver_<v+1>_arm64.deb  upgrade (install.sh --upgrade): config and
#                                                state kept, the daemon restarted if it ran
#   apt remove loa-receiver                      install.sh --uninstall: config and state kept
# apt fetches the Debian dependencies (Depends: below) from the board's usual archive.
#
# armhf: PyYAML and cffi publish no armv7 wheels, so on armhf they come from Debian 12
# (python3-yaml 6.0, python3-cffi 1.15.1 with python3-pycparser 2.21, in Depends:) and the venv
# is made with access to Debian's packages (install.sh --system-site-packages): see
# ARMHF_FROM_DEBIAN. cryptography does publish armv7 wheels (manylinux_2_28/2_31_armv7l: glibc
# 2.31 or newer, Debian 12 has 2.36), but from 46.0.1 on they require cffi>=2: the dependencies
# are therefore resolved against Debian's exact versions, which picks the newest cryptography
# that works with Debian's cffi (46.0.0 today) without a hand-kept cap.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf 'bundle: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'bundle: %s\n' "$*"; }

ARCH=${1:-${ARCH:-}}
PY=${VENV:-.venv}/bin/python
[[ -x $PY ]] || die "$PY missing: run scripts/bootstrap.sh first"
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (package dpkg)"
case $ARCH in
  arm64) PLATFORMS=(manylinux_2_28_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64 linux_aarch64) ;;
  armhf) PLATFORMS=(manylinux_2_31_armv7l manylinux_2_28_armv7l manylinux_2_17_armv7l manylinux2014_armv7l linux_armv7l) ;;
  amd64) PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 linux_x86_64) ;;
  *) die "ARCH must be arm64, armhf or amd64 (make bundle ARCH=arm64)" ;;
esac

VERSION=$("$PY" -c 'import receiver; print(receiver.__version__)')
NAME=loa-receiver
DIST=${BUNDLE_DIR:-dist}
OUT=$DIST/${NAME}_${VERSION}_${ARCH}.deb
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/pkg
share=$pkg/usr/share/$NAME

# 1. The wheels: the project's runtime dependencies for this architecture, binary only, and the
#    build backend (pure Python) that install.sh's pip needs to build the program itself.
mapfile -t runtime < <("$PY" -c '
import configparser
c = configparser.ConfigParser(); c.read("setup.cfg")
print("\n".join(r.strip() for r in c["options"]["install_requires"].splitlines() if r.strip()))')
mapfile -t backend < <("$PY" -c '
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
# On armhf, what Debian 12 provides instead of a wheel: "distribution==Debian's version package".
ARMHF_FROM_DEBIAN=("PyYAML==6.0 python3-yaml" "cffi==1.15.1 python3-cffi" "pycparser==2.21 python3-pycparser")
debian_python=()
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
target_args=(--python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none)
mkdir -p "$share/wheels"
if [[ $ARCH == armhf ]]; then
  # pip cannot resolve for armv7 with Debian's packages standing in for wheels, so the versions
  # are resolved for aarch64 (the same CPython 3.11 and the same dependency markers; Debian's
  # cffi 1.15.1 and PyYAML 6.0 have wheels there) with Debian's versions pinned, then exactly
  # those versions, minus Debian's, are downloaded for armv7 without further resolving.
  constraints=$work/debian-constraints.txt
  debian_names=()
  for entry in "${ARMHF_FROM_DEBIAN[@]}"; do
    read -r pin package <<<"$entry"
    printf '%s\n' "$pin" >>"$constraints"
    debian_names+=("${pin%%==*}")
    debian_python+=("$package (>= ${pin#*==})")
  done
  say "resolving the dependencies for armhf against Debian 12's ${debian_names[*]}"
  "$PY" -m pip install --quiet --disable-pip-version-check --dry-run --ignore-installed \
    --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 "${target_args[@]}" --target "$work/resolve" \
    --constraint "$constraints" --report "$work/resolved.json" "${runtime[@]}" \
    || die "pip could not resolve ${runtime[*]} together with Debian 12's ${debian_names[*]}"
  mapfile -t runtime < <("$PY" - "$work/resolved.json" "${debian_names[@]}" <<'RESOLVED'
import json, re, sys
def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
from_debian = {norm(name) for name in sys.argv[2:]}
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if norm(meta["name"]) not in from_debian:
        print(f"{meta['name']}=={meta['version']}")
RESOLVED
  )
  say "downloading the wheels for $ARCH (CPython 3.11): ${runtime[*]}"
  "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
    "${platform_args[@]}" "${target_args[@]}" --dest "$share/wheels" "${runtime[@]}" \
    || die "pip could not find armv7 wheels for all of: ${runtime[*]}"
else
  say "downloading the wheels for $ARCH (CPython 3.11): ${runtime[*]}"
  "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    "${platform_args[@]}" "${target_args[@]}" --dest "$share/wheels" "${runtime[@]}" \
    || die "pip could not find wheels for $ARCH for all of: ${runtime[*]}"
fi
# The build backend and what it needs (wheel needs packaging): pure Python, any architecture.
"$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  --python-version 3.11 --dest "$share/wheels" "${backend[@]}"

# 2. The source the installer works from (what scripts/install.sh copies or installs).
mkdir -p "$share/src/docs/vi"
cp -r pyproject.toml setup.cfg setup.py README.md LICENSE receiver receiver_entry.py scripts systemd config \
  "$share/src/"
cp docs/operations.md "$share/src/docs/"
cp docs/vi/operations.md "$share/src/docs/vi/"
find "$share/src" -name __pycache__ -prune -exec rm -rf {} +

# 3. The package's control files.
mkdir -p "$pkg/DEBIAN"
depends="python3 (>= 3.11), python3 (<< 3.12), python3-venv, libvlc5, libvlc-bin, vlc-plugin-base, ca-certificates, systemd"
for d in "${debian_python[@]}"; do depends+=", $d"; done
installed_kib=$(du -sk "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: loa-receiver maintainers <root@localhost>
Installed-Size: $installed_kib
Depends: $depends
Recommends: python3-lgpio
Section: sound
Priority: optional
Description: commune loudspeaker receiver (signed MQTT commands, audio, amplifier relay)
 Verifies signed MQTT commands and programmes, plays files and live relays through libVLC,
 switches the amplifier relay over GPIO and reports what it did. The Python dependencies are
 bundled as wheels for $ARCH: installing needs no network but Debian's own packages.
CONTROL
pip_args="--no-index --find-links /usr/share/$NAME/wheels"
system_site=""
[[ $ARCH == armhf ]] && system_site="--system-site-packages"
cat >"$pkg/DEBIAN/postinst" <<POSTINST
#!/bin/sh
# Install or upgrade with the bundled wheels (scripts/install.sh); config and state are kept.
set -e
if [ "\$1" = configure ]; then
  mode=""
  [ -f /etc/systemd/system/$NAME.service ] && mode=--upgrade
  bash /usr/share/$NAME/src/scripts/install.sh \$mode --no-apt $system_site --pip-args "$pip_args"
fi
POSTINST
cat >"$pkg/DEBIAN/prerm" <<PRERM
#!/bin/sh
# On removal only (not on upgrade): stop the service (relay off), remove program and unit,
# keep /etc/$NAME and /var/lib/$NAME.
set -e
if [ "\$1" = remove ]; then
  bash /usr/share/$NAME/src/scripts/install.sh --uninstall
fi
PRERM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm"

mkdir -p "$DIST"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$OUT" >/dev/null
say "built $OUT ($(du -h "$OUT" | cut -f1)); wheels: $(cd "$share/wheels" && ls | tr '\n' ' ')"
