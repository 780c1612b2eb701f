"""The house's layering, read from the code: which module imports which (function-local imports included, so a lazy
import cannot hide a cycle or an upward edge). README "Architecture" draws the same layers."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import modules of its own unit or of a lower layer, never a higher one or a sibling
# unit of its own layer. The driver reaches the actor side only through driver/protocol.py's interfaces (which the
# actor side implements, so they sit below both), and only pipeline/run.py (the CLI) puts the two together.
LAYERS = [
    ["codec"],
    ["pipeline.failures", "pipeline.urls", "pipeline.kinds"],
    ["pipeline.storage", "pipeline.schema", "pipeline.reads", "pipeline.telemetry.events", "pipeline.tokenizer"],
    ["pipeline.audio"],
    ["pipeline.runstate"],
    ["pipeline.sources"],
    ["pipeline.config", "pipeline.writer", "pipeline.telemetry.logs", "pipeline.telemetry.metrics"],
    ["pipeline.driver.protocol"],  # the contract between the two sides, below both
    ["pipeline.reading", "pipeline.actor"],
    ["pipeline.driver"],
    ["pipeline.run", "pipeline.status"],
]


def modules() -> dict[str, Path]:
    found = {}
    for top in ("codec", "pipeline"):
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules (of codec and pipeline, plus 'ray') it imports anywhere in its body."""
    mods = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target.split(".")[0] == "ray":
                    graph[name].add("ray")
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def unit_of(module: str) -> tuple[int, str]:
    best = None
    for rank, layer in enumerate(LAYERS):
        for unit in layer:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (rank, unit)
    assert best is not None, f"{module} is in no layer of LAYERS: place it"
    return best


def reach(graph, start: str) -> set[str]:
    seen, todo = set(), [m for m in graph if m == start or m.startswith(start + ".")]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def test_no_module_imports_one_of_a_higher_layer_or_a_sibling_unit():
    graph = import_graph()
    wrong = []
    for importer, imported in graph.items():
        for target in imported - {"ray"}:
            (rank, unit), (target_rank, target_unit) = unit_of(importer), unit_of(target)
            if unit != target_unit and rank <= target_rank:
                wrong.append(f"{importer} -> {target}")
    assert not wrong, wrong


def test_no_import_cycle_even_through_function_local_imports():
    graph = import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target == "ray":
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in modules():
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_codec_reading_sources_and_driver_keep_to_their_side():
    graph = import_graph()
    assert not {m for m in reach(graph, "codec") if m.startswith("pipeline")}, "codec/ imports pipeline/"
    reading = reach(graph, "pipeline.reading")
    assert "ray" not in reading
    assert not {m for m in reading if m.startswith(("pipeline.actor", "pipeline.driver")) or m == "pipeline.run"}
    assert "ray" not in reach(graph, "pipeline.sources")
    assert not {m for m in reach(graph, "pipeline.driver") if m.startswith("pipeline.actor")}


def test_reading_code_imports_no_ray_when_run():
    """The static graph's claim checked where it matters: a training job importing the readers loads no Ray."""
    names = sorted(m for m in modules() if m.startswith("pipeline.reading"))
    out = subprocess.run([sys.executable, "-c", f"import sys, {', '.join(names)}; print(sorted(m for m in sys.modules "
                          "if m.split('.')[0] == 'ray' or m.startswith(('pipeline.actor', 'pipeline.driver'))))"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]", out
