#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (run as root), then runs the whole suite.
#   bash scripts/test.sh [pytest args...]
# The venv lives outside /root so that the postgres user (which runs archive_command) can execute
# walkeeper; the package is installed non-editable for the same reason.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WALKEEPER_TEST_VENV:-/opt/walkeeper-venv}
PG_BIN=${WALKEEPER_PG_BIN:-/usr/lib/postgresql/15/bin}

need=()
[ -x "$PG_BIN/postgres" ] || need+=(postgresql-15 postgresql-contrib)
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v runuser >/dev/null || need+=(util-linux)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then echo "missing packages: ${need[*]} (run as root to install)" >&2; exit 1; fi
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
chmod 755 "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check ".[test]"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall .
chmod -R a+rX "$VENV"

"$VENV/bin/ruff" check walkeeper tests benchmarks scripts
exec "$VENV/bin/python" -m pytest -n "${WALKEEPER_TEST_WORKERS:-2}" "$@"
