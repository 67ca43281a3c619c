#!/usr/bin/env bash
# Install, upgrade or remove loa-receiver on Raspberry Pi OS / Debian 12 (run as root).
#
#   sudo scripts/install.sh               first install: packages, user, program, unit, config
#   sudo scripts/install.sh --upgrade     new program version; config, state and user are kept
#   sudo scripts/install.sh --uninstall   remove program, unit and media cache; keep config+state
#
# What goes where (ROOT is / unless --root is given):
#   ROOT/opt/loa-receiver/venv            the program: a symlink to releases/<when>, a Python
#                                         virtual environment with the project installed in it.
#                                         An upgrade builds a new release next to the running one
#                                         and switches the link only once it is complete, so a
#                                         failed download leaves the old version working.
#   ROOT/opt/loa-receiver/docs/           operations.md (English) and vi/operations.md
#   ROOT/opt/loa-receiver/receiver.example.yaml   the newest example config, for reference
#   ROOT/etc/loa-receiver/receiver.yaml   the config: installed from the example only when there
#                                         is none, mode 0640 root:loa-receiver; never overwritten
#   ROOT/etc/systemd/system/loa-receiver.service  the unit
#   ROOT/usr/lib/sysusers.d/loa-receiver.conf     the system user loa-receiver
#   ROOT/usr/local/bin/receiver           a link to the program, so that `receiver` works
#   /var/lib/loa-receiver, /var/cache/loa-receiver  made by systemd when the service starts
#
# Options:
#   --root DIR        install into DIR instead of / (for tests; the result is not meant to be
#                     copied elsewhere: the program's scripts name DIR in their first line)
#   --upgrade         replace the program, unit and user file of an existing installation
#   --uninstall       stop and disable the service, remove the program, the unit and the media
#                     cache; keep /etc/loa-receiver, /var/lib/loa-receiver and the user
#   --no-apt          do not install Debian packages (they must already be there)
#   --no-systemctl    do not call systemctl (no daemon-reload, enable, start, restart or stop)
#   --python PATH     the Python that makes the virtual environment (default /usr/bin/python3)
#   --system-site-packages  let the venv see Debian's Python packages (the armhf bundle takes
#                     PyYAML and cffi from Debian: they publish no armv7 wheels)
#   --pip-args ARGS   extra arguments for every `pip install`, split on spaces, e.g.
#                     "--no-index --find-links /srv/wheels" to install from local wheels only
set -euo pipefail
# The program must be readable by the service's user whatever root's own umask is.
umask 022

NAME=loa-receiver
UNIT=$NAME.service
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

ARGS=("$@")
ROOT=/
MODE=install
APT=1
SYSTEMCTL=1
PYTHON=/usr/bin/python3
PIP_ARGS=()
VENV_ARGS=()
DEB_PACKAGES=(libvlc5 libvlc-bin vlc-plugin-base python3-venv ca-certificates)

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while (($#)); do
  case $1 in
    --root) [[ $# -ge 2 ]] || die "--root needs a directory"; ROOT=$2; shift ;;
    --root=*) ROOT=${1#--root=} ;;
    --upgrade) MODE=upgrade ;;
    --uninstall) MODE=uninstall ;;
    --no-apt) APT=0 ;;
    --no-systemctl) SYSTEMCTL=0 ;;
    --python) [[ $# -ge 2 ]] || die "--python needs a path"; PYTHON=$2; shift ;;
    --python=*) PYTHON=${1#--python=} ;;
    --system-site-packages) VENV_ARGS=(--system-site-packages) ;;
    --pip-args) [[ $# -ge 2 ]] || die "--pip-args needs a value"; read -r -a PIP_ARGS <<<"$2"; shift ;;
    --pip-args=*) read -r -a PIP_ARGS <<<"${1#--pip-args=}" ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
  shift
done

[[ -d $ROOT ]] || die "--root $ROOT: no such directory"
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/} # prefix for paths: "" for /, "/tmp/x" for --root /tmp/x
if [[ $ROOT == / && $(id -u) -ne 0 ]]; then
  die "run as root, e.g.: sudo $0 ${ARGS[*]}"
fi

APP=$R/opt/$NAME
VENV_LINK=$APP/venv
RELEASES=$APP/releases
CONF_DIR=$R/etc/$NAME
CONF=$CONF_DIR/receiver.yaml
UNIT_DIR=$R/etc/systemd/system
SYSUSERS_DIR=$R/usr/lib/sysusers.d
CACHE_DIR=$R/var/cache/$NAME
STATE_DIR=$R/var/lib/$NAME

# systemctl only talks to a running systemd on the real root; for another root it can only
# enable (links under ROOT/etc/systemd/system), which it does offline with --root.
systemd_running() { [[ $ROOT == / && -d /run/systemd/system ]]; }

service_active() { systemd_running && systemctl is-active --quiet "$UNIT"; }

# Whether the version in place accepts config $1 with no warning at all. Read in English:
# earlier versions exited 0 for a file they would refuse to start with, and only the last line
# ("OK —") tells the two apart.
in_place_accepts() {
  local said
  [[ -x $VENV_LINK/bin/receiver ]] || return 1
  said=$(LANGUAGE= LC_ALL=C.UTF-8 "$VENV_LINK/bin/receiver" check-config "$1" 2>/dev/null) || return 1
  [[ $said == *": OK — "* ]]
}

run_systemctl() {
  ((SYSTEMCTL)) || return 0
  if [[ $ROOT != / ]]; then
    case $1 in
      enable | disable) systemctl --root="$ROOT" "$1" "$UNIT" || true ;;
    esac
    return 0
  fi
  if ! systemd_running; then
    say "systemd is not running here: skipped 'systemctl $*'"
    return 0
  fi
  systemctl "$@"
}

# The numeric id of a group in ROOT's own /etc/group ("" if there is none). chown by name would
# look the name up on the host, which is wrong for --root.
gid_of() {
  if [[ -f $R/etc/group ]]; then awk -F: -v g="$1" '$1 == g { print $3; exit }' "$R/etc/group"; fi
}

# Temporary files, and a release that never became the current one, go when the script ends.
sysusers_tmp=""
build=""
new=""
switched=0
cleanup() {
  rm -f "$sysusers_tmp"
  if [[ -n $build ]]; then rm -rf "$build"; fi
  if [[ -n $new && $switched -eq 0 ]]; then rm -rf "$new"; fi
}
trap cleanup EXIT

# --- uninstall ------------------------------------------------------------------------------

if [[ $MODE == uninstall ]]; then
  # Stop first, while the program is still there: ExecStopPost forces the amplifier off.
  if [[ -f $UNIT_DIR/$UNIT ]]; then
    run_systemctl disable --now "$UNIT"
    if ((!SYSTEMCTL)) && systemd_running; then
      say "--no-systemctl: if the daemon still runs, stop it: systemctl disable --now $NAME"
    fi
  fi
  rm -f "$UNIT_DIR/$UNIT"
  run_systemctl daemon-reload
  if systemd_running && ((SYSTEMCTL)); then
    systemctl reset-failed "$UNIT" 2>/dev/null || true
  fi
  rm -rf "$APP" "$CACHE_DIR"
  if [[ $(readlink "$R/usr/local/bin/receiver" 2>/dev/null) == "/opt/$NAME/venv/bin/receiver" ]]; then
    rm -f "$R/usr/local/bin/receiver"
  fi
  say "removed the program ($APP), the unit and the media cache ($CACHE_DIR)"
  say "kept: $CONF_DIR (config, keys, passwords), $STATE_DIR (replay counters: keep them, or"
  say "      old commands could be accepted again), the user $NAME ($SYSUSERS_DIR/$NAME.conf)"
  if [[ -d $UNIT_DIR/$UNIT.d ]]; then say "kept your unit overrides in $UNIT_DIR/$UNIT.d"; fi
  say "to remove those too: rm -rf $CONF_DIR $STATE_DIR $SYSUSERS_DIR/$NAME.conf; userdel $NAME"
  exit 0
fi

# --- install / upgrade ----------------------------------------------------------------------

if [[ $MODE == install && -f $UNIT_DIR/$UNIT ]]; then
  die "$NAME is already installed in $ROOT; to replace the program and keep the config and" \
    "state, run: $0 --upgrade"
fi
if [[ $MODE == upgrade && ! -f $UNIT_DIR/$UNIT ]]; then
  die "$NAME is not installed in $ROOT (no $UNIT_DIR/$UNIT); run without --upgrade"
fi

# 1. Debian packages: libVLC with its base plugins (the ALSA output, MP3/Ogg decoders), its
#    plugin cache generator, venv support, the CA store for TLS; python3-lgpio where the
#    archive has it (Raspberry Pi OS: the lgpio pin factory).
if ((APT)); then
  [[ $ROOT == / ]] || die "Debian packages can only be installed into /; add --no-apt"
  apt-get update -qq
  wanted=("${DEB_PACKAGES[@]}")
  if apt-cache show python3-lgpio >/dev/null 2>&1; then wanted+=(python3-lgpio); fi
  missing=()
  for pkg in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

command -v systemd-sysusers >/dev/null || die "systemd-sysusers not found (package systemd)"
[[ -x $PYTHON ]] || die "$PYTHON not found (package python3)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || die "$PYTHON cannot make a venv (package python3-venv)"

# 2. The system user. Supplementary groups (m lines) only where the group already exists, so
#    that no empty "gpio" group appears on a machine without GPIO.
mkdir -p "$SYSUSERS_DIR"
sysusers_tmp=$(mktemp)
while IFS= read -r line; do
  if [[ $line =~ ^m[[:space:]]+[^[:space:]]+[[:space:]]+([^[:space:]]+) ]]; then
    if [[ -z $(gid_of "${BASH_REMATCH[1]}") ]]; then
      say "group ${BASH_REMATCH[1]} does not exist here: $NAME is not added to it"
      continue
    fi
  fi
  printf '%s\n' "$line" >>"$sysusers_tmp"
done <"$SRC/systemd/$NAME.sysusers"
install -m 0644 "$sysusers_tmp" "$SYSUSERS_DIR/$NAME.conf"
if [[ $ROOT == / ]]; then
  systemd-sysusers "$SYSUSERS_DIR/$NAME.conf"
else
  systemd-sysusers --root="$ROOT" "$SYSUSERS_DIR/$NAME.conf"
fi
GID=$(gid_of "$NAME")
[[ -n $GID ]] || die "systemd-sysusers did not create the group $NAME"

# 3. The program: a new release, switched to only when complete.
mkdir -p "$RELEASES"
previous=""
if [[ -L $VENV_LINK ]]; then previous=$(readlink "$VENV_LINK"); fi
release="$(date -u +%Y%m%dT%H%M%SZ)-$$"
new=$RELEASES/$release
build=$(mktemp -d)

say "creating the program's virtual environment in $new"
"$PYTHON" -m venv "${VENV_ARGS[@]}" "$new"
# Build from a copy, so that pip and setuptools write nothing into the checkout.
cp -r "$SRC/pyproject.toml" "$SRC/setup.cfg" "$SRC/setup.py" "$SRC/README.md" "$SRC/LICENSE" \
  "$SRC/receiver" "$SRC/receiver_entry.py" "$build/"
find "$build" -name __pycache__ -prune -exec rm -rf {} +
"$new/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${PIP_ARGS[@]}" "$build"
# lgpio from Debian (python3-lgpio) is linked against the system's liblgpio: link just that
# module into the venv instead of opening the venv to every system package.
find_lgpio='
import os, sys
import lgpio
for name in ("lgpio", "_lgpio"):
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path:
        print(os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path)
'
if ! lgpio_files=$(cd / && "$PYTHON" -c "$find_lgpio" 2>/dev/null); then lgpio_files=""; fi
if [[ -n $lgpio_files ]]; then
  site=$("$new/bin/python" -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
  while IFS= read -r f; do ln -sf "$f" "$site/"; done <<<"$lgpio_files"
  say "linked Debian's lgpio module into the venv"
else
  say "python3-lgpio is not installed: pin_factory lgpio will not work (mock, rpigpio, pigpio do)"
fi
"$new/bin/receiver" --version >/dev/null || die "the new program does not start: $new"
# An upgrade must not leave a working loudspeaker on a version that refuses its config (exit
# 78): the new version checks the config before it is switched in, and a refusal stops the
# upgrade when the service runs or the version in place accepts the file. A file that neither
# could start with (the example, not filled in yet) loses nothing: the upgrade goes on, so that
# a package reinstalled before the first configuration does not fail.
if [[ $MODE == upgrade && -f $CONF ]]; then
  if ! "$new/bin/receiver" check-config "$CONF" >/dev/null; then
    if service_active || in_place_accepts "$CONF"; then
      die "the new version does not accept $CONF (problems above); the old version stays." \
        "Fix the config (see $SRC/config/receiver.example.yaml), then run --upgrade again"
    fi
    say "$CONF is not ready for this version either (problems above): upgraded anyway;" \
      "fix it before you start the service"
  fi
fi

install -d -m 0755 "$APP/docs" "$APP/docs/vi"
install -m 0644 "$SRC/docs/operations.md" "$APP/docs/operations.md"
install -m 0644 "$SRC/docs/vi/operations.md" "$APP/docs/vi/operations.md"
install -m 0644 "$SRC/config/receiver.example.yaml" "$APP/receiver.example.yaml"

# Switch: a new symlink renamed over the old one is atomic.
ln -sfn "releases/$release" "$APP/venv.new"
mv -Tf "$APP/venv.new" "$VENV_LINK"
switched=1
# Keep the release just replaced (a daemon still running may use it until it restarts).
for dir in "$RELEASES"/*; do
  [[ -d $dir ]] || continue
  case "releases/$(basename "$dir")" in
    "releases/$release" | "$previous") ;;
    *) rm -rf "$dir" ;;
  esac
done

# `receiver` on every technician's PATH (sudo's too): a link, unless something else is there.
LINK=$R/usr/local/bin/receiver
install -d -m 0755 "$R/usr/local/bin"
if [[ -L $LINK || ! -e $LINK ]]; then
  ln -sfn "/opt/$NAME/venv/bin/receiver" "$LINK"
else
  say "$LINK exists and is not ours: use /opt/$NAME/venv/bin/receiver"
fi

# 4. The config: never overwritten. Readable by the daemon's group, writable by root only.
install -d -m 0750 "$CONF_DIR"
if [[ $(id -u) -eq 0 ]]; then chown "0:$GID" "$CONF_DIR"; fi
fresh_config=0
if [[ ! -e $CONF ]]; then
  install -m 0640 "$SRC/config/receiver.example.yaml" "$CONF"
  if [[ $(id -u) -eq 0 ]]; then chown "0:$GID" "$CONF"; fi
  fresh_config=1
  say "installed the example config as $CONF: edit it before starting"
else
  say "kept the existing config $CONF (the newest example is $APP/receiver.example.yaml)"
fi

# 5. The unit.
install -d -m 0755 "$UNIT_DIR"
install -m 0644 "$SRC/systemd/$UNIT" "$UNIT_DIR/$UNIT"

run_systemctl daemon-reload
live=0
if ((SYSTEMCTL)) && systemd_running; then live=1; fi
if [[ $MODE == upgrade ]]; then
  # Restarts the daemon only if it is running; ExecStopPost switches the relay off in between.
  run_systemctl try-restart "$UNIT"
  say "upgraded to release $release; config and state kept"
  if ((!live)); then say "the running daemon (if any) still runs the old version: systemctl restart $NAME"; fi
elif ((fresh_config)); then
  # Neither started nor enabled with the example's placeholder broker and key: the daemon would
  # refuse them (exit 78) at every boot. The technician enables it once the config is real.
  say "installed, not enabled. Next: edit $CONF (see $APP/docs/operations.md), check it,"
  say "then enable and start it:"
  say "  receiver check-config /etc/$NAME/receiver.yaml"
  say "  systemctl enable --now $NAME"
else
  run_systemctl enable --now "$UNIT"
  if ((live)); then
    say "installed, enabled and started with the existing config"
  else
    say "installed with the existing config; start it with: systemctl enable --now $NAME"
  fi
fi
