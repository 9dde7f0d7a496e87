#!/usr/bin/env python3
"""Expand an upgrade-script template into the installable upgrade script.

The next release's upgrade script is kept as a template,
sql/upgrade/<from>--<to>.sql (not named like an installable script, so
`cargo pgrx install` does not copy it). Its hand-written parts (ALTER TABLE
… ADD COLUMN, backfills, grants, the declarations of Rust functions) are
literal SQL. A section that only restates definitions the install script
already holds is a directive line instead, expanded from sql/*.sql, so each
definition is written once (docs/operations.md, "Releases"):

    -- @include sql/value_index.sql
        the whole file (one that is entirely new in this release);
    -- @function dbrag.search_catalog
        the CREATE FUNCTION statement of that name in sql/*.sql, as
        CREATE OR REPLACE (it may exist already);
    -- @view dbrag.usage
        the same for a view;
    -- @statements sql/budget.sql: CREATE TABLE control_plane.tenant_budgets .. GRANT SELECT ON control_plane.tenant_budgets
        the statements of that file from the one beginning with the first
        text through the one beginning with the second (`.. ` and the second
        text may be left out: that one statement), with the comment lines
        between them.

A statement is taken with the comment lines right above it. Texts are
matched against the statement with its comments removed and its white
space collapsed. A directive that matches no statement, or more than one,
is an error: nothing is written.

    python3 scripts/upgrade_script.py expand sql/upgrade/0.1.0--0.2.0.sql [-o OUT]
    python3 scripts/upgrade_script.py install DIR    # every template into DIR/pg_dbrag--A--B.sql
    python3 scripts/upgrade_script.py list           # the names of all upgrade scripts
    python3 scripts/upgrade_script.py freeze 0.1.0--0.2.0
        at release: writes sql/pg_dbrag--0.1.0--0.2.0.sql (a file of the
        release, never edited again) and removes the template.
"""

import argparse
import glob
import os
import re
import sys

EXTNAME = "pg_dbrag"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = "sql/upgrade"


class TemplateError(Exception):
    pass


def split_statements(text):
    """(start, end, head) for each statement of text: start is where the
    comment lines right above it begin, end is just after its semicolon,
    head is the statement without comments, white space collapsed. A line
    that begins with a backslash (psql's \\echo … \\quit) is no statement."""
    out = []
    i, n = 0, len(text)
    stmt_start = None
    head = []
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                raise TemplateError("unterminated /* comment")
            head.append(" ")
            continue
        if c.isspace():
            if stmt_start is not None:
                head.append(" ")
            i += 1
            continue
        if stmt_start is None:
            if c == "\\":
                j = text.find("\n", i)
                i = n if j < 0 else j + 1
                continue
            stmt_start = i
        if c in "'\"":
            j = i + 1
            while True:
                j = text.find(c, j)
                if j < 0:
                    raise TemplateError("unterminated quoted text")
                if text.startswith(c + c, j):
                    j += 2
                    continue
                break
            head.append(text[i : j + 1])
            i = j + 1
            continue
        if c == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:])
            if m:
                tag = m.group(0)
                j = text.find(tag, i + len(tag))
                if j < 0:
                    raise TemplateError(f"unterminated {tag} quote")
                head.append(text[i : j + len(tag)])
                i = j + len(tag)
                continue
        if c == ";":
            out.append((leading_comments(text, stmt_start), i + 1, collapse("".join(head))))
            stmt_start, head = None, []
            i += 1
            continue
        head.append(c)
        i += 1
    if stmt_start is not None and "".join(head).strip():
        raise TemplateError("text after the last statement has no semicolon")
    return out


def collapse(s):
    return re.sub(r"\s+", " ", s).strip()


def leading_comments(text, start):
    """Start of the run of whole comment lines right above position start."""
    line_start = text.rfind("\n", 0, start) + 1
    while line_start > 0:
        prev = text.rfind("\n", 0, line_start - 1) + 1
        if not text[prev:line_start].lstrip().startswith("--"):
            break
        line_start = prev
    return line_start


def install_files():
    files = sorted(glob.glob(os.path.join(ROOT, "sql", "*.sql")))
    return [f for f in files if not os.path.basename(f).startswith(EXTNAME + "--")]


_cache = {}


def statements_of(path):
    if path not in _cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            _cache[path] = (text, split_statements(text))
        except TemplateError as e:
            raise TemplateError(f"{rel(path)}: {e}") from None
    return _cache[path]


def rel(path):
    return os.path.relpath(path, ROOT)


def name_pattern(name):
    """A schema-qualified name as written in SQL, each part quoted or not."""
    parts = name.split(".")
    return r"\s*\.\s*".join(r'"?%s"?' % re.escape(p) for p in parts)


def line_of(path, k):
    text, stmts = statements_of(path)
    return text.count("\n", 0, stmts[k][0]) + 1


def one(found, what):
    if not found:
        raise TemplateError(f"{what}: matches no statement")
    if len(found) > 1:
        places = ", ".join(f"{rel(p)}:{line_of(p, k)}" for p, k in found)
        raise TemplateError(f"{what}: matches more than one statement ({places})")
    return found[0]


def object_statement(kind, spec):
    if not re.fullmatch(r"[A-Za-z0-9_.\"]+", spec.strip()):
        raise TemplateError(f"@{kind} {spec}: not a schema-qualified name")
    name = spec.strip().replace('"', "")
    keyword = "FUNCTION" if kind == "function" else "VIEW"
    pat = re.compile(r"CREATE (OR REPLACE )?%s %s\b" % (keyword, name_pattern(name)), re.I)
    found = []
    for path in install_files():
        _, stmts = statements_of(path)
        for k, (_, _, head) in enumerate(stmts):
            hm = pat.match(head)
            if hm:
                found.append((path, k))
    path, k = one(found, f"@{kind} {spec}")
    text, stmts = statements_of(path)
    start, end, _ = stmts[k]
    block = text[start:end]
    # Restating a final definition: the object may exist already.
    block = re.sub(r"\bCREATE\s+(?!OR\s+REPLACE\b)(%s)\b" % keyword, r"CREATE OR REPLACE \1", block, count=1, flags=re.I)
    return block, path


def statement_range(spec):
    m = re.fullmatch(r"(\S+)\s*:\s*(.+?)(?:\s+\.\.\s+(.+))?", spec.strip())
    if not m:
        raise TemplateError(f"@statements {spec}: want FILE: FIRST [.. LAST]")
    path = os.path.join(ROOT, m.group(1))
    if not os.path.isfile(path):
        raise TemplateError(f"@statements {spec}: no file {m.group(1)}")
    text, stmts = statements_of(path)

    def find(prefix):
        prefix = collapse(prefix)
        hits = [(path, k) for k, (_, _, head) in enumerate(stmts) if head.startswith(prefix)]
        return one(hits, f"@statements {m.group(1)}: {prefix}")[1]

    first = find(m.group(2))
    last = find(m.group(3)) if m.group(3) else first
    if last < first:
        raise TemplateError(f"@statements {spec}: the last statement comes before the first")
    return text[stmts[first][0] : stmts[last][1]], path


def include(spec):
    path = os.path.join(ROOT, spec.strip())
    if os.path.abspath(path) not in [os.path.abspath(f) for f in install_files()]:
        raise TemplateError(f"@include {spec}: not a file of the install script in sql/")
    text, _ = statements_of(path)
    return text.rstrip("\n"), path


DIRECTIVE = re.compile(r"^--\s*@(\w+)\s+(.*?)\s*$")


def expand(template_path, frozen=False):
    with open(template_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    for no, line in enumerate(lines, 1):
        m = DIRECTIVE.match(line)
        if not m:
            if re.match(r"^\s*--\s*@", line):
                raise TemplateError(f"{rel(template_path)}:{no}: malformed directive: {line}")
            out.append(line)
            continue
        kind, spec = m.group(1), m.group(2)
        try:
            if kind == "include":
                block, src = include(spec)
            elif kind in ("function", "view"):
                block, src = object_statement(kind, spec)
            elif kind == "statements":
                block, src = statement_range(spec)
            else:
                raise TemplateError(f"unknown directive @{kind}")
        except TemplateError as e:
            raise TemplateError(f"{rel(template_path)}:{no}: {e}") from None
        out.append(f"-- @{kind} {spec}  (from {rel(src)})")
        out.append(block)
    body = "\n".join(out)
    name = os.path.basename(template_path)
    if frozen:
        header = (
            f"-- {EXTNAME}--{name}: expanded from {TEMPLATES}/{name} by scripts/upgrade_script.py "
            f"when the release was cut; a released script is never edited.\n"
        )
    else:
        header = (
            f"-- {EXTNAME}--{name}: generated by scripts/upgrade_script.py from "
            f"{TEMPLATES}/{name}; edit that file, not this one.\n"
        )
    return header + body


def templates():
    return sorted(glob.glob(os.path.join(ROOT, TEMPLATES, "*--*.sql")))


def frozen():
    return sorted(glob.glob(os.path.join(ROOT, "sql", f"{EXTNAME}--*--*.sql")))


def script_name(template_path):
    return f"{EXTNAME}--{os.path.basename(template_path)}"


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("expand")
    e.add_argument("template")
    e.add_argument("-o", "--out")
    i = sub.add_parser("install")
    i.add_argument("dir")
    sub.add_parser("list")
    fr = sub.add_parser("freeze")
    fr.add_argument("step", help="e.g. 0.1.0--0.2.0")
    args = ap.parse_args()
    # A template and a frozen script of the same step would both claim one file.
    clash = {os.path.basename(f) for f in frozen()} & {script_name(t) for t in templates()}
    if clash:
        print(f"upgrade_script.py: both a template and a frozen script for {', '.join(sorted(clash))}", file=sys.stderr)
        sys.exit(1)
    try:
        if args.cmd == "expand":
            text = expand(args.template)
            if args.out:
                write(args.out, text)
            else:
                sys.stdout.write(text)
        elif args.cmd == "install":
            # Expand them all before writing any.
            done = [(script_name(t), expand(t)) for t in templates()]
            for name, text in done:
                write(os.path.join(args.dir, name), text)
                print(os.path.join(args.dir, name))
        elif args.cmd == "list":
            names = {os.path.basename(f) for f in frozen()} | {script_name(t) for t in templates()}
            for n in sorted(names):
                print(n)
        elif args.cmd == "freeze":
            template = os.path.join(ROOT, TEMPLATES, args.step + ".sql")
            if not os.path.isfile(template):
                raise TemplateError(f"no template {rel(template)}")
            target = os.path.join(ROOT, "sql", script_name(template))
            if os.path.exists(target):
                raise TemplateError(f"{rel(target)} exists already: a released script is never rewritten")
            write(target, expand(template, frozen=True))
            os.remove(template)
            print(f"wrote {rel(target)}, removed {rel(template)}")
    except TemplateError as e:
        print(f"upgrade_script.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
