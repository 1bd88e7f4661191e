"""sympy, imported when a symbolic expression is first built.

The definitions keep their sympy forms beside the numpy and Excel ones, but most commands (run,
verify, gradcheck) never build one, and importing sympy took about a third of every command's
start-up (0.27 s of 0.8 s). `from .symbolic import sympy as sp` reads as `import sympy as sp`.
"""
import importlib


class _Sympy:
    """Every attribute is sympy's, looked up (and sympy imported) on first use."""

    def __getattr__(self, name):
        return getattr(importlib.import_module("sympy"), name)


sympy = _Sympy()
