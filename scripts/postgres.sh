# Sourced by scripts/test: installs PostgreSQL from Debian's packages if missing, starts a
# throw-away server on a free loopback port, exports SAMBLIK_TEST_POSTGRES_URL, and stops and
# removes it when the calling script exits.

pg_bin_dir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_test_postgres() {
  if [ -z "$(pg_bin_dir)" ] || [ ! -x "$(pg_bin_dir)/initdb" ]; then
    echo "==> installing PostgreSQL (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  local bin
  bin=$(pg_bin_dir)
  PG_TEST_DIR=$(mktemp -d /tmp/samblik-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$PG_TEST_DIR"
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  as_postgres "$bin/initdb" -D "$PG_TEST_DIR/data" -A trust -U postgres --no-sync >/dev/null
  # -w: pg_ctl polls until the server accepts connections.
  as_postgres "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TEST_DIR -c max_connections=200" start >/dev/null
  PG_TEST_BIN=$bin
  trap stop_test_postgres EXIT
  export SAMBLIK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "==> PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

stop_test_postgres() {
  if [ -n "${PG_TEST_DIR:-}" ]; then
    as_postgres "$PG_TEST_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_TEST_DIR"
  fi
}
