//! Backup → restore into a fresh cluster → identical schema and data, on the filesystem
//! backend and on S3.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness failure should panic the test

use pgvault_integration::{
    assert_same_text, keygen, pgvault, run_ok, write_policy, PgCluster, RepoSpec, S3Server,
};

/// A database exercising what a restore must carry: several schemas and tables, indexes,
/// a sequence, a view, a function, jsonb/bytea/timestamptz/numeric data, unicode, a large
/// object, and objects owned by a non-default role with grants.
const RICH_SCHEMA: &str = r#"
create role app_owner login;
create role app_reader;
grant app_reader to app_owner;
create schema shop authorization app_owner;
create sequence shop.invoice_no start 1000;
create table shop.customers (
  id serial primary key,
  name text not null,
  profile jsonb,
  avatar bytea,
  joined timestamptz not null,
  balance numeric(14,4)
);
create index customers_name on shop.customers (name);
create index customers_profile on shop.customers using gin (profile);
create table shop.orders (
  id bigint generated always as identity primary key,
  customer_id int not null references shop.customers,
  amount numeric(12,2) not null,
  placed_at timestamptz not null default '2026-01-01 00:00:00+00',
  invoice int not null default nextval('shop.invoice_no')
);
create index orders_customer on shop.orders (customer_id, placed_at);
insert into shop.customers (name, profile, avatar, joined, balance)
select
  case g % 4 when 0 then 'Zoë ' || g when 1 then '東京 ' || g when 2 then 'Ωmega 🚀 ' || g else 'plain ' || g end,
  jsonb_build_object('tier', g % 3, 'tags', jsonb_build_array('a' || g, 'b'), 'nested', jsonb_build_object('ok', g % 2 = 0)),
  decode(md5(g::text), 'hex'),
  timestamptz '2025-01-01 00:00:00+00' + g * interval '37 minutes',
  (g * 1.0001)::numeric(14,4)
from generate_series(1, 3000) g;
insert into shop.orders (customer_id, amount, placed_at)
select 1 + g % 3000, (g % 1000) / 7.0, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute'
from generate_series(1, 20000) g;
create view shop.big_spenders as
  select c.name, sum(o.amount) as total from shop.customers c join shop.orders o on o.customer_id = c.id
  group by c.name having sum(o.amount) > 500;
create function shop.customer_total(c int) returns numeric language sql stable
  as $$ select coalesce(sum(amount), 0) from shop.orders where customer_id = c $$;
create table public.documents (id int primary key, title text, body oid);
insert into public.documents values (1, 'contract', lo_from_bytea(0, convert_to('the large object body ✓', 'UTF8')));
alter table shop.customers owner to app_owner;
alter table shop.orders owner to app_owner;
alter sequence shop.invoice_no owner to app_owner;
alter view shop.big_spenders owner to app_owner;
alter function shop.customer_total(int) owner to app_owner;
grant usage on schema shop to app_reader;
grant select on shop.orders, shop.big_spenders to app_reader;
select setval('shop.invoice_no', 50000);
do $$ declare l oid; begin select body into l from public.documents where id = 1; execute format('alter large object %s owner to app_owner', l); end $$;
"#;

fn round_trip(repo: impl Fn(&std::path::Path) -> (RepoSpec<'static>, Option<&'static S3Server>)) {
    let Some(source) = PgCluster::start() else {
        return;
    };
    let Some(target) = PgCluster::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    source.psql("postgres", "create database app");
    source.psql_script("app", RICH_SCHEMA);
    let key = keygen(work.path(), "ops");
    let (spec, server) = repo(work.path());
    let policy = write_policy(
        work.path(),
        "rich",
        &source.url("app"),
        &spec,
        &key.recipient,
        "",
    );

    let mut backup = pgvault(server);
    backup.arg("backup").arg("--policy").arg(&policy);
    let out = run_ok(backup);
    assert!(out.contains("complete"), "{out}");

    let mut list = pgvault(server);
    list.args(["list", "--json", "--policy"]).arg(&policy);
    let listed: serde_json::Value = serde_json::from_str(&run_ok(list)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["database"], "app");

    let mut verify = pgvault(server);
    verify
        .args(["verify", "latest", "--identity"])
        .arg(&key.identity)
        .arg("--policy")
        .arg(&policy);
    let out = run_ok(verify);
    assert!(out.contains("verification PASSED"), "{out}");

    // Restore into a fresh cluster, which has none of the roles: globals create them.
    let mut restore = pgvault(server);
    restore
        .args([
            "restore",
            "latest",
            "--target",
            &target.url("app"),
            "--identity",
        ])
        .arg(&key.identity)
        .arg("--policy")
        .arg(&policy);
    let out = run_ok(restore);
    assert!(out.contains("create app_owner, app_reader"), "{out}");
    assert!(
        out.contains("OK     shop.orders") || out.contains("OK    shop.orders"),
        "{out}"
    );
    assert!(out.contains("restore PASSED"), "{out}");

    let (a, b) = (source.dump_text("app"), target.dump_text("app"));
    assert!(
        a.contains("OWNER TO app_owner") && a.contains("lo_open"),
        "source dump lacks the objects under test"
    );
    assert_same_text(&a, &b, "pg_dump of source and restored database");
    for sql in [
        "select count(*) from shop.customers",
        "select count(*) from shop.orders",
        "select sum(amount)::text from shop.orders",
        "select last_value from shop.invoice_no",
        "select convert_from(lo_get(body), 'UTF8') from public.documents",
        "select string_agg(name, ',' order by id) from shop.customers where id < 6",
        "select pg_get_userbyid(relowner) from pg_class where relname = 'orders'",
        "select has_table_privilege('app_reader', 'shop.orders', 'select')::text",
    ] {
        assert_eq!(source.psql("app", sql), target.psql("app", sql), "{sql}");
    }
    assert!(
        !target.databases().iter().any(|d| d.contains("_pgvault_")),
        "scratch database left behind: {:?}",
        target.databases()
    );
}

#[test]
fn round_trip_on_filesystem_repository() {
    round_trip(|dir| {
        let repo: &'static std::path::Path = Box::leak(dir.join("repo").into_boxed_path());
        (RepoSpec::Filesystem(repo), None)
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_on_s3_repository() {
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let server: &'static S3Server = Box::leak(Box::new(server));
    let (bucket, prefix) = server.fresh_location().await;
    let bucket: &'static str = Box::leak(bucket.into_boxed_str());
    let prefix: &'static str = Box::leak(prefix.into_boxed_str());
    tokio::task::spawn_blocking(move || {
        round_trip(|_| {
            (
                RepoSpec::S3 {
                    server,
                    bucket,
                    prefix,
                },
                Some(server),
            )
        });
    })
    .await
    .unwrap();
    let keys = server.list_keys(bucket, prefix).await;
    assert!(
        keys.iter().any(|k| k.ends_with("manifest.json")),
        "{keys:?}"
    );
    assert_eq!(server.open_multipart_uploads(bucket, prefix).await, 0);
}
