"""Schema check: the objects of extension pg_dbrag in two databases of one
cluster must be identical, definition for definition. scripts/upgrade_test.sh
compares a database updated from the previous release with a fresh
CREATE EXTENSION of the current build, so a change of the SQL surface without
its upgrade script (sql/upgrade/A--B.sql, expanded into pg_dbrag--A--B.sql) fails CI and prints the diff.

    python3 tests/upgrade/schema_check.py FRESH_DB UPDATED_DB [--rows]

Compared, for every member of the extension (pg_depend deptype 'e'):
functions (pg_get_functiondef, or the signature of aggregates), owner, ACL,
pg_init_privs, comment; tables (columns by name with type, nullability,
default, identity, generation, collation, column ACL and comment;
constraints; indexes; triggers; policies; row security flags; options),
views (pg_get_viewdef, options), sequences, types (enum labels in order,
composite attributes, domain constraints), schemas, event triggers, casts,
operators; and the extension's pg_extension_config_dump entries. Column
ORDER is not compared (ALTER TABLE … ADD COLUMN appends); it is printed as a
note. --rows also compares the rows the install script seeds (every
extension table's contents, without timestamps and generated ids)."""

import re
import difflib
import sys

from common import su

MEMBERS = """
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'pg_dbrag')
SELECT d.classid::regclass::text, d.objid, (pg_identify_object(d.classid, d.objid, 0)).type,
       (pg_identify_object(d.classid, d.objid, 0)).identity
FROM pg_depend d, ext
WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
"""

COMMON = """
SELECT coalesce(obj_description(%(oid)s, %(cat)s), '') AS comment,
       coalesce((SELECT array_to_string(ARRAY(SELECT unnest(initprivs)::text ORDER BY 1), ' ')
                 FROM pg_init_privs WHERE objoid = %(oid)s AND classoid = %(cat)s::regclass AND objsubid = 0), '')
         AS initprivs
"""

PROC = """
SELECT p.prokind, pg_get_userbyid(p.proowner),
       array_to_string(ARRAY(SELECT unnest(p.proacl)::text ORDER BY 1), ' '),
       CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid)
            ELSE p.oid::regprocedure::text || ' ' || pg_get_function_result(p.oid) END
FROM pg_proc p WHERE p.oid = %s
"""

REL = """
SELECT c.relkind, pg_get_userbyid(c.relowner),
       array_to_string(ARRAY(SELECT unnest(c.relacl)::text ORDER BY 1), ' '),
       c.relrowsecurity, c.relforcerowsecurity, coalesce(array_to_string(c.reloptions, ','), ''),
       c.relpersistence, c.relreplident,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) ELSE '' END
FROM pg_class c WHERE c.oid = %s
"""

COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       coalesce(pg_get_expr(ad.adbin, ad.adrelid), ''), a.attidentity, a.attgenerated,
       coalesce((SELECT collname FROM pg_collation WHERE oid = a.attcollation AND a.attcollation <> 0
                 AND a.attcollation <> (SELECT typcollation FROM pg_type WHERE oid = a.atttypid)), ''),
       array_to_string(ARRAY(SELECT unnest(a.attacl)::text ORDER BY 1), ' '),
       coalesce(col_description(a.attrelid, a.attnum), ''), a.attnum
FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attname
"""

DEPENDENTS = """
SELECT 'constraint ' || conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %(oid)s
UNION ALL
SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %(oid)s
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(oid) || CASE tgenabled WHEN 'O' THEN '' ELSE ' [' || tgenabled::text || ']' END
FROM pg_trigger WHERE tgrelid = %(oid)s AND NOT tgisinternal
UNION ALL
SELECT 'policy ' || polname || ' ' || polcmd::text || ' ' || CASE WHEN polpermissive THEN 'permissive' ELSE 'restrictive' END
       || ' to ' || array_to_string(ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END
                                          FROM unnest(polroles) r ORDER BY 1), ',')
       || ' using (' || coalesce(pg_get_expr(polqual, polrelid), '') || ') check ('
       || coalesce(pg_get_expr(polwithcheck, polrelid), '') || ')'
FROM pg_policy WHERE polrelid = %(oid)s
UNION ALL
SELECT 'rule ' || rulename || ': ' || pg_get_ruledef(oid) FROM pg_rewrite
WHERE ev_class = %(oid)s AND rulename <> '_RETURN'
UNION ALL
SELECT 'sequence ' || format_type(seqtypid, NULL) || ' start ' || seqstart || ' inc ' || seqincrement
       || ' min ' || seqmin || ' max ' || seqmax || ' cache ' || seqcache || ' cycle ' || seqcycle
FROM pg_sequence WHERE seqrelid = %(oid)s
ORDER BY 1
"""

TYPE = """
SELECT t.typtype, pg_get_userbyid(t.typowner),
       array_to_string(ARRAY(SELECT unnest(t.typacl)::text ORDER BY 1), ' '),
       CASE t.typtype
         WHEN 'e' THEN (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid)
         WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod) || ' notnull=' || t.typnotnull || ' default='
                       || coalesce(t.typdefault, '') || ' ' || coalesce((SELECT string_agg(
                          conname || ' ' || pg_get_constraintdef(oid), '; ' ORDER BY conname)
                          FROM pg_constraint WHERE contypid = t.oid), '')
         WHEN 'c' THEN (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                        FROM pg_attribute WHERE attrelid = t.typrelid AND attnum > 0 AND NOT attisdropped)
         ELSE '' END
FROM pg_type t WHERE t.oid = %s
"""

OTHER = {
    "pg_namespace": "SELECT pg_get_userbyid(nspowner), "
                    "array_to_string(ARRAY(SELECT unnest(nspacl)::text ORDER BY 1), ' ') "
                    "FROM pg_namespace WHERE oid = %s",
    "pg_event_trigger": "SELECT evtevent, evtfoid::regprocedure::text, evtenabled, "
                        "coalesce(array_to_string(evttags, ','), '') FROM pg_event_trigger WHERE oid = %s",
    "pg_cast": "SELECT castfunc::regprocedure::text, castcontext, castmethod FROM pg_cast WHERE oid = %s",
    "pg_operator": "SELECT oprcode::regprocedure::text, oprcom::regoperator::text, oprnegate::regoperator::text, "
                   "oprrest::text, oprjoin::text FROM pg_operator WHERE oid = %s",
}

CONFIG = """
SELECT c.relname::text, coalesce(e.cond, '')
FROM pg_extension x, unnest(x.extconfig, x.extcondition) AS e(cfg, cond)
JOIN pg_class c ON c.oid = e.cfg
WHERE x.extname = 'pg_dbrag' ORDER BY 1
"""


def describe(conn):
    """Lines "kind identity | what: value", sorted; plus column-order notes."""
    lines, order = [], []
    for catalog, oid, kind, identity in conn.execute(MEMBERS).fetchall():
        head = f"{kind} {identity}"
        cur = conn.execute(COMMON, {"oid": oid, "cat": catalog}).fetchone()
        lines.append(f"{head} | comment: {cur[0]}")
        lines.append(f"{head} | initprivs: {cur[1]}")
        if catalog == "pg_proc":
            prokind, owner, acl, definition = conn.execute(PROC, (oid,)).fetchone()
            lines += [f"{head} | kind: {prokind}", f"{head} | owner: {owner}", f"{head} | acl: {acl}"]
            lines += [f"{head} | def: {line}" for line in definition.splitlines()]
        elif catalog == "pg_class":
            row = conn.execute(REL, (oid,)).fetchone()
            names = ["relkind", "owner", "acl", "rowsecurity", "forcerowsecurity", "options",
                     "persistence", "replident"]
            lines += [f"{head} | {n}: {v}" for n, v in zip(names, row[:-1])]
            lines += [f"{head} | view: {line}" for line in row[-1].splitlines()]
            cols = conn.execute(COLUMNS, (oid,)).fetchall()
            for name, typ, notnull, default, ident, gen, coll, acl, comment, _ in cols:
                lines.append(f"{head} | column {name}: {typ} notnull={notnull} default={default} "
                             f"identity={ident} generated={gen} collation={coll} acl={acl} comment={comment}")
            order.append((head, [c[0] for c in sorted(cols, key=lambda c: c[-1])]))
            lines += [f"{head} | {r[0]}" for r in conn.execute(DEPENDENTS, {"oid": oid}).fetchall()]
        elif catalog == "pg_type":
            row = conn.execute(TYPE, (oid,)).fetchone()
            lines += [f"{head} | {n}: {v}" for n, v in zip(["typtype", "owner", "acl", "def"], row)]
        elif catalog in OTHER:
            row = conn.execute(OTHER[catalog], (oid,)).fetchone()
            lines.append(f"{head} | {' '.join(str(v) for v in row)}")
    lines += [f"config_dump {rel}: {cond}" for rel, cond in conn.execute(CONFIG).fetchall()]
    # Objects in name order, each object's lines in the order written (a
    # function body stays readable in the diff).
    seq = {line: i for i, line in enumerate(lines)}
    return sorted(lines, key=lambda line: (line.split(" | ", 1)[0], seq[line])), dict(order)


def seeded_rows(conn):
    """What the install script puts into the extension's tables, without the
    values that differ by construction (timestamps, random and serial ids)."""
    lines = []
    for (table,) in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
            "WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relkind IN ('r', 'p') "
            "AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_dbrag') ORDER BY 1"):
        cols = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "AND atttypid NOT IN ('timestamptz'::regtype, 'timestamp'::regtype) "
            "AND attname NOT IN ('audit_id', 'history_id', 'example_id', 'connection_id') ORDER BY attname",
            (table,))]
        select = ", ".join(f'"{c}"' for c in cols)
        for (row,) in conn.execute(f"SELECT ({select})::text FROM {table} ORDER BY 1"):
            # Role names carry a tag of the database's name by design
            # (docs/isolation.md); the two databases compared differ in name.
            row = re.sub(r"(dbrag_tenant_|dbrag_t_)[0-9a-f]{8}_", r"\1<db tag>_", row)
            lines.append(f"row {table}: {row}")
    return lines


def main(argv):
    fresh, updated = argv[1], argv[2]
    with su(fresh) as f, su(updated) as u:
        want, want_order = describe(f)
        got, got_order = describe(u)
        if "--rows" in argv:
            want += seeded_rows(f)
            got += seeded_rows(u)
    for head, cols in want_order.items():
        if head in got_order and got_order[head] != cols and sorted(got_order[head]) == sorted(cols):
            print(f"note: column order of {head} differs: fresh {cols}, updated {got_order[head]}")
    diff = list(difflib.unified_diff(want, got, f"fresh CREATE EXTENSION ({fresh})",
                                     f"ALTER EXTENSION UPDATE ({updated})", lineterm="", n=1))
    if diff:
        print("\n".join(diff))
        print(f"schema check FAILED: {fresh} and {updated} differ ({sum(1 for d in diff if d[:1] in '+-') - 2} "
              "lines); every change of the SQL surface needs its section in the upgrade script")
        return 1
    print(f"schema check: {len(want)} definitions identical in {fresh} and {updated}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
