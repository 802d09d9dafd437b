"""The tree's layering, walked from the source: no import cycle, nothing below the stages
imports a stage, no stage imports the orchestration modules, and no function is longer than
60 lines. Every import counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "synthpref"
TOP = {"synthpref.cli", "synthpref.runner", "synthpref.validate", "synthpref.estimate"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t and t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in mods and t != name and t.startswith("synthpref"):
                found.add(t)
                break
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _layer(m: str) -> int:
    if m in TOP:
        return 2
    return 1 if m.startswith("synthpref.stages") else 0


def test_nothing_imports_upward():
    up = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert not up, "imports against the layering (backends/shared < stages < cli/runner/validate/estimate):\n" + "\n".join(up)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_walk_sees_lazy_imports():
    """The checks above are only as good as the walk: it must find imports inside functions."""
    g = _graph()
    assert "synthpref.stages.sft" in g["synthpref.stages.train"]       # imported inside run()
    assert "synthpref.lineage" in g["synthpref.stages.generate"]       # imported inside functions


def test_every_function_is_at_most_60_lines():
    long = []
    for p in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_every_stage_follows_the_protocol():
    from synthpref.stages import ORDER, all_stages

    assert ORDER[0] == "prompts" and ORDER[-1] == "report"
    for name, st in all_stages():
        for attr in ("CONFIG", "READS", "WRITES", "VERSION", "check", "estimate", "run"):
            assert hasattr(st, attr), f"stage {name} lacks {attr}"
        assert set(st.READS) <= set(ORDER[: ORDER.index(name)]), f"stage {name} reads a later stage"
