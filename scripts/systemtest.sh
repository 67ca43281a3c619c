#!/usr/bin/env bash
# `make systemtest`: the installed unit booted under a real systemd (see systemtest/conftest.py).
#
# Makes, once, a Debian 12 root with systemd, Python and libVLC (scripts/debian-root.sh; kept in
# $LOA_SYSTEMTEST_CACHE, default /var/cache/loa-receiver-systemtest, and reused) and a wheelhouse
# of the project's dependencies for the root's Python 3.11, then runs systemtest/test_system.py
# as root, and proves the arm64 bundle on arm64 (scripts/bundletest.sh arm64; the armhf bundle
# has its own target, `make bundletest ARCH=armhf`, to keep this tier's time down).
# Needs root; installs what is missing of debootstrap, systemd-container (systemd-nspawn),
# qemu-user-static and mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf 'systemtest: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (systemd-nspawn)"
. scripts/debs.sh
install_missing_debs systemtest debootstrap systemd-container qemu-user-static mosquitto
for tool in debootstrap systemd-nspawn nsenter mosquitto dpkg-deb qemu-aarch64-static; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
PY=${VENV:-.venv}/bin/python
[[ -x $PY ]] || die "$PY missing: run scripts/bootstrap.sh first"

CACHE=${LOA_SYSTEMTEST_CACHE:-/var/cache/loa-receiver-systemtest}
ROOT=$CACHE/bookworm-amd64
mkdir -p "$CACHE"

# The arm64 root (for the bundle's proof) is made under qemu-user-static, the slowest step on a
# clean machine: in the background, while the amd64 root is made and its tests run. With the
# bundle's Debian dependencies already in it, a run installs only the .deb.
bash scripts/bundletest.sh --make-root arm64 >"$CACHE/arm64-root.out" 2>&1 &
arm64_root=$!
trap 'kill "$arm64_root" 2>/dev/null || true' EXIT

bash scripts/debian-root.sh amd64 "$ROOT" systemd systemd-sysv dbus python3 python3-venv \
  ca-certificates libvlc5 libvlc-bin vlc-plugin-base

# The wheels the installer needs inside (no PyPI from the container): the root's Python is
# Debian's 3.11, as the host's.
requirements=$("$PY" -c 'from tests.test_install import requirements; print("\n".join(requirements()))')
key=$(printf '%s\n' "$requirements" | sha256sum | cut -c1-16)
WHEELS=$CACHE/wheels-$key
if [[ ! -f $WHEELS/.complete ]]; then
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --dest "$WHEELS" $requirements
  touch "$WHEELS/.complete"
fi
export LOA_SYSTEMTEST_ROOT=$ROOT LOA_SYSTEMTEST_WHEELS=$WHEELS
# Extra arguments go to both runs; a -k that selects nothing in one of them (exit 5) is fine.
status=0
tier() {
  local rc=0
  "$@" || rc=$?
  if [[ $rc -ne 0 && $rc -ne 5 ]]; then status=$rc; fi
}
tier "$PY" -m pytest systemtest/test_system.py -p no:cacheprovider -v -rA "$@"
if ! wait "$arm64_root"; then
  cat "$CACHE/arm64-root.out" >&2
  die "could not make the arm64 root"
fi
cat "$CACHE/arm64-root.out"
tier bash scripts/bundletest.sh arm64 "$@"
exit "$status"
