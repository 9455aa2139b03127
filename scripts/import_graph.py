"""The package's import graph from the source (``ast``, nothing is imported): cycles, layers, forbidden edges.

    python scripts/import_graph.py            # parts, edges, layers; exit 1 on a cycle or a forbidden import
    python scripts/import_graph.py --modules  # the same per module instead of per top-level part

Every ``import`` counts, also those inside functions (a lazy import is still a dependency). A part is a
top-level subpackage (``data``, ``models``, ...) or a root module (``config``, ``errors``).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "deeppneumonia"
SRC = Path(__file__).resolve().parent.parent / "src" / PACKAGE
# what the layers below may never reach, directly or through other modules
FORBIDDEN = {part: ("training", "studies", "cli") for part in ("data", "transforms", "models", "losses", "inference",
                                                                "evaluation", "serve")}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (a ``from pkg import name`` naming a submodule counts as that module)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    pkg = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith(PACKAGE):
                continue
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in out if m in modules and m != here}


def graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def collapse(g: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in g.items():
        out.setdefault(part_of(m), set()).update(part_of(d) for d in deps if part_of(d) != part_of(m))
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def reach(g: dict[str, set[str]], starts: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        v = todo.pop()
        for w in g.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def forbidden_imports(g: dict[str, set[str]]) -> list[str]:
    """``part -> module`` for every forbidden part a protected part reaches (directly or not)."""
    bad = []
    for part, banned in FORBIDDEN.items():
        starts = [m for m in g if part_of(m) == part]
        bad += [f"{part} -> {m}" for m in sorted(reach(g, starts)) if part_of(m) in banned]
    return bad


def layers(g: dict[str, set[str]]) -> list[list[str]]:
    """Floor 1 imports nothing of the package; each floor imports only floors below (cycles flattened)."""
    floor: dict[str, int] = {}
    def level(v: str, path: frozenset[str] = frozenset()) -> int:
        if v not in floor:
            deps = [d for d in g.get(v, ()) if d not in path]
            floor[v] = 1 + max((level(d, path | {v}) for d in deps), default=0)
        return floor[v]
    for v in g:
        level(v)
    out: list[list[str]] = [[] for _ in range(max(floor.values(), default=0))]
    for v, f in floor.items():
        out[f - 1].append(v)
    return [sorted(x) for x in out]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modules", action="store_true", help="per module rather than per top-level part")
    args = ap.parse_args()
    g = graph()
    view = g if args.modules else collapse(g)
    edges = sum(len(v) for v in view.values())
    print(f"{len(view)} {'modules' if args.modules else 'parts'}, {edges} import edges")
    for i, floor in enumerate(layers(view), start=1):
        print(f"  floor {i}: {', '.join(floor)}")
    loops = cycles(g)
    bad = forbidden_imports(g)
    for c in loops:
        print("cycle:", " <-> ".join(c))
    for b in bad:
        print("forbidden:", b)
    print(f"{len(loops)} module cycle(s), {len(bad)} forbidden import(s)")
    return 1 if loops or bad else 0


if __name__ == "__main__":
    sys.exit(main())
