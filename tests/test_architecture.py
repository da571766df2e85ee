"""The package's shape, checked by parsing it: layers, no cycles, no private names across modules, imports at the top.

The layers, lowest first (README, "Architecture"): a module imports fpjax modules of its own layer or lower ones.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fpjax"
LAYERS = (
    ("fpjax.data", "fpjax.provenance", "fpjax.files", "fpjax.memory", "fpjax.devices"),
    ("fpjax.solver",),
    ("fpjax.batch",),
    ("fpjax.eval",),
    ("fpjax.diffusion",),
    ("fpjax.learn",),
    ("fpjax.bench",),
    ("fpjax.experiments",),
    ("fpjax.pipeline",),
    ("fpjax.cli",),
)
# Imported inside functions on purpose: optional (a test extra) or only needed by one command.
LAZY_ALLOWED = {"sklearn", "sklearn.datasets"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text())


MODULES = {name: (path, tree) for name, path, tree in _modules()}


def _layer(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and to the README's architecture")


def _fpjax_imports(tree, module):
    """``(imported module, imported names, line, at top level)`` for every import of an fpjax module."""
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fpjax":
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                name = target if target in MODULES else node.module
                yield name, alias.name, node.lineno, id(node) in top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fpjax":
                    yield alias.name, None, node.lineno, id(node) in top_level


def _edges():
    for module, (_, tree) in MODULES.items():
        if module == "fpjax":
            continue  # the package's public surface re-exports from every layer
        for target, *_ in _fpjax_imports(tree, module):
            if target != "fpjax" and target != module:
                yield module, target


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "fpjax"))
def test_imports_respect_the_layers(module):
    _, tree = MODULES[module]
    for target, _, line, _ in _fpjax_imports(tree, module):
        if target == "fpjax":
            continue
        assert _layer(target) <= _layer(module), f"{module}:{line} imports {target}, a higher layer"


def test_no_import_cycles():
    graph = {}
    for source, target in _edges():
        graph.setdefault(source, set()).add(target)
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module):
    path, tree = MODULES[module]
    for target, name, line, _ in _fpjax_imports(tree, module):
        assert not (name or "").startswith("_"), f"{path.name}:{line} imports the private {target}.{name}"
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fpjax")
        for alias in node.names
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                raise AssertionError(f"{path.name}:{node.lineno} uses the private {node.value.id}.{node.attr}")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_sit_at_the_top(module):
    path, tree = MODULES[module]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top_level:
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "__future__":
                continue
            assert set(names) <= LAZY_ALLOWED, f"{path.name}:{node.lineno} imports {names} inside a function"


def test_library_functions_are_short():
    """About 60 lines at most (docstrings included), so that each can be read at once."""
    long = []
    for module, (_, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 70:
                    long.append(f"{module}.{node.name} ({length} lines)")
    assert not long, "functions too long to read at once: " + ", ".join(long)


def test_the_public_surface_resolves():
    import fpjax

    for name in fpjax.__all__:
        assert getattr(fpjax, name) is not None, name
    assert fpjax.sde_from_fp_config(fpjax.FPConfig(g=0.3)).g(0.7) == pytest.approx(0.3)
