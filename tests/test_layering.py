"""The package's layering rules, checked on the source: no import cycle; ``kernels`` imports nothing
of cmath_fast; ``ops`` is the only importer of ``kernels`` (besides the device-op counter's launch
hook) and imports no ``reference``; ``bench`` imports neither ``cli`` nor ``training``; the model
holds no backend branch."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "cmath_fast")
KERNELS = os.path.join(ROOT, "kernels")


def _modules():
    """{dotted module name: file} for cmath_fast and cmath_fast.kernels (from kernels/)."""
    out = {}
    for base, prefix in ((PKG, "cmath_fast"), (KERNELS, "cmath_fast.kernels")):
        for dirpath, _, files in os.walk(base):
            if "__pycache__" in dirpath or (base == PKG and os.path.join(PKG, "kernels") in dirpath):
                continue
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].replace(os.sep, ".")
                    name = prefix if rel == "__init__" else f"{prefix}.{rel.removesuffix('.__init__')}"
                    out[name] = os.path.join(dirpath, f)
    return out


MODULES = _modules()


def _imports(name, path, *, top_level_only=False):
    """The cmath_fast modules ``name`` imports (relative imports resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    is_pkg = path.endswith("__init__.py")
    found = set()
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts if is_pkg else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            cands = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        else:
            continue
        for c in cands:
            if c.startswith("cmath_fast"):
                # the module itself or the package that holds the name
                while c and c not in MODULES:
                    c = c.rpartition(".")[0]
                if c and c != name:
                    found.add(c)
    return found


def _under(mod, pkg):
    return mod == pkg or mod.startswith(pkg + ".")


def test_no_import_cycle_at_import_time():
    graph = {m: _imports(m, p, top_level_only=True) for m, p in MODULES.items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in graph.get(m, ()):
            # a package importing its own submodules is not a cycle
            if _under(n, m):
                continue
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, n]))
            if n not in state:
                visit(n, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layering_rules(module):
    deps = _imports(module, MODULES[module])
    if _under(module, "cmath_fast.kernels"):
        assert all(_under(d, "cmath_fast.kernels") for d in deps), f"{module} imports {deps}"
    if _under(module, "cmath_fast.ops"):
        assert not any(_under(d, "cmath_fast.reference") for d in deps), f"{module} imports the reference"
    if _under(module, "cmath_fast.bench"):
        bad = [d for d in deps if _under(d, "cmath_fast.cli") or _under(d, "cmath_fast.training")]
        assert not bad, f"{module} imports {bad}"
    uses_kernels = [d for d in deps if _under(d, "cmath_fast.kernels")]
    if uses_kernels and not _under(module, "cmath_fast.kernels"):
        allowed = _under(module, "cmath_fast.ops") or module == "cmath_fast.bench.count_ops"
        assert allowed, f"{module} imports {uses_kernels}: only cmath_fast.ops may (and the op counter's hook)"


def test_model_has_no_backend_branch():
    src = open(os.path.join(PKG, "model.py"), encoding="utf-8").read()
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp)):
            assert "backend" not in ast.unparse(node.test), f"backend branch in model.py: {ast.unparse(node.test)}"
        if isinstance(node, ast.Assign):
            assert not any(isinstance(t, ast.Attribute) and t.attr == "__class__" for t in node.targets)
