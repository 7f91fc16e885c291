"""The package's import graph, read from the source with ``ast`` (every import, module level or inside a
function): no import circle between modules or between the package's parts, and no arrow running back up
the layers types / tokens -> adapters -> methods -> metrics -> engine, reports, ui, cli."""
import ast
from pathlib import Path

import attnviz

ROOT = Path(attnviz.__file__).parent
# lower number = lower layer; a module may import only from its own layer's part or a lower number
RANK = {"errors": 0, "types": 0, "threadlocal": 0, "tokens": 1, "adapters": 2, "methods": 3, "metrics": 4,
        "engine": 5, "ui": 6, "cli": 6}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The attnviz modules ``name`` imports (a ``from pkg import sub`` of a submodule names the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "attnviz")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "attnviz":
                continue
            subs = {f"{mod}.{a.name}" for a in node.names} & known
            out.update(subs if subs else {mod})
            if subs and len(subs) < len(node.names):
                out.add(mod)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def part(module: str) -> str:
    """attnviz.methods.rollout -> methods; attnviz.cli -> cli; attnviz (the package) -> attnviz."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else bits[0]


def test_the_graph_reader_sees_a_circle_built_by_hand(tmp_path):
    # the reader itself: a hand-made two-module circle through a relative and an absolute import is found
    g = {"attnviz.a": {"attnviz.b"}, "attnviz.b": {"attnviz.a"}, "attnviz.c": {"attnviz.a"}}
    assert cycles(g) == [["attnviz.a", "attnviz.b"]]
    (tmp_path / "x.py").write_text("from .methods.common import fuse_heads\nimport attnviz.ui.widgets\n"
                                   "def f():\n    from ..adapters import ADAPTERS\n")
    known = {"attnviz.methods.common", "attnviz.ui.widgets", "attnviz.adapters"}
    assert imports_of("attnviz.x", tmp_path / "x.py", known) == known - {"attnviz.adapters"}
    assert imports_of("attnviz.sub.x", tmp_path / "x.py", known | {"attnviz.sub"}) >= {"attnviz.adapters"}


def test_no_import_circle_between_modules():
    assert cycles(graph()) == []


def test_no_circle_between_the_package_parts():
    g = {}
    for mod, deps in graph().items():
        g.setdefault(part(mod), set()).update(part(d) for d in deps if part(d) != part(mod))
    assert cycles(g) == []


def test_imports_only_go_down_the_layers():
    upward = sorted(f"{mod} -> {dep}" for mod, deps in graph().items() for dep in deps
                    if part(mod) in RANK and part(dep) in RANK and RANK[part(dep)] > RANK[part(mod)])
    assert upward == []


def test_streamlit_only_under_ui():
    offenders = []
    for name, path in modules().items():
        if part(name) == "ui":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n.split(".")[0] == "streamlit" for n in names):
                    offenders.append(name)
    assert offenders == []
