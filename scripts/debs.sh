# Sourced by the set-up scripts: `install_missing_debs WHO PACKAGE...` installs, with apt-get,
# the Debian packages of the list that are not installed yet (root, or sudo), and nothing else.
# WHO prefixes what it says ("bootstrap", "systemtest", ...).

install_missing_debs() {
  local who=$1
  shift
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  ((${#missing[@]})) || return 0
  echo "$who: installing Debian packages: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "$who: need root (or sudo) to install: ${missing[*]}" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -o DPkg::Lock::Timeout=600 -y -qq \
    "${missing[@]}" >/dev/null
}
