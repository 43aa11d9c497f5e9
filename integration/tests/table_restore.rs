//! Table- and schema-level restore from a logical backup: `restore --table`, `--schema`,
//! `--exclude-table`, into a new database and into one that has the tables, with
//! `--force`. Dependencies come along as pg_dump takes them; a foreign key to a table that
//! is not there is skipped and named; row counts cover exactly the restored tables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use pgvault_integration::{pgvault, run, run_ok, text, Fixture};

const DATA: &str = "
create role reporting;
create table customers (id serial primary key, name text not null);
create table orders (id bigserial primary key, customer_id int references customers,
  total numeric(12,2) not null);
create index orders_total_idx on orders (total);
grant select on orders to reporting;
comment on table orders is 'every order';
insert into customers (name) select 'c' || g from generate_series(1, 20) g;
insert into orders (customer_id, total) select 1 + g % 20, g from generate_series(1, 500) g;
create schema audit;
create table audit.events (id serial primary key, what text);
create table audit.noise (id int);
insert into audit.events (what) select 'e' || g from generate_series(1, 30) g;
";

fn restore(fx: &Fixture, target_db: &str, args: &[&str]) -> Output {
    let mut cmd = pgvault(None);
    cmd.args(["restore", "--policy"])
        .arg(&fx.policy)
        .arg("--identity")
        .arg(&fx.key.identity)
        .args(["--target", &fx.source.url(target_db)])
        .args(args);
    run(cmd)
}

#[test]
fn one_table_comes_with_its_dependencies_and_a_dangling_foreign_key_is_skipped_by_name() {
    let Some(fx) = Fixture::start(DATA, "") else {
        return;
    };
    let mut backup = pgvault(None);
    backup.args(["backup", "--policy"]).arg(&fx.policy);
    run_ok(backup);

    // The plan, from the backup's record and its dump: nothing is written.
    let plan = restore(
        &fx,
        "app_tables",
        &["--table", "public.orders", "--dry-run"],
    );
    assert!(plan.status.success(), "{}", text(&plan));
    let shown = text(&plan);
    assert!(
        shown.contains("table:     public.orders (500 rows): restore"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "foreign key orders_customer_id_fkey on public.orders -> public.customers: SKIPPED"
        ),
        "{shown}"
    );
    assert!(!fx.source.databases().contains(&"app_tables".to_string()));

    let out = restore(&fx, "app_tables", &["--table", "public.orders"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("OK    public.orders"), "{}", text(&out));
    assert!(text(&out).contains("SKIP  foreign key orders_customer_id_fkey"));
    let q = |sql: &str| fx.source.psql("app_tables", sql);
    assert_eq!(q("select count(*) from orders"), "500");
    assert_eq!(q("select to_regclass('public.customers') is null"), "t");
    assert_eq!(
        q("select count(*) from pg_indexes where tablename = 'orders'"),
        "2",
        "the primary key and orders_total_idx"
    );
    assert_eq!(
        q("select has_table_privilege('reporting', 'public.orders', 'select')"),
        "t"
    );
    assert_eq!(
        q("select obj_description('public.orders'::regclass)"),
        "every order"
    );
    // The sequence it owns came along, set past the restored rows.
    q("insert into orders (total) values (1)");
    assert_eq!(q("select max(id) from orders"), "501");

    // A schema, minus a table.
    let out = restore(
        &fx,
        "app_audit",
        &["--schema", "audit", "--exclude-table", "audit.noise"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fx.source
            .psql("app_audit", "select count(*) from audit.events"),
        "30"
    );
    assert_eq!(
        fx.source
            .psql("app_audit", "select to_regclass('audit.noise') is null"),
        "t"
    );

    // A name the backup does not hold is refused by name.
    let out = restore(&fx, "app_tables", &["--table", "public.nope"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("table public.nope"), "{}", text(&out));
}

#[test]
fn into_a_database_that_has_the_table_it_is_left_alone_unless_forced() {
    let Some(fx) = Fixture::start(DATA, "") else {
        return;
    };
    let mut backup = pgvault(None);
    backup.args(["backup", "--policy"]).arg(&fx.policy);
    run_ok(backup);
    fx.source.psql("app", "delete from orders where id > 100");

    let out = restore(&fx, "app", &["--table", "public.orders"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("SKIP  public.orders: present in app"),
        "{}",
        text(&out)
    );
    assert_eq!(fx.source.psql("app", "select count(*) from orders"), "100");

    let out = restore(&fx, "app", &["--table", "public.orders", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fx.source.psql("app", "select count(*) from orders"), "500");
    // customers is in the target, so the foreign key is restored.
    assert_eq!(
        fx.source.psql(
            "app",
            "select count(*) from pg_constraint where conname = 'orders_customer_id_fkey'"
        ),
        "1"
    );
    // Everything else is as it was.
    assert_eq!(
        fx.source.psql("app", "select count(*) from customers"),
        "20"
    );

    // A table others depend on cannot be replaced: one transaction, nothing changes.
    let out = restore(&fx, "app", &["--table", "public.customers", "--force"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("target is unchanged") || text(&out).contains("was not changed"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fx.source.psql("app", "select count(*) from customers"),
        "20"
    );
}
