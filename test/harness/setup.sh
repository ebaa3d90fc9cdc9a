#!/usr/bin/env bash
# Installs the servers and the browser the tests start (PostgreSQL 15, MariaDB, ClickHouse, Chromium) from
# Debian packages when they are missing. `make test` runs this first (CI too, through it), so
# a fresh Debian 12 machine needs nothing but Node. As root it runs apt-get; otherwise it stops
# at once with the exact command to run. Nothing is started here: the tests run their own servers
# on free ports (test/harness/servers.ts).
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || command -v initdb >/dev/null || need+=(postgresql-15)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || need+=(clickhouse-server clickhouse-client)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0

# postgresql-15 is Debian 12's version; elsewhere take the distribution's default.
if [[ " ${need[*]} " == *" postgresql-15 "* ]] && ! apt-cache show postgresql-15 >/dev/null 2>&1; then
  need=("${need[@]/postgresql-15/postgresql}")
fi
line="apt-get update && apt-get install -y --no-install-recommends ${need[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "test/harness/setup.sh: the tests need packages this machine lacks (${need[*]}). As root, run:" >&2
  echo "  $line" >&2
  echo "(package scripts may start system servers; the tests do not use them and they can be stopped)" >&2
  exit 1
fi

echo "test/harness/setup.sh: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep package scripts from starting system servers (no systemd in containers, so init.d would):
# the tests need no stray servers holding ports and memory.
policy=/usr/sbin/policy-rc.d added=
if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod +x $policy; added=1; fi
trap '[ -n "$added" ] && rm -f $policy' EXIT
apt-get update
apt-get install -y --no-install-recommends "${need[@]}"
for svc in postgresql mariadb clickhouse-server; do service "$svc" stop >/dev/null 2>&1 || true; done
