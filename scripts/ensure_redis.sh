#!/bin/sh
# Make sure a redis-server (or valkey-server) binary is available for the test suite.
# As root (CI, the dev machines) it installs the Debian package redis-server with apt-get; otherwise
# it fails with what to install. The tests start their own server on a free loopback port.
set -eu
if command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure_redis: installing redis-server (Debian package) for the test suite" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # The package's service is not needed (and not started in containers): tests run their own.
    command -v redis-server >/dev/null 2>&1 && exit 0
fi
echo "ensure_redis: redis-server is required by the test suite (tests/redis_server.py) and is not" >&2
echo "installed. Install it, e.g. 'sudo apt-get install redis-server' (Debian/Ubuntu)," >&2
echo "'brew install redis' (macOS), or valkey-server, then run make test again." >&2
exit 1
