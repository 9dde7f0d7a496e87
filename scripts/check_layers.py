#!/usr/bin/env python3
"""Fail on any import cycle between the modules of src/, or on a `match` on
the engine kind outside `engine::open_kind` (docs/architecture.md).

A module is a top-level file `src/x.rs` or folder `src/x/` (a folder counts
as one module: its files may use each other). An arrow x -> y is any
`crate::y` in code of x (comments skipped), including `use crate::{y, ...}`.
`lib.rs` only wires modules and is left out. Prints the arrows with
`--graph`, and the modules by layer (docs/architecture.md's picture) with
`--levels`.
"""

import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path: pathlib.Path) -> str | None:
    rel = path.relative_to(SRC)
    if rel.parts[0] in ("lib.rs", "bin"):
        return None
    if len(rel.parts) == 1:
        return rel.stem
    return rel.parts[0]


def code_lines(text: str):
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            yield ""
            continue
        # A trailing comment: drop it (no string in this code base holds `//`
        # before a `crate::` path).
        yield line.split("//", 1)[0] if "crate::" in line.split("//", 1)[-1] else line


def arrows() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.rs")):
        mod = module_of(path)
        if mod is None:
            continue
        targets = graph.setdefault(mod, set())
        text = "\n".join(code_lines(path.read_text()))
        for m in re.finditer(r"crate::([a-z_][a-z0-9_]*)", text):
            targets.add(m.group(1))
        for m in re.finditer(r"crate::\{([^}]*)\}", text):
            for name in re.findall(r"\b([a-z_][a-z0-9_]*)\b", m.group(1)):
                targets.add(name)
        targets.discard(mod)
    known = set(graph)
    return {m: {t for t in ts if t in known} for m, ts in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# The only files that may `match` on the engine kind: the enum's own names
# and the one place an engine is opened.
KIND_MATCH_ALLOWED = {"connection_store.rs", "engine/mod.rs"}


def kind_matches() -> list[str]:
    """Match arms on `EngineKind` outside the allowed files."""
    found = []
    for path in sorted(SRC.rglob("*.rs")):
        rel = str(path.relative_to(SRC))
        if rel in KIND_MATCH_ALLOWED:
            continue
        for n, line in enumerate(code_lines(path.read_text()), 1):
            if re.search(r"EngineKind::\w+\s*(\|\s*EngineKind::\w+\s*)*(if\b.*)?=>", line):
                found.append(f"src/{rel}:{n}: {line.strip()}")
    return found


def main() -> int:
    graph = arrows()
    if "--graph" in sys.argv:
        for m in sorted(graph):
            print(f"{m} -> {' '.join(sorted(graph[m]))}")
    found = cycles(graph)
    if "--levels" in sys.argv and not found:
        level: dict[str, int] = {}

        def depth(m: str) -> int:
            if m not in level:
                level[m] = 1 + max((depth(t) for t in graph[m]), default=-1)
            return level[m]

        for m in graph:
            depth(m)
        for n in sorted(set(level.values()), reverse=True):
            print(n, " ".join(sorted(m for m in graph if level[m] == n)))
    arms = kind_matches()
    for arm in arms:
        print(f"a match on the engine kind outside engine::open_kind: {arm}")
    if found or arms:
        for comp in found:
            inside = [
                f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp
            ]
            print(f"import cycle among {', '.join(comp)}: {'; '.join(inside)}")
        return 1
    print(f"layers: {len(graph)} modules, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
