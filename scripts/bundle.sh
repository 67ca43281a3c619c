#!/usr/bin/env bash
# `make bundle ARCH=arm64|armhf|amd64`: one .deb per architecture that installs loa-receiver
# with no network but Debian's own packages (Python 3.11 of Debian 12 / Raspberry Pi OS).
#
#   dist/loa-receiver_<version>_<arch>.deb
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
# armhf: PyYAML publishes no armv7 wheel, so there it comes from Debian instead (python3-yaml
# 6.0 in Debian 12, in Depends:) and the venv is made with access to Debian's packages
# (install.sh --system-site-packages): see ARMHF_FROM_DEBIAN. cryptography and cffi do publish
# armv7 wheels (manylinux_2_31_armv7l: glibc 2.31 or newer, Debian 12 has 2.36).
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
OUT=dist/${NAME}_${VERSION}_${ARCH}.deb
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
ARMHF_FROM_DEBIAN=(PyYAML)
debian_python=()
if [[ $ARCH == armhf ]]; then
  keep=()
  for req in "${runtime[@]}"; do
    skip=0
    for name in "${ARMHF_FROM_DEBIAN[@]}"; do [[ ${req,,} == ${name,,}* ]] && skip=1; done
    ((skip)) || keep+=("$req")
  done
  runtime=("${keep[@]}")
  debian_python=(python3-yaml)
fi
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
mkdir -p "$share/wheels"
say "downloading the wheels for $ARCH (CPython 3.11): ${runtime[*]}"
"$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  "${platform_args[@]}" --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --dest "$share/wheels" "${runtime[@]}" \
  || die "pip could not find wheels for $ARCH for all of: ${runtime[*]}$(
    [[ $ARCH == armhf ]] && printf '%s' "; for armhf, cryptography's armv7 wheel needs cffi>=2," \
      " which publishes no armv7 wheel (Debian 12 has cffi 1.15 and cryptography 38): build" \
      " a cffi wheel once on an armhf board or root (pip wheel cffi) and add it with" \
      " PIP_FIND_LINKS=DIR"
  )"
# The build backend and what it needs (wheel needs packaging): pure Python, any architecture.
"$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  --python-version 3.11 --dest "$share/wheels" "${backend[@]}"

# 2. The source the installer works from (what scripts/install.sh copies or installs).
mkdir -p "$share/src/docs/vi"
cp -r pyproject.toml setup.cfg setup.py README.md LICENSE receiver scripts systemd config "$share/src/"
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

mkdir -p dist
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$OUT" >/dev/null
say "built $OUT ($(du -h "$OUT" | cut -f1)); wheels: $(cd "$share/wheels" && ls | tr '\n' ' ')"
