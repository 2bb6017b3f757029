"""The shape of the house, checked: imports run one way, from the CLI down to the leaves.

Reads every import of ``src/deepclust`` (at the top of a module and inside functions) and
fails on an import cycle between modules, on an import that runs upward (a module using
one of a higher layer), and on a private name (``_name``) taken from another module. The
layers, top to bottom, are those of the README's "Development" section.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "deepclust"

#: Module prefix -> layer; the longest matching prefix wins. Higher layers may import lower ones.
LAYERS = {
    "deepclust": 9, "deepclust.cli": 9, "deepclust.__main__": 9,
    "deepclust.scale": 9, "deepclust.distributed": 9,  # names the README showed before: re-exports only
    "deepclust.jobs": 8, "deepclust.experiments": 8,
    "deepclust.methods": 7,
    "deepclust.cluster": 6, "deepclust.runs": 6, "deepclust.feedback": 6, "deepclust.selection": 6, "deepclust.naming": 6,
    "deepclust.features": 5,
    "deepclust.data": 4,
    "deepclust.parallel": 3,
    "deepclust.config": 2,
    "deepclust.errors": 1, "deepclust.io": 1, "deepclust.metrics": 1, "deepclust.losses": 1,
    "deepclust.validation": 1, "deepclust.devices": 1, "deepclust.checkpoint": 1, "deepclust.version": 1, "deepclust.lazy": 1,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _imports(modules: dict[str, Path]):
    """(importer, imported module, imported name or None, inside a function, line) for every
    import of a deepclust module."""

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [(f"{base}.{a.name}" if resolve(f"{base}.{a.name}") == f"{base}.{a.name}" else base, a.name)
                           for a in node.names]
            else:
                continue
            for target, name in targets:
                if not target.startswith("deepclust"):
                    continue
                imported = resolve(target)
                if imported and imported != module:
                    yield module, imported, name, id(node) in nested, node.lineno


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert all(_layer(m) for m in _modules())


def test_no_module_imports_another_that_imports_it_back():
    edges: dict[str, set[str]] = {}
    for module, imported, _, _, _ in _imports(_modules()):
        # a package's own __init__ re-exports its modules: only the other direction would be a cycle
        if not module.startswith(imported + "."):
            edges.setdefault(module, set()).add(imported)
    assert _cycles(edges) == []


def test_imports_run_down_the_layers_only():
    upward = [f"{m}:{line} imports {i} (layer {_layer(m)} -> {_layer(i)})"
              for m, i, _, _, line in _imports(_modules()) if _layer(i) > _layer(m)]
    assert upward == []


def _private_module_outside(module: str, imported: str) -> bool:
    """``imported`` is a private module (``cluster._lloyd``) and ``module`` is not in its package."""
    parts = imported.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            package = ".".join(parts[:i])
            return module != package and not module.startswith(package + ".")
    return False


def test_no_private_name_is_used_across_modules():
    private = [f"{m}:{line} takes {name} from {i}" for m, i, name, _, line in _imports(_modules())
               if (name and name.startswith("_") and not name.startswith("__")) or _private_module_outside(m, i)]
    assert private == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    # the rules above could pass by seeing nothing: show that they catch what they must
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("deepclust.jobs.cluster") > _layer("deepclust.methods.mmdc") > _layer("deepclust.cluster.kmeans")
    assert _layer("deepclust.cluster.kmeans") > _layer("deepclust.features.backbones") > _layer("deepclust.io")
    found = list(_imports(_modules()))
    assert ("deepclust.jobs.cluster", "deepclust.features.extract", "embed_records") in [f[:3] for f in found]
    assert any(inside for *_, inside, _ in found)  # in-function imports are read too


def test_a_task_over_a_stores_blocks_loads_neither_torch_nor_scikit_learn():
    import subprocess
    import sys

    # the Dask workers import the module of the task functions (at_scale), and nothing else of deepclust
    code = ("import sys, deepclust.cluster.at_scale\n"
            "print(sorted(m for m in ('torch', 'timm', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_an_import_inside_a_function_says_why_it_is_deferred():
    # cli.py defers every command's imports, as its docstring says: --help must not load torch
    unexplained = []
    for module, path in _modules().items():
        if module == "deepclust.cli":
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for f in ast.walk(tree):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(f):
                    if node is not f and isinstance(node, (ast.Import, ast.ImportFrom)):
                        name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                        if (name or "").startswith("deepclust") and not any(
                                "#" in line for line in lines[node.lineno - 1: node.end_lineno]):
                            unexplained.append(f"{module}:{node.lineno}")
    assert unexplained == []
