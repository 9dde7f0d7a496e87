-- The guard's verdicts. dbrag._guard_check(sql, allowed tables, false)
-- returns 'ok' or 'SQLSTATE: message' for the statement as the model wrote
-- it; ask() and generate_sql() raise the same errors. Only
-- regress_guard.orders and regress_guard.customers are allowed here.
\pset format unaligned
\pset fieldsep ' | '
CREATE SCHEMA regress_guard;
CREATE TABLE regress_guard.orders (id int PRIMARY KEY, customer_id int, total numeric, note text);
CREATE TABLE regress_guard.customers (id int PRIMARY KEY, name text);
CREATE TABLE regress_guard.secrets (id int, secret text);
CREATE VIEW regress_guard.order_totals AS SELECT id, total FROM regress_guard.orders;
CREATE SEQUENCE regress_guard.seq;
CREATE FUNCTION regress_guard.bump() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
CREATE TABLE regress_guard.allowed AS
    SELECT ARRAY['regress_guard.orders'::regclass, 'regress_guard.customers'::regclass]::oid[] AS oids;
SELECT n, dbrag._guard_check(s, (SELECT oids FROM regress_guard.allowed), false) AS verdict
FROM (VALUES
    -- reads of the allowed tables
    (1, 'SELECT id, total FROM regress_guard.orders'),
    (2, 'SELECT o.id, c.name FROM regress_guard.orders o JOIN regress_guard.customers c ON c.id = o.customer_id'),
    (3, 'WITH big AS (SELECT * FROM regress_guard.orders WHERE total > 10) SELECT count(*) FROM big'),
    (4, 'SELECT customer_id, sum(total) FROM regress_guard.orders GROUP BY 1 ORDER BY 2 DESC LIMIT 5'),
    (5, 'SELECT id FROM regress_guard.orders UNION SELECT id FROM regress_guard.customers'),
    (6, 'TABLE regress_guard.orders'),
    (7, 'VALUES (1), (2)'),
    (8, 'SELECT * FROM generate_series(1, 3)'),
    (9, 'WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r LIMIT 5'),
    (10, 'SELECT lower(name), length(name) FROM regress_guard.customers;'),
    -- relations outside the allowed set
    (11, 'SELECT * FROM regress_guard.secrets'),
    (12, 'SELECT id FROM regress_guard.orders WHERE id IN (SELECT id FROM regress_guard.secrets)'),
    (13, 'SELECT * FROM regress_guard.order_totals'),
    (14, 'SELECT * FROM regress_guard.nosuch'),
    -- system catalogs and statistics
    (15, 'SELECT * FROM pg_catalog.pg_authid'),
    (16, 'SELECT rolname FROM pg_roles'),
    (17, 'SELECT table_name FROM information_schema.tables'),
    (18, 'SELECT query FROM pg_stat_activity'),
    -- writes, locks and DDL
    (19, 'INSERT INTO regress_guard.orders VALUES (1, 1, 1, NULL)'),
    (20, 'UPDATE regress_guard.orders SET total = 0'),
    (21, 'DELETE FROM regress_guard.orders'),
    (22, 'WITH d AS (DELETE FROM regress_guard.orders RETURNING *) SELECT * FROM d'),
    (23, 'SELECT * INTO regress_guard.copy FROM regress_guard.orders'),
    (24, 'SELECT * FROM regress_guard.orders FOR UPDATE'),
    (25, 'DROP TABLE regress_guard.orders'),
    (26, 'CREATE TABLE regress_guard.x (a int)'),
    (27, 'TRUNCATE regress_guard.orders'),
    (28, 'GRANT SELECT ON regress_guard.secrets TO PUBLIC'),
    (29, 'COPY regress_guard.orders TO STDOUT'),
    (30, 'COPY (SELECT 1) TO PROGRAM ''true'''),
    (31, 'DO $$ BEGIN PERFORM 1; END $$'),
    (32, 'EXPLAIN ANALYZE DELETE FROM regress_guard.orders'),
    (33, 'SET ROLE postgres'),
    (34, 'SHOW dbrag.master_key'),
    (35, 'PREPARE p AS SELECT 1'),
    (36, 'LISTEN channel'),
    (37, 'CALL regress_guard.proc()'),
    -- more than one statement
    (38, 'SELECT 1; DROP TABLE regress_guard.orders'),
    (39, 'SELECT 1; SELECT 2'),
    (40, E'SELECT 1 --\n; DELETE FROM regress_guard.orders'),
    -- functions with side effects or that reach outside the tables
    (41, 'SELECT set_config(''dbrag.tenant_id'', ''x'', false)'),
    (42, 'SELECT pg_catalog.current_setting(''dbrag.master_key'')'),
    (43, 'SELECT pg_sleep(10)'),
    (44, 'SELECT id FROM regress_guard.orders, LATERAL (SELECT pg_sleep(1)) s'),
    (45, 'SELECT pg_terminate_backend(1)'),
    (46, 'SELECT pg_advisory_lock(1)'),
    (47, 'SELECT pg_notify(''c'', ''x'')'),
    (48, 'SELECT nextval(''regress_guard.seq'')'),
    (49, 'SELECT setval(''regress_guard.seq'', 10)'),
    (50, 'SELECT txid_current()'),
    (51, 'SELECT lo_import(''/etc/passwd'')'),
    (52, 'SELECT pg_read_file(''/etc/passwd'')'),
    (53, 'SELECT query_to_xml(''DELETE FROM regress_guard.orders RETURNING 1'', true, true, '''')'),
    (54, 'SELECT regress_guard.bump()'),
    (55, 'SELECT dbrag.decrypt(''\x00'', ''context'')'),
    (56, 'SELECT * FROM dblink(''host=127.0.0.1'', ''SELECT 1'') AS t(a int)'),
    -- comments and quoting tricks
    (57, 'SELECT 1 /* ; DROP TABLE regress_guard.orders */'),
    (58, E'-- DROP TABLE regress_guard.orders\nSELECT id FROM regress_guard.orders'),
    (59, 'SELECT $x$; DROP TABLE regress_guard.orders; $x$ AS s'),
    (60, E'SELECT E''\\''; DELETE FROM regress_guard.orders; --'' AS s'),
    (61, 'SELECT id FROM regress_guard.orders /* unterminated'),
    (62, 'SELECT ''unterminated'),
    -- not SQL
    (63, 'SELEC 1'),
    (64, ''),
    (65, '   ;  ')
) AS t(n, s) ORDER BY n;
-- Raised rather than returned (the default): the message as a client reads it.
SELECT dbrag._guard_check('DELETE FROM regress_guard.orders', (SELECT oids FROM regress_guard.allowed));
SELECT dbrag._guard_check('SELECT * FROM regress_guard.secrets', (SELECT oids FROM regress_guard.allowed));
SELECT dbrag._guard_check(NULL, NULL);
-- The guard for remote data planes names tables as 'schema.table' and
-- cannot resolve functions: only a fixed list of plain ones passes.
SELECT n, regress_util.try(format('SELECT dbrag._guard_check_remote(%L, %L)', s, '{public.orders,public.customers}')) AS verdict
FROM (VALUES
    (1, 'SELECT id, total FROM orders'),
    (2, 'SELECT o.id FROM public.orders o JOIN customers c ON c.id = o.customer_id'),
    (3, 'SELECT * FROM secrets'),
    (4, 'SELECT * FROM other.orders'),
    (5, 'SELECT * FROM pg_catalog.pg_user'),
    (6, 'SELECT count(*), lower(name) FROM customers GROUP BY 2'),
    (7, 'SELECT pg_sleep(1)'),
    (8, 'SELECT dblink_exec(''x'', ''y'')'),
    (9, 'DELETE FROM orders'),
    (10, 'SELECT 1; SELECT 2'),
    (11, 'WITH x AS (SELECT * FROM orders) SELECT * FROM x'),
    (12, 'WITH orders AS (SELECT 1 AS id) SELECT * FROM orders, secrets')
) AS t(n, s) ORDER BY n;
-- Only superusers call these diagnostics.
CREATE ROLE regress_guard_user;
SET ROLE regress_guard_user;
SELECT regress_util.try('SELECT dbrag._guard_check(''SELECT 1'', NULL)');
RESET ROLE;
DROP ROLE regress_guard_user;
SET client_min_messages = warning;
DROP SCHEMA regress_guard CASCADE;
RESET client_min_messages;
