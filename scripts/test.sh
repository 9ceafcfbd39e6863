#!/usr/bin/env bash
# The whole test suite against real services: Kafka (local KRaft broker), PostgreSQL, the models.
# Starts what is not running and stops what it started. pytest's "no tests collected" (exit 5)
# counts as a failure here: a suite that runs nothing must not pass silently.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export ATALAIA_HOME=${ATALAIA_HOME:-$PWD/.atalaia}

./scripts/system-deps.sh test
./scripts/wordnet.sh

# Stop, at exit, exactly what this script started: a PostgreSQL or broker that was already
# running (someone else's, or a developer's) is left running.
pg_was_running=0
./scripts/postgres.sh status >/dev/null 2>&1 && pg_was_running=1
kafka_was_running=0
kafka_started=0
cleanup() {
  if [ "$kafka_started" = 1 ] && [ "$kafka_was_running" = 0 ]; then $BIN/atalaia kafka stop || true; fi
  if [ "$pg_was_running" = 0 ]; then ./scripts/postgres.sh stop || true; fi
}
trap cleanup EXIT
# Start output (pg_ctl's "Removed stale pid file." and the like) goes to the log, not into the URL.
./scripts/postgres.sh start >/dev/null
ATALAIA_TEST_DATABASE_URL=$(./scripts/postgres.sh url)
export ATALAIA_TEST_DATABASE_URL
export ATALAIA_REQUIRE_SERVICES=1

$BIN/atalaia models prepare

$BIN/atalaia kafka status >/dev/null 2>&1 && kafka_was_running=1
kafka_started=1
$BIN/atalaia kafka start

set +e
$BIN/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
fi
exit "$rc"
