#!/bin/sh
# Make sure Debian's chromium is installed for the browser tests (never downloads a browser from
# the net: puppeteer-core drives the system package). CI runs as root on Debian; elsewhere this
# fails loudly with what to install.
set -eu
CHROMIUM="${ASAP_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: $CHROMIUM not found. Install Debian's chromium package (sudo apt-get install -y chromium)" >&2
  echo "       or point ASAP_CHROMIUM at a Chromium/Chrome binary." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: $CHROMIUM not found and apt-get is not available; install chromium and set ASAP_CHROMIUM" >&2
  exit 1
fi
echo "installing chromium (apt-get)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x "$CHROMIUM"
