#!/usr/bin/env bash
# Make (once) a Debian 12 root for the system tests and the bundle's proof, and reuse it.
#
#   scripts/debian-root.sh ARCH DIR [PACKAGE...]
#
# ARCH is a Debian architecture (amd64, arm64, armhf). A foreign architecture runs under
# qemu-user-static through binfmt_misc, which this script mounts and enables if needed.
# The root is built in DIR.tmp and renamed to DIR only once complete, so an interrupted run
# leaves nothing that looks usable. The extra packages are part of what makes the root: a
# different list makes a different root (the list is kept in DIR/.packages and compared).
# The host's extra CA certificates (/usr/local/share/ca-certificates) are copied in, so that
# pip and apt inside reach the same mirrors as the host.
set -euo pipefail
die() { printf 'debian-root: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'debian-root: %s\n' "$*"; }

[[ $# -ge 2 ]] || die "usage: $0 ARCH DIR [PACKAGE...]"
ARCH=$1 DIR=$2
shift 2
PACKAGES=$(printf '%s\n' "$@" | sort -u | paste -sd, -)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and systemd-nspawn need it)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

if [[ -f $DIR/.complete && $(cat "$DIR/.packages" 2>/dev/null) == "$PACKAGES" ]]; then
  say "reusing $DIR"
  exit 0
fi

host_arch=$(dpkg --print-architecture)
if [[ $ARCH != "$host_arch" ]]; then
  qemu=$(case $ARCH in arm64) echo qemu-aarch64 ;; armhf) echo qemu-arm ;; *) echo "qemu-$ARCH" ;; esac)
  command -v "$qemu-static" >/dev/null || die "$qemu-static is missing (apt-get install qemu-user-static)"
  if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
  fi
  # qemu-user-static ships its binfmt rule (F flag: the interpreter is opened now, so it
  # works inside the root too); register it the way systemd-binfmt would.
  rule=/usr/lib/binfmt.d/$qemu.conf
  if [[ ! -e /proc/sys/fs/binfmt_misc/$qemu && -f $rule ]]; then
    grep -v '^[#;]' "$rule" | grep . >/proc/sys/fs/binfmt_misc/register || die "cannot register $rule"
  fi
  [[ -e /proc/sys/fs/binfmt_misc/$qemu ]] || die "binfmt_misc has no $qemu entry ($rule missing?)"
fi

rm -rf "$DIR.tmp" "$DIR"
mkdir -p "$(dirname "$DIR")"
say "debootstrap bookworm $ARCH into $DIR (packages: ${PACKAGES:-none})"
include=()
[[ -n $PACKAGES ]] && include=(--include="$PACKAGES")
if ! debootstrap --arch="$ARCH" --variant=minbase "${include[@]}" bookworm "$DIR.tmp" "$MIRROR" \
  >"$DIR.log" 2>&1; then
  tail -20 "$DIR.log" >&2
  die "debootstrap failed (full log: $DIR.log)"
fi
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$DIR.tmp/usr/local/share/ca-certificates/"
  if [[ -x $DIR.tmp/usr/sbin/update-ca-certificates ]]; then
    chroot "$DIR.tmp" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
  fi
fi
printf '%s\n' "$PACKAGES" >"$DIR.tmp/.packages"
rm -f "$DIR.tmp/var/cache/apt/archives/"*.deb
touch "$DIR.tmp/.complete"
mv -T "$DIR.tmp" "$DIR"
say "made $DIR"
