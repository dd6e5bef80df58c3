"""The package's layers, as an import-graph check: each part imports only the parts below it
(and nothing imports in a circle), so a newcomer can read and change one layer at a time."""

import ast
import collections
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
# Bottom to top. A part may import the parts of the layers below its own, and in its own layer
# only what SIDEWAYS lists.
LAYERS = [
    ["atomic", "extras", "runtime"],  # stdlib and torch only: files, optional packages, device policy
    ["distributed"],
    ["model", "data"],  # the ground floor: the model imports no other part but the atomic writes it saves with
    ["weights"],
    ["evaluate"],
    ["train", "probe", "infer"],
    ["explain", "serve", "bench"],
    ["cli", "__init__"],  # the command, and the package's public names
    ["__main__"],
]
SIDEWAYS = {("serve", "explain")}  # the server's /explain draws the explain package's maps


def imports() -> dict[str, set[str]]:
    """vitkit module -> the vitkit modules it imports, anywhere in its body (lazy imports too)."""
    files = {".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (SRC / "vitkit").rglob("*.py")}
    graph = collections.defaultdict(set)
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not node.level, f"{path}: a relative import; vitkit names its modules in full"
                base = node.module or ""
                if base.startswith("vitkit"):
                    graph[name] |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name.startswith("vitkit")}
    return graph


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def layer_of(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def test_every_part_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in imports().items():
        for target in targets:
            a, b = part(module), part(target)
            if a == b or (a, b) in SIDEWAYS:
                continue
            if layer_of(b) >= layer_of(a):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_imports_in_a_circle():
    graph, cycles = imports(), []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in done:
                visit(nxt, [*path, nxt], on_path | {nxt}, done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start}, done)
    assert not cycles, "\n".join(cycles)


def test_every_part_has_a_layer():
    parts = {part(m) for m in imports()} | {p.stem if p.is_file() else p.name
                                            for p in (SRC / "vitkit").iterdir() if p.suffix == ".py" or p.is_dir()}
    parts.discard("__pycache__")
    assert not [p for p in parts if not any(p in layer for layer in LAYERS)]


def test_the_model_imports_nothing_of_vitkit_but_its_file_writes():
    """The ground floor: model/ builds, saves and loads models with no other part of vitkit."""
    others = {t for m, targets in imports().items() if part(m) == "model" for t in targets if part(t) != "model"}
    assert others <= {"vitkit.atomic"}, others


def test_only_the_command_line_imports_the_trainer():
    """Evaluating, predicting, serving and benchmarking a model never load the training code."""
    users = {part(m) for m, targets in imports().items() for t in targets if part(t) == "train" and part(m) != "train"}
    assert users <= {"cli"}, users


def test_no_function_is_longer_than_a_screen():
    """Forty lines at most (docstring included), and the training run's class at most 250: read once,
    top to bottom."""
    long = []
    for path in (SRC / "vitkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            size = node.end_lineno - node.lineno + 1
            if not isinstance(node, ast.ClassDef) and size > 40:
                long.append(f"{path.relative_to(SRC)}: {node.name}, {size} lines")
            if isinstance(node, ast.ClassDef) and node.name == "Run" and size > 250:
                long.append(f"{path.relative_to(SRC)}: class Run, {size} lines")
    assert not long, "\n".join(long)
