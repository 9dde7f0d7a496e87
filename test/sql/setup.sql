-- The extension, and regress_util.try(statement): runs one statement and
-- returns 'ok: <first column>' or 'SQLSTATE: message' with DETAIL and HINT
-- lines, so each verdict reads as one row and the SQLSTATE is pinned too.
CREATE EXTENSION pg_dbrag CASCADE;
CREATE SCHEMA regress_util;
GRANT USAGE ON SCHEMA regress_util TO PUBLIC;
CREATE FUNCTION regress_util.try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
    det text;
    hnt text;
    r text;
BEGIN
    EXECUTE stmt INTO r;
    RETURN 'ok: ' || coalesce(r, 'NULL');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
        det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
    RETURN st || ': ' || msg
        || CASE WHEN det <> '' THEN E'\n  DETAIL: ' || det ELSE '' END
        || CASE WHEN hnt <> '' THEN E'\n  HINT: ' || hnt ELSE '' END;
END
$$;
-- What differs from run to run or with the master key: regress_util.mask
-- hides tenant ids (but the system tenant's), tenant role names and key ids.
CREATE FUNCTION regress_util.mask(t text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(regexp_replace(regexp_replace(t,
        '(?!00000000-0000-0000-0000-000000000001)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}',
        '<uuid>', 'g'),
        'dbrag_tenant_[0-9a-f]{8}_[0-9a-f]{32}', 'dbrag_tenant_<db>_<id>', 'g'),
        'key "[^"]*"', 'key "<key id>"', 'g')
$$;
