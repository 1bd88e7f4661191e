"""tracer: train a small network one scalar at a time and export every number as live formulas."""
from .scenario import load, loads
from .engine import run

__all__ = ["load", "loads", "run"]
__version__ = "0.1.0"
