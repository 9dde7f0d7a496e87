-- pg_dbrag 0.1.0 → 0.2.0, run by ALTER EXTENSION pg_dbrag UPDATE.
--
-- Rules for every section of this file (docs/operations.md, "Upgrading"):
--   * one section per change, headed by a comment naming it;
--   * never drop data: no DROP TABLE / DROP COLUMN of anything holding rows,
--     backfill new columns from what is there;
--   * the result must equal a fresh CREATE EXTENSION of 0.2.0, object for
--     object (definitions, defaults, constraints, indexes, policies, triggers,
--     grants, comments, pg_extension_config_dump entries): the schema check
--     in scripts/upgrade_test.sh compares the two and fails CI otherwise;
--   * new tables holding tenant data get pg_extension_config_dump, and the
--     grants finalize.sql gives (e.g. GRANT ALL … TO dbrag_admin);
--   * functions implemented in Rust are declared exactly as the generated
--     install script declares them (`cargo pgrx schema` prints it).
-- Once 0.2.0 is released this file is frozen; later changes go into
-- pg_dbrag--0.2.0--<next>.sql.

\echo Use "ALTER EXTENSION pg_dbrag UPDATE TO '0.2.0'" to load this file. \quit

