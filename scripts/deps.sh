#!/usr/bin/env bash
# Installs the Debian packages keepsake needs that are not installed yet;
# silent when everything is there. Extra package names may be given.
set -euo pipefail
packages=(cmake g++ make libboost-fiber-dev libboost-context-dev libboost-dev libcereal-dev
          libspdlog-dev catch2 libbenchmark-dev libxxhash-dev libsqlite3-dev pkgconf
          libpq-dev postgresql "$@")
missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
