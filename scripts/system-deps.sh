#!/usr/bin/env bash
# Installs the system packages Atalaia needs, from Debian, when they are missing.
#   scripts/system-deps.sh demo   -> Java 17+ and Maven (for the local Kafka broker)
#   scripts/system-deps.sh test   -> the same plus PostgreSQL, kcat, Chromium, Prometheus Alertmanager
#                                    (amtool) and Prometheus (promtool)
# Idempotent: installs nothing when everything is there.
set -euo pipefail
what=${1:-demo}

missing=()
java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local v
  v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2}' | cut -d. -f1)
  [ "${v:-0}" -ge 17 ]
}
java_ok || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if [ "$what" = "test" ]; then
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
  command -v pg_createcluster >/dev/null 2>&1 || missing+=(postgresql-common)
  command -v kcat >/dev/null 2>&1 || missing+=(kcat)
  # Headless browser for the dashboard test (driven by Playwright with this executable).
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
  # promtool (in Debian's prometheus package) validates prometheus/ for docker-compose.yml.
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "fix: install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
fi
echo "installing system packages: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
