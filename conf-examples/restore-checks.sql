-- walkeeper restore-test --check-file: one query per line, each must return true (run in --check-db, default postgres).
select count(*) > 0 from pg_class
-- select count(*) > 0 from orders
-- select max(created_at) > now() - interval '2 days' from orders
