#!/usr/bin/env bash
# Prove a board's bundle on its architecture (systemtest/test_bundle.py):
#
#   scripts/bundletest.sh ARCH [PYTEST-ARGS...]   arm64 or armhf: make the root, the .deb, run
#   scripts/bundletest.sh --make-root ARCH        only make (or reuse) the root
#
# The Debian 12 root of that architecture runs under qemu-user-static (scripts/debian-root.sh;
# kept in $LOA_SYSTEMTEST_CACHE, default /var/cache/loa-receiver-systemtest, and reused). It
# holds the bundle's Debian dependencies, so that a run installs only the .deb; on armhf it
# lacks python3-yaml and python3-cffi on purpose: the package's Depends: must bring them.
# `make systemtest` proves arm64 this way; `make bundletest ARCH=armhf` proves armhf.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf 'bundletest: error: %s\n' "$*" >&2; exit 1; }

make_root_only=0
if [[ ${1:-} == --make-root ]]; then
  make_root_only=1
  shift
fi
ARCH=${1:-}
[[ $# -gt 0 ]] && shift
case $ARCH in
  arm64) qemu=qemu-aarch64-static ;;
  armhf) qemu=qemu-arm-static ;;
  *) die "ARCH must be arm64 or armhf (make bundletest ARCH=armhf)" ;;
esac
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and systemd-nspawn)"
. scripts/debs.sh
install_missing_debs bundletest debootstrap systemd-container qemu-user-static mosquitto
for tool in debootstrap systemd-nspawn mosquitto dpkg-deb "$qemu"; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

CACHE=${LOA_SYSTEMTEST_CACHE:-/var/cache/loa-receiver-systemtest}
ROOT=$CACHE/bookworm-$ARCH
mkdir -p "$CACHE"
bash scripts/debian-root.sh "$ARCH" "$ROOT" python3 python3-venv ca-certificates systemd \
  libvlc5 libvlc-bin vlc-plugin-base
((make_root_only)) && exit 0

PY=${VENV:-.venv}/bin/python
[[ -x $PY ]] || die "$PY missing: run scripts/bootstrap.sh first"
bash scripts/bundle.sh "$ARCH"
version=$("$PY" -c 'import receiver; print(receiver.__version__)')
BUNDLE=$PWD/dist/loa-receiver_${version}_$ARCH.deb
[[ -f $BUNDLE ]] || die "bundle.sh made no $BUNDLE"

upper=${ARCH^^}
export LOA_BUNDLE_ARCHES=$ARCH "LOA_BUNDLE_ROOT_$upper=$ROOT" "LOA_BUNDLE_DEB_$upper=$BUNDLE"
exec "$PY" -m pytest systemtest/test_bundle.py -p no:cacheprovider -v -rA "$@"
