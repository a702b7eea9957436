"""The layout's numbers (issue 13), measured from the source: import cycles
counting imports inside functions, function-level imports per 1,000 lines,
`orchestrator` -> `tasks` imports, calls of `get_settings()` outside the
composition roots, and oversized modules and functions.

    python -m tests.architecture        # the report; exit 1 if a limit is broken

`tests/test_architecture.py` holds the limits in the suite. A function over
`MAX_FUNCTION_LINES` passes when its docstring has a line starting with
"Long because" that says why it is one piece.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "tasks", "events")
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80
MAX_LOCAL_IMPORTS_PER_KLOC = 2.5
REASON = "Long because"

# The modules that may call get_settings(): the composition roots, which read
# the settings once and pass values down, and the config package that
# defines it. Everything below them is given its settings.
SETTINGS_READERS = frozenset(
    {
        "orchestrator.cli.main",
        "orchestrator.cli.root",
        "orchestrator.api.app",
        "tasks.app",
        "tasks.deps",
        "tasks.observe",
        "tasks.worker_probe",
        "orchestrator.config.settings",
        "orchestrator.config.report",
        # Still reading them for the secret values to mask, until the masking
        # path is rebuilt (issue 15): not a pattern to follow.
        "orchestrator.config.secrets",
        "tasks.summary",
    }
)


@dataclass
class Report:
    lines: int = 0
    local_imports: int = 0
    cycles: list[list[str]] = field(default_factory=list)
    upward: list[tuple[str, str]] = field(default_factory=list)  # orchestrator -> tasks
    settings_calls: list[str] = field(default_factory=list)  # "module:line" below the roots
    big_modules: list[tuple[str, int]] = field(default_factory=list)
    big_functions: list[tuple[str, int]] = field(default_factory=list)
    local_by_module: dict[str, int] = field(default_factory=dict)

    @property
    def local_per_kloc(self) -> float:
        return self.local_imports * 1000 / max(self.lines, 1)

    def problems(self) -> list[str]:
        out = [f"import cycle: {' <-> '.join(c)}" for c in self.cycles]
        out += [f"{a} imports {b} (orchestrator never imports tasks)" for a, b in self.upward]
        out += [
            f"{c} calls get_settings() (only the composition roots read settings; pass "
            "values in, or add a new root to SETTINGS_READERS)"
            for c in self.settings_calls
        ]
        if self.local_per_kloc > MAX_LOCAL_IMPORTS_PER_KLOC:
            out.append(
                f"{self.local_imports} imports inside functions: {self.local_per_kloc:.2f} per "
                f"1,000 lines (at most {MAX_LOCAL_IMPORTS_PER_KLOC}; lazy imports go through "
                "orchestrator.lazy)"
            )
        out += [f"{m}: {n} lines (at most {MAX_MODULE_LINES})" for m, n in self.big_modules]
        out += [
            f"{f}: {n} lines (at most {MAX_FUNCTION_LINES} without a '{REASON}' docstring line)"
            for f, n in self.big_functions
        ]
        return out


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _targets(current: str, node: ast.Import | ast.ImportFrom, is_pkg: bool, known: dict) -> set:
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = current.split(".")[: None if is_pkg else -1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([base] if base else [])])
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        # Importing a.b.c runs the __init__ of a and a.b first: edges too,
        # except to the packages `current` itself is in (already running).
        while name:
            inside = current == name or current.startswith(name + ".")
            if not inside and name in known:
                out.add(name)
            name = name.rpartition(".")[0]
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                elif nxt in on:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


def _calls_get_settings(node: ast.AST) -> TypeGuard[ast.Call]:
    """`get_settings()` or `x.get_settings()` (not `get_settings.cache_clear()`)."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Name) and f.id == "get_settings") or (
        isinstance(f, ast.Attribute) and f.attr == "get_settings"
    )


def measure(root: Path = ROOT) -> Report:
    known = modules(root)
    report = Report()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        report.lines += lines
        if lines > MAX_MODULE_LINES:
            report.big_modules.append((name, lines))
        tree = ast.parse(source)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name] |= _targets(name, node, is_pkg, known)
            if _calls_get_settings(node) and name not in SETTINGS_READERS:
                report.settings_calls.append(f"{name}:{node.lineno}")
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            local = sum(isinstance(s, (ast.Import, ast.ImportFrom)) for s in ast.walk(node))
            # Nested functions are walked again from their own node: count each once.
            local -= sum(
                isinstance(s, (ast.Import, ast.ImportFrom))
                for inner in ast.walk(node)
                if inner is not node and isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef))
                for s in ast.walk(inner)
            )
            if local:
                report.local_imports += local
                report.local_by_module[name] = report.local_by_module.get(name, 0) + local
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if length > MAX_FUNCTION_LINES and REASON not in doc:
                report.big_functions.append((f"{name}.{node.name}", length))
    report.cycles = _cycles(edges)
    report.upward = sorted(
        (a, b)
        for a in edges
        for b in edges[a]
        if a.startswith("orchestrator") and b.startswith("tasks")
    )
    return report


def main() -> int:
    r = measure()
    print(f"{r.lines} lines in {', '.join(PACKAGES)}")
    print(f"imports inside functions: {r.local_imports} ({r.local_per_kloc:.2f} per 1,000 lines)")
    top = sorted(r.local_by_module.items(), key=lambda kv: -kv[1])[:10]
    print("  most: " + ", ".join(f"{m} {n}" for m, n in top))
    problems = r.problems()
    print(
        f"cycles: {len(r.cycles)}; orchestrator -> tasks: {len(r.upward)}; "
        f"get_settings() below the roots: {len(r.settings_calls)}; "
        f"modules over {MAX_MODULE_LINES}: {len(r.big_modules)}; "
        f"functions over {MAX_FUNCTION_LINES}: {len(r.big_functions)}"
    )
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
