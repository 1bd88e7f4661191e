"""Imports point down: every module under tracer/ is parsed with ast and may import only modules of
its own level or of a level below it. A module's level is its package's (tracer.layers.dense is
layers'), or its own where LEVELS names it:

  0 definitions  maths/, errors, output, aliases, and the spreadsheet engines' runners and readers
                 (recalc.libreoffice, recalc.gnumeric, recalc.xlsxread: they import nothing above)
  1 layers       layers/
  2 the run      training/
  3 analysis     explain/
  4 workbook     workbook/
  5 recalc       recalc/ (verify)
  6 studies      studies/, bridges/
  7 commands     cli, and the package itself (tracer/__init__.py, __main__)

Imports inside functions count as well (a lazy import is still a dependency)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tracer"

LEVELS = {
    **dict.fromkeys(["maths", "errors", "output", "aliases",
                     "recalc.libreoffice", "recalc.gnumeric", "recalc.xlsxread"], 0),
    "layers": 1,
    "training": 2,
    "notebook": 1,
    **dict.fromkeys(["plots", "diagram"], 2),
    "explain": 3,
    "workbook": 4,
    "recalc": 5,
    **dict.fromkeys(["studies", "bridges"], 6),
    **dict.fromkeys(["cli", "", "__main__"], 7),
}
NAMES = ["definitions", "layers", "the run", "analysis", "workbook", "recalc", "studies", "commands"]


def module_name(path):
    """tracer/layers/dense.py -> "tracer.layers.dense"; tracer/layers/__init__.py -> "tracer.layers"."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def level(module):
    """The level of a tracer module: that of its top-level name under tracer/ (tracer.layers.dense is
    layers'); KeyError for a module no level was given."""
    parts = module.split(".")[1:]
    if ".".join(parts[:2]) in LEVELS:
        return LEVELS[".".join(parts[:2])]
    return LEVELS[parts[0] if parts else ""]


def imported(module, source, is_package=False):
    """The tracer modules (dotted names) that `source`, the text of `module`, imports anywhere."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "tracer")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "tracer":
                target = node.module
            else:
                continue
            # `from . import chain` imports the module tracer.explain.chain; `from .layers import get` tracer.layers
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(name if _is_module(name) else target for name in names)
    return found


def _is_module(dotted):
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def violations(modules):
    """(module, imported, why) for every import that points up, given {module: (source, is_package)}."""
    out = []
    for module, (source, is_package) in sorted(modules.items()):
        here = level(module)
        for target in sorted(imported(module, source, is_package)):
            there = level(target)
            if there > here:
                out.append((module, target, f"{module} ({NAMES[here]}, level {here}) imports {target} "
                                            f"({NAMES[there]}, level {there})"))
    return out


def sources():
    return {module_name(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_level():
    missing = sorted(module for module in sources() if (module.split(".")[1] if "." in module else "") not in LEVELS)
    assert not missing, f"give these modules a level in tests/test_imports.py LEVELS: {missing}"


def test_imports_point_down():
    found = violations(sources())
    assert not found, "\n".join(why for _, _, why in found)


@pytest.mark.parametrize("module,line", [
    ("tracer.explain.chain", "from ..workbook import notation"),
    ("tracer.explain.chain", "import tracer.workbook.layout"),
    ("tracer.training.engine", "from ..explain import diagnose"),
    ("tracer.layers.dense", "from ..training.trace import Trace"),
    ("tracer.workbook.writer", "def f():\n    from .. import cli"),
])
def test_an_upward_import_is_caught(module, line):
    modules = sources()
    source, is_package = modules[module]
    modules[module] = (source + "\n" + line + "\n", is_package)
    found = violations(modules)
    assert [(m, why) for m, _, why in found if m == module], found


def test_the_levels_read_the_real_imports():
    """The parser sees the imports the modules really have (so that a pass is not an empty check)."""
    modules = sources()
    assert "tracer.layers" in imported("tracer.training.engine", *modules["tracer.training.engine"])
    assert "tracer.explain.chain" in imported("tracer.workbook.chainrule", *modules["tracer.workbook.chainrule"])
    assert "tracer.layers.protocol" in imported("tracer.layers.dense", *modules["tracer.layers.dense"])
    assert any(level(name) == 3 for name in imported("tracer.cli", *modules["tracer.cli"]))


def test_scenario_does_not_import_the_trace():
    """The size guard reads the record declarations (records.py), not the Trace (DESIGN-11)."""
    modules = sources()
    assert "tracer.training.trace" not in imported("tracer.training.scenario", *modules["tracer.training.scenario"])


def test_running_a_scenario_does_not_import_sympy(tmp_path):
    """sympy (a third of a command's start-up) is imported only where a symbolic form is built
    (tracer/maths/symbolic.py): `tracer run` writes a workbook without it, `tracer chain` uses it."""
    import subprocess
    import sys
    program = ("import sys; from tracer import cli; sys.argv = ['tracer'] + sys.argv[1:]\n"
               "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
               "print('sympy' in sys.modules)")
    root = str(PACKAGE.parent)
    run = subprocess.run([sys.executable, "-c", program, "run", "xor", "--steps", "2", "-o", str(tmp_path / "x.xlsx")],
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": root, "PATH": ""}, check=True)
    assert run.stdout.splitlines()[-1] == "False", run.stdout
    chain = subprocess.run([sys.executable, "-c", program, "chain", "xor", "--param", "W1[0,0]"],
                           capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": root, "PATH": ""}, check=True)
    assert chain.stdout.splitlines()[-1] == "True" and "∂E/∂W1[0,0]" in chain.stdout, chain.stdout
