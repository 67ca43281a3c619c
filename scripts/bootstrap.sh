#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on Debian 12 / Raspberry Pi OS: the Debian
# packages (Mosquitto, libVLC with its base plugins, venv support; FFmpeg and Icecast for the
# live-relay tests' stations) and a .venv with the project.
# Safe to run again: it only installs what is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEB_PACKAGES=(mosquitto mosquitto-clients libvlc5 libvlc-bin vlc-plugin-base python3-venv
  ffmpeg icecast2 ejabberd)

. scripts/debs.sh
install_missing_debs bootstrap "${DEB_PACKAGES[@]}"

stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing the project into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e '.[test,dev]'
  touch "$stamp"
fi
