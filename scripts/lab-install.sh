#!/usr/bin/env bash
# Installs the Debian packages the test lab needs, when missing. Idempotent; needs root (CI and dev machines are).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mapfile -t wanted < <(grep -vE '^\s*(#|$)' "$here/lab-packages.txt")
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "lab-install: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Without systemd as PID 1 the packages' service starts fail harmlessly; the test lab starts its own daemons.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "lab-install: all ${#wanted[@]} lab packages present"
