"""The sub-module names of tracer's flat layout (`tracer.chain`, `tracer.verify`, …), still importable:
each old name is the same module object as its home in the packages by role."""
import importlib
import importlib.abc
import importlib.util
import sys

HOMES = {
    "activations": "maths.activations", "losses": "maths.losses", "optim": "maths.optim",
    "procedures": "maths.procedures", "init": "maths.initialisers", "notation": "maths.notation",
    "symbolic": "maths.symbolic", "ieee": "maths.ieee",
    "scenario": "training.scenario", "engine": "training.engine", "trace": "training.trace",
    "records": "training.records", "datasets": "training.datasets", "inputs": "training.inputs",
    "templates": "training.templates",
    "chain": "explain.chain", "check": "explain.check", "diagnose": "explain.diagnose",
    "gradcheck": "explain.gradcheck",
    "libreoffice": "recalc.libreoffice", "gnumeric": "recalc.gnumeric", "xlsxread": "recalc.xlsxread",
    "verify": "recalc.verify", "sweep": "studies.sweep", "pytorch": "bridges.pytorch",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, home):
        self.home = home

    def create_module(self, spec):
        return importlib.import_module(self.home)

    def exec_module(self, module):
        pass


class _OldNames(importlib.abc.MetaPathFinder):
    """Finds `tracer.<old name>` and answers with the module at its home."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != "tracer" or name not in HOMES:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(f"tracer.{HOMES[name]}"))


def install():
    if not any(isinstance(finder, _OldNames) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldNames())
