#!/bin/sh
# Run once by the postgres image when it creates the cluster (an empty data volume): the
# three roles of docs/audit-log.md and the database, owned by the schema's owner.
#   cpr_owner    runs `cpr db upgrade` (the migrate service), owns the tables and guards
#   cpr_app      NOLOGIN: what the service acts as (SELECT, INSERT on the log; granted by
#                the migrations)
#   cpr_service  the service's login, a NOINHERIT member of cpr_app
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v owner_password="$CPR_DB_OWNER_PASSWORD" \
    -v service_password="$CPR_DB_SERVICE_PASSWORD" <<'SQL'
CREATE ROLE cpr_owner LOGIN PASSWORD :'owner_password';
CREATE DATABASE cpr OWNER cpr_owner;
CREATE ROLE cpr_app NOLOGIN;
CREATE ROLE cpr_service LOGIN PASSWORD :'service_password' NOINHERIT IN ROLE cpr_app;
SQL
