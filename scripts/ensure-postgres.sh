#!/usr/bin/env bash
# Makes sure a local PostgreSQL is running with a role and database for the test suite,
# then prints its URL. Uses Debian's PostgreSQL 15 (installed, but stopped on a fresh
# machine). Needs root, as `make test` and CI have; elsewhere set
# VERS_ORCHESTRATOR_TEST_POSTGRES_URL to a server you run yourself.
set -euo pipefail

role=vers_test
password=vers_test
database=vers_test

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(pg_lsclusters --no-header | awk 'NR==1 {print $1}')
cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $2}')
port=$(pg_lsclusters --no-header | awk 'NR==1 {print $3}')
if ! pg_lsclusters --no-header | awk 'NR==1 {print $4}' | grep -q online; then
    pg_ctlcluster "$version" "$cluster" start >&2
fi

psql_as_postgres() { runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qAt "$@"; }
for _ in $(seq 1 50); do
    psql_as_postgres -c 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.2
done
if [ "$(psql_as_postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" != 1 ]; then
    psql_as_postgres -c "CREATE ROLE $role LOGIN CREATEDB PASSWORD '$password'" >&2
fi
if [ "$(psql_as_postgres -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" != 1 ]; then
    psql_as_postgres -c "CREATE DATABASE $database OWNER $role" >&2
fi
echo "postgresql://$role:$password@127.0.0.1:$port/$database"
