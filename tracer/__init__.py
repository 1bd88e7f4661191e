"""tracer: train a small network one scalar at a time and export every number as live formulas.

The Python API, at the top level (sub-modules keep their own names and functions):

    scenario = tracer.load("xor")                     # a template name or a TOML file
    trace = tracer.run(scenario)                      # every scalar of the training run (sums in its workbook's order)
    trace.to_frame()                                  # the tidy CSV as a pandas DataFrame
    tracer.write_workbook(trace, "xor.xlsx")          # live formulas
    tracer.verify_workbook(trace).ok                  # recomputed by LibreOffice, cell by cell
    tracer.diagnose_run(trace).findings               # vanishing/exploding gradients, in sentences
    tracer.explain_gradient(trace, "W1[0,0]")         # the chain rule behind one gradient
    tracer.check_gradients(trace).worst               # backprop against finite differences
    tracer.from_torch(model, x, y, optimizer, loss=nn.CrossEntropyLoss())  # a PyTorch nn.Sequential as a Scenario
"""
import functools
import importlib
import os

from tracer import aliases
from tracer.training.scenario import Scenario, from_dict, load, loads
from tracer.training import engine
from tracer.training.trace import Trace

aliases.install()

# name -> (module, function): imported on first use, so `import tracer` stays light (sympy,
# openpyxl and the workbook writer load only when asked for).
_LAZY = {
    "write_workbook": ("tracer.workbook.writer", "write"),
    "verify_workbook": ("tracer.recalc.verify", "verify"),
    "verify_workbooks": ("tracer.recalc.verify", "verify_many"),
    "diagnose_run": ("tracer.explain.diagnose", "diagnose"),
    "explain_gradient": ("tracer.explain.chain", "explain"),
    "render_explanation": ("tracer.explain.chain", "render"),
    "check_gradients": ("tracer.explain.gradcheck", "check"),
    "template_names": ("tracer.training.templates", "names"),
    "from_torch": ("tracer.bridges.pytorch", "from_torch"),   # torch is imported only when it is called
    "watch": ("tracer.bridges.pytorch", "watch"),             # the failing window of a PyTorch training loop
}

__all__ = ["Scenario", "Trace", "from_dict", "load", "loads", "run", *_LAZY]
__version__ = "0.1.0"


# the lazy functions whose first argument is a Trace: they take a Scenario, a name or a path too
_TAKE_TRACE = ("write_workbook", "verify_workbook", "diagnose_run", "explain_gradient", "check_gradients")


def _scenario_of(reference, wanted="a template name, a scenario file path or a tracer.Scenario"):
    """A Scenario from a built-in template's name or a TOML file's path (str or os.PathLike), or the
    Scenario given; one TypeError for anything else."""
    if isinstance(reference, Scenario):
        return reference
    if isinstance(reference, (str, os.PathLike)):
        return load(reference)
    raise TypeError(f"expected {wanted}, not {type(reference).__name__}")


def _taking_names(function):
    """`function(trace, ...)` that also takes a Scenario, a template name or a path, and runs it first."""
    @functools.wraps(function)
    def wrapper(trace, *args, **kwargs):
        if not isinstance(trace, Trace):
            trace = run(_scenario_of(trace, "a tracer.Trace, a tracer.Scenario, a template name or a scenario file path"))
        return function(trace, *args, **kwargs)
    return wrapper


def run(scenario, sums=None, layout=None):
    """Train `scenario` (a Scenario, a template name or a TOML file's path) and return its Trace (engine.run). `sums`: the engine's sum order,
    "in_order" (every sum left to right, a spreadsheet formula's bits) or "matmul" (numpy matrix
    products); None: the order of the layout its workbook will have, as `tracer run` chooses it
    (writer.sum_order: in_order for the column layout, matmul for the matrix layout of a net too
    wide for it; `layout` "column" or "matrix" asks for one)."""
    from tracer.errors import InputError
    from tracer.workbook import writer
    if layout not in (None, *writer.SUM_ORDER_OF_LAYOUT):
        raise InputError(f"layout must be one of {', '.join(writer.SUM_ORDER_OF_LAYOUT)}, not {layout!r}")
    if sums is not None and layout is not None:
        raise InputError("give the sum order (sums=) or the layout that chooses it (layout=), not both")
    scenario = _scenario_of(scenario)
    if sums is None:
        sums = writer.sum_order(scenario, layout)
    return engine.run(scenario, sums=sums)


def __getattr__(name):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        value = _taking_names(value) if name in _TAKE_TRACE else value
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tracer' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
