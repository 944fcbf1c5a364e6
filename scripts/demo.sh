#!/usr/bin/env bash
# End to end on the embedded default (a local repository): a throwaway PostgreSQL cluster archives
# through walkeeper, is backed up with walkeeper, suffers an accident and loses its data directory,
# and is brought back with walkeeper pitr to the moment before the accident.
#   bash scripts/demo.sh            (as root on a fresh Debian machine; installs what it needs)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
WK=$WALKEEPER_BIN

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

DEMO=$(mktemp -d /tmp/walkeeper-demo.XXXXXX)
chmod 755 "$DEMO"
[ "$(id -u)" -eq 0 ] && chown postgres: "$DEMO"
PORT=$((20000 + RANDOM % 20000))
PGDATA=$DEMO/pgdata
cleanup() {
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    as_pg "$PG_BIN/pg_ctl" -D "$DEMO/restored" -m immediate stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql_() { as_pg "$PG_BIN/psql" -h "$DEMO" -p "$PORT" -X -A -t -v ON_ERROR_STOP=1 -d postgres -c "$1"; }

say "1. a cluster, and walkeeper init for it: repository, key and configuration in $DEMO"
as_pg "$PG_BIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
# as root, everything is created for the data directory's owner (postgres)
"$WK" --repo "$DEMO/repo" init --pgdata "$PGDATA" --generate-key "$DEMO/key" --write-config "$DEMO/walkeeper.toml"
cat "$DEMO/walkeeper.toml"

say "2. the cluster archives through: $WK --config $DEMO/walkeeper.toml wal-push %p"
as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DEMO'
archive_mode = on
archive_command = '$WK --config $DEMO/walkeeper.toml wal-push %p'
CONF
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$DEMO/pgdata.log" -w start >/dev/null
as_pg "$PG_BIN/pgbench" -h "$DEMO" -p "$PORT" -i -s 1 -q postgres 2>&1 | tail -1

wait_archived() {
    for _ in $(seq 1 300); do
        last=$(psql_ "select coalesce(last_archived_wal, '') from pg_stat_archiver")
        [[ "$last" > "$1" || "$last" == "$1" ]] && return 0
        sleep 0.2
    done
    echo "timed out waiting for $1 to be archived" >&2; tail -20 "$DEMO/pgdata.log" >&2; exit 1
}

export WALKEEPER_CONFIG=$DEMO/walkeeper.toml   # runuser keeps the environment

say "3. walkeeper backup: pg_basebackup streamed, compressed and encrypted into the repository"
as_pg "$WK" backup -h "$DEMO" -p "$PORT" -U postgres --fast-checkpoint --label demo

say "4. writes after the backup, then the moment T1 we will want back"
psql_ "create table demo(id int primary key, at timestamptz default now())" >/dev/null
psql_ "insert into demo(id) select generate_series(1, 10000)" >/dev/null
as_pg "$PG_BIN/pgbench" -h "$DEMO" -p "$PORT" -n -t 500 postgres | grep -E "^(number of transactions actually|tps)"
EXPECTED=$(psql_ "select count(*) || ' rows, balance ' || (select sum(abalance) from pgbench_accounts) from demo")
T1=$(psql_ "select now()")
echo "T1 = $T1; state: $EXPECTED"
sleep 1

say "5. the accident after T1: more writes, then a dropped table"
psql_ "insert into demo(id) select generate_series(10001, 20000)" >/dev/null
psql_ "drop table pgbench_accounts" >/dev/null
wait_archived "$(psql_ 'select pg_walfile_name(pg_switch_wal())')"
as_pg "$WK" wal-list

say "6. disaster: the cluster is stopped and its data directory deleted"
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
rm -rf "$PGDATA"

say "7. walkeeper pitr --target-time '$T1': choose the backup, check the WAL, restore, write recovery settings"
as_pg "$WK" pitr --pgdata "$DEMO/restored" --target-time "$T1" --target-action promote
as_pg "$PG_BIN/pg_ctl" -D "$DEMO/restored" -l "$DEMO/restored.log" -w start >/dev/null
for _ in $(seq 1 300); do [ "$(psql_ 'select pg_is_in_recovery()')" = f ] && break; sleep 0.2; done
grep -c 'restored log file .* from archive' "$DEMO/restored.log" | sed 's/^/segments restored through walkeeper wal-fetch: /'
GOT=$(psql_ "select count(*) || ' rows, balance ' || (select sum(abalance) from pgbench_accounts) from demo")
echo "state: $GOT"
if [ "$GOT" != "$EXPECTED" ]; then echo "MISMATCH: expected $EXPECTED" >&2; exit 1; fi
say "OK: the cluster is back exactly as it was at T1, before the accident (demo files in $DEMO)"
