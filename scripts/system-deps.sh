#!/usr/bin/env bash
# Installs the system packages Atalaia needs, from Debian, when they are missing.
#   scripts/system-deps.sh base   -> what scripts/setup.sh needs for the venv (python3-venv)
#   scripts/system-deps.sh demo   -> base plus a Java 17+ runtime and Maven (for the local Kafka broker)
#   scripts/system-deps.sh test   -> demo plus PostgreSQL, kcat, Chromium, Prometheus Alertmanager
#                                    (amtool) and Prometheus (promtool)
# Idempotent: installs nothing when everything is there. The Makefile runs it before setup.sh.
set -euo pipefail
what=${1:-demo}
case "$what" in base|demo|test) ;; *) echo "usage: $0 base|demo|test" >&2; exit 2 ;; esac

missing=()
java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local v
  v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2}' | cut -d. -f1)
  [ "${v:-0}" -ge 17 ]
}
# The JRE the distribution offers: an LTS (21, then 17) if there is one, else the newest >= 17
# (Debian 12 has 17, Debian 13 has 21, Ubuntu several).
pick_jre() {
  local offered
  offered=$(apt-cache pkgnames openjdk- 2>/dev/null | sed -n 's/^openjdk-\([0-9][0-9]*\)-jre-headless$/\1/p' | sort -n)
  for v in 21 17; do
    if grep -qx "$v" <<<"$offered"; then echo "openjdk-$v-jre-headless"; return 0; fi
  done
  local newest
  newest=$(awk '$1 >= 17' <<<"$offered" | tail -n 1)
  [ -n "$newest" ] && { echo "openjdk-$newest-jre-headless"; return 0; }
  return 1
}
# setup.sh runs "python3 -m venv", which on Debian needs python3-venv (ensurepip).
if ! command -v python3 >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
need_jre=0
if [ "$what" != "base" ]; then
  java_ok || need_jre=1
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
fi
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
[ ${#missing[@]} -eq 0 ] && [ "$need_jre" = 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    [ "$need_jre" = 1 ] && missing+=("a Java 17+ runtime (openjdk-NN-jre-headless)")
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "fix: install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
fi
$SUDO apt-get update -qq
if [ "$need_jre" = 1 ]; then
  jre=$(pick_jre) || { echo "error: this distribution offers no OpenJDK runtime 17 or newer; install one and retry" >&2; exit 1; }
  missing+=("$jre")
fi
echo "installing system packages: ${missing[*]}" >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
