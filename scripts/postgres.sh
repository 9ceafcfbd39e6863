#!/usr/bin/env bash
# A PostgreSQL cluster for Atalaia's tests, from Debian's postgresql package, on 127.0.0.1 only.
#   scripts/postgres.sh start   -> create (once) and start cluster "atalaia", role and database
#   scripts/postgres.sh stop    -> stop it
#   scripts/postgres.sh status  -> exit 0 if it is running (scripts/test.sh stops only what it started)
#   scripts/postgres.sh url     -> print the SQLAlchemy URL
# Port: ATALAIA_PG_PORT (default 55432), so it never collides with a system cluster on 5432.
set -euo pipefail
cmd=${1:-start}
PORT=${ATALAIA_PG_PORT:-55432}
CLUSTER=atalaia
USER_NAME=atalaia
PASSWORD=${ATALAIA_PG_PASSWORD:-atalaia}
DB=atalaia_test
URL="postgresql+psycopg://${USER_NAME}:${PASSWORD}@127.0.0.1:${PORT}/${DB}"

if [ "$cmd" = "url" ]; then echo "$URL"; exit 0; fi

SUDO=""
AS_PG=(runuser -u postgres --)
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; AS_PG=(sudo -u postgres); fi
VER=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
if [ -z "$VER" ]; then
  echo "error: PostgreSQL is not installed; run scripts/system-deps.sh test" >&2
  exit 1
fi

case "$cmd" in
  start)
    if ! $SUDO pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VER $CLUSTER"; then
      $SUDO pg_createcluster "$VER" "$CLUSTER" -p "$PORT" -- --auth-local=peer --auth-host=scram-sha-256 >&2
      conf=/etc/postgresql/$VER/$CLUSTER/postgresql.conf
      $SUDO sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "$conf"
      echo "fsync = off" | $SUDO tee -a "$conf" >/dev/null   # test data only: speed over durability
      echo "synchronous_commit = off" | $SUDO tee -a "$conf" >/dev/null
      echo "max_connections = 200" | $SUDO tee -a "$conf" >/dev/null
    fi
    status=$($SUDO pg_lsclusters -h | awk -v v="$VER" -v c="$CLUSTER" '$1==v && $2==c {print $4}')
    if [ "$status" != "online" ]; then
      # A server killed moments ago can leave its socket lock behind until the old process is
      # reaped; retry for a few seconds before giving up.
      for attempt in $(seq 1 10); do
        $SUDO pg_ctlcluster "$VER" "$CLUSTER" start >&2 && break
        [ "$attempt" = 10 ] && { echo "error: PostgreSQL cluster $CLUSTER did not start; see /var/log/postgresql/postgresql-$VER-$CLUSTER.log" >&2; exit 1; }
        sleep 1
      done
    fi
    for _ in $(seq 1 30); do
      "${AS_PG[@]}" psql -p "$PORT" -qAtc "select 1" >/dev/null 2>&1 && break
      sleep 0.5
    done
    "${AS_PG[@]}" psql -p "$PORT" -qAt <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${USER_NAME}') THEN
    CREATE ROLE ${USER_NAME} LOGIN PASSWORD '${PASSWORD}' CREATEDB;
  END IF;
END \$\$;
SQL
    "${AS_PG[@]}" psql -p "$PORT" -qAtc "SELECT 1 FROM pg_database WHERE datname='${DB}'" | grep -q 1 \
      || "${AS_PG[@]}" createdb -p "$PORT" -O "$USER_NAME" "$DB" >&2
    # The URL is the only thing on stdout: callers capture it (scripts/test.sh).
    echo "$URL"
    ;;
  stop)
    $SUDO pg_ctlcluster "$VER" "$CLUSTER" stop 2>/dev/null || true
    ;;
  status)
    status=$($SUDO pg_lsclusters -h 2>/dev/null | awk -v v="$VER" -v c="$CLUSTER" '$1==v && $2==c {print $4}')
    [ "$status" = "online" ]
    ;;
  *)
    echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
