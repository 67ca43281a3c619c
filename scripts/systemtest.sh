#!/usr/bin/env bash
# `make systemtest`: the installed unit booted under a real systemd (see systemtest/conftest.py).
#
# Makes, once, a Debian 12 root with systemd, Python and libVLC (scripts/debian-root.sh; kept in
# $LOA_SYSTEMTEST_CACHE, default /var/cache/loa-receiver-systemtest, and reused) and a wheelhouse
# of the project's dependencies for the root's Python 3.11, then runs systemtest/ as root.
# Needs root, debootstrap, systemd-nspawn (systemd-container), nsenter, mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf 'systemtest: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (systemd-nspawn)"
for tool in debootstrap systemd-nspawn nsenter mosquitto dpkg-deb qemu-aarch64-static; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
PY=${VENV:-.venv}/bin/python
[[ -x $PY ]] || die "$PY missing: run scripts/bootstrap.sh first"

CACHE=${LOA_SYSTEMTEST_CACHE:-/var/cache/loa-receiver-systemtest}
ROOT=$CACHE/bookworm-amd64
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

# The arm64 bundle, proved on arm64: an arm64 root under qemu-user-static (binfmt_misc).
ARM64_ROOT=$CACHE/bookworm-arm64
# With the bundle's Debian dependencies already in the root, a rerun installs only the .deb.
bash scripts/debian-root.sh arm64 "$ARM64_ROOT" python3 python3-venv ca-certificates systemd \
  libvlc5 libvlc-bin vlc-plugin-base
bash scripts/bundle.sh arm64
BUNDLE=$(ls -t dist/loa-receiver_*_arm64.deb | head -1)

export LOA_SYSTEMTEST_ROOT=$ROOT LOA_SYSTEMTEST_WHEELS=$WHEELS
export LOA_ARM64_ROOT=$ARM64_ROOT LOA_BUNDLE_ARM64=$PWD/$BUNDLE
exec "$PY" -m pytest systemtest -p no:cacheprovider -v -rA "$@"
