"""The package's import graph (docs/architecture.md): no circles, and configs import only what they need."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "smartvlm_jax"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports, at module level or inside functions (lazy imports count).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; the implicit import
    of a parent package by its submodules is not an edge (Python runs ``__init__`` first, not a circle).
    """
    files = {module_name(p): p for p in (REPO / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary circle found by depth-first search (each reported once)."""
    found, seen = [], set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            circle = stack[stack.index(node) :]
            if frozenset(circle) not in seen:
                seen.add(frozenset(circle))
                found.append([*circle, node])
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node])

    for start in sorted(graph):
        visit(start, [])
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "smartvlm_jax.inference" in graph["smartvlm_jax.predict"]
    assert "smartvlm_jax.variants" in graph["smartvlm_jax.features.columns"]
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_variant_table_is_at_the_bottom():
    graph = import_graph()
    assert not graph["smartvlm_jax.variants"] and not graph["smartvlm_jax.workdir"]
    towers = [m for m in graph if m.startswith("smartvlm_jax.towers")]
    above = ("smartvlm_jax.reasoner", "smartvlm_jax.train", "smartvlm_jax.inference", "smartvlm_jax.convert")
    assert not [(m, t) for m in towers for t in graph[m] if t.startswith(above)]


# docs/architecture.md's layers: a module may import its own layer or lower ones, never a higher one.
LAYERS = {
    1: ("puzzles", "variants", "workdir", "assets", "images", "cli", "activations", "hashing", "fileio"),
    2: ("data.smart101", "data.synthetic", "towers", "metrics"),
    3: (
        "reasoner",
        "features",
        "reports",
        "data.pipeline",
        "data.build",
        "data.tfds_smart101",
        "summaries",
        "console",
        "parallel",
        "optim",
        "convert.baseline_table",
        "sources",
    ),
    4: ("train", "inference", "report"),
    5: ("main", "evaluate", "predict", "convert", "sweep", "aot"),
}


def layer_of(module: str) -> int:
    name = module.removeprefix(f"{PACKAGE}.")
    matches = [
        (len(p), layer)
        for layer, prefixes in LAYERS.items()
        for p in prefixes
        if name == p or name.startswith(p + ".")
    ]
    assert matches or name in (PACKAGE, "data"), f"{module} is in no layer of docs/architecture.md"
    return max(matches)[1] if matches else 0


def test_imports_go_down_the_layers():
    graph = import_graph()
    upward = [(m, t) for m in graph for t in graph[m] if layer_of(t) > layer_of(m)]
    assert not upward, upward
    peers = ("smartvlm_jax.train", "smartvlm_jax.inference")
    assert peers[1] not in graph[peers[0]] and peers[0] not in graph[peers[1]]


def test_configs_import_only_what_they_need():
    code = (
        "import sys; import configs.smarter, configs.baseline, configs.smoke, configs.paper\n"
        "heavy = ('matplotlib', 'orbax', 'flax', 'jax', 'transformers', 'tensorflow', 'grain')\n"
        "towers = [m for m in sys.modules if m.startswith('smartvlm_jax.towers')]\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in heavy] + towers\n"
        "assert not loaded, sorted(loaded)\n"
    )
    run = python(code)
    assert run.returncode == 0, run.stderr[-2000:]


def python(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter in the checkout (the modules a new process imports)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)


def test_the_event_writer_does_not_import_torch():
    """tensorboardX's import runs ``import torch`` (~1.3 s of CPU in every training process where torch is
    installed); the run's writer imports it without, and torch stays importable afterwards."""
    code = (
        "import sys, tempfile; from smartvlm_jax import summaries\n"
        "writer = summaries.RunWriter(tempfile.mkdtemp()); writer.write_scalars(1, {'loss': 1.0})\n"
        "writer.close()\n"
        "assert 'tensorboardX' in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
        "import torch\n"
        "print('torch', torch.__version__)\n"
    )
    run = python(code)
    assert run.returncode == 0 and run.stdout.startswith("torch "), run.stderr[-2000:]
