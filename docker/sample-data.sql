-- Sample data for the compose demo; run once by the postgres image on first start.
CREATE TABLE customers (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    total_cents integer NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO customers (name, email)
SELECT 'customer ' || g, 'customer' || g || '@example.com' FROM generate_series(1, 1000) AS g;
INSERT INTO orders (customer_id, total_cents, placed_at)
SELECT 1 + (g % 1000), 100 + (g * 37) % 50000, now() - make_interval(mins => g)
FROM generate_series(1, 20000) AS g;
