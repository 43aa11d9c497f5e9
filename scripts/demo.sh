#!/usr/bin/env bash
# The main job on the embedded default, end to end, with no cloud account:
# a throwaway PostgreSQL cluster with sample data is backed up into a local-filesystem
# repository, verified (without and with the key), and restored into a second database,
# which is checked table by table against the row counts taken at backup time.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${PGVAULT_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -p pgvault-cli
  bin=target/release/pgvault
fi
work=$(mktemp -d /tmp/pgvault-demo.XXXXXX)
chmod 755 "$work"
cleanup() { scripts/pg-cluster.sh stop "$work/pg"; rm -rf "$work"; }
trap cleanup EXIT

echo "== starting a throwaway PostgreSQL cluster"
port=$(scripts/pg-cluster.sh start "$work/pg")
psql() { command psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
psql -d postgres -c "create database shop"
psql -d shop <<'SQL'
create role shop_owner;
create role shop_reader;
create table customers (id bigserial primary key, name text not null, email text unique, created_at timestamptz default now());
create table orders (id bigserial primary key, customer_id bigint references customers, total numeric(12,2), items jsonb, created_at timestamptz default now());
create index on orders (created_at);
insert into customers (name, email) select 'customer ' || g, 'c' || g || '@example.com' from generate_series(1, 5000) g;
insert into orders (customer_id, total, items)
  select 1 + (g % 5000), (g % 997) * 1.25, jsonb_build_object('sku', 'SKU-' || (g % 113), 'qty', 1 + g % 7)
  from generate_series(1, 50000) g;
create view big_orders as select * from orders where total > 1000;
alter table customers owner to shop_owner;
grant select on orders to shop_reader;
SQL

echo "== generating an age key pair"
recipient=$("$bin" keygen --output "$work/identity.txt")
cat >"$work/policy.toml" <<TOML
name = "shop"
[source]
url = "postgres://postgres@127.0.0.1:$port/shop"
[repository]
url = "file://$work/repo"
[encryption]
recipients = ["$recipient"]
[compression]
level = 3
[restore_test]
target = "ephemeral"
identity_file = "$work/identity.txt"
rto_objective = "15m"
rpo_objective = "24h"
[[restore_test.checks]]
name = "every order has a customer"
sql = "select count(*) from orders o left join customers c on c.id = o.customer_id where c.id is null"
expect = "= 0"
[[restore_test.checks]]
name = "recent orders exist"
sql = "select count(*) from orders where created_at > now() - interval '2 days'"
expect = "> 0"
TOML

echo "== pgvault backup"
"$bin" backup --policy "$work/policy.toml"
echo "== pgvault list"
"$bin" list --policy "$work/policy.toml"
echo "== pgvault verify (no key: stored bytes against the manifest)"
"$bin" verify --policy "$work/policy.toml" latest
echo "== pgvault verify --identity (decrypt, decompress, read the dump's table of contents)"
"$bin" verify --policy "$work/policy.toml" latest --identity "$work/identity.txt"
echo "== pgvault restore --dry-run"
"$bin" restore --policy "$work/policy.toml" latest --identity "$work/identity.txt" \
  --target "postgres://postgres@127.0.0.1:$port/shop_restored" --dry-run
echo "== pgvault restore"
"$bin" restore --policy "$work/policy.toml" latest --identity "$work/identity.txt" \
  --target "postgres://postgres@127.0.0.1:$port/shop_restored"
echo "== pgvault restore-test (a throwaway cluster, checks, RTO/RPO, a report)"
"$bin" restore-test --policy "$work/policy.toml" --report-dir "${PGVAULT_DEMO_REPORTS:-$work/reports}"
echo "== pgvault reports list / verify"
"$bin" reports list --policy "$work/policy.toml"
"$bin" reports verify --policy "$work/policy.toml"
echo "== demo complete"
