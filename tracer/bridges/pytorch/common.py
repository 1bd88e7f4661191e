"""What every part of the PyTorch bridge shares: its error, torch imported on demand, tensors as
float64 numpy arrays, and the notes a conversion leaves on its scenario."""
from dataclasses import dataclass, field
import math

import numpy as np

from tracer.errors import TracerError

SOURCE = "from_torch"


class ModelError(TracerError):
    """A PyTorch model, loss or optimiser that tracer cannot trace; one line naming the part and why."""

    exit_code = 2

    def __init__(self, where, problem):
        self.where, self.problem = where, problem
        super().__init__(f"{SOURCE}: {where}: {problem}")


@dataclass
class Conversion:
    """What converting a PyTorch model changed or left out, set on the Scenario as `scenario.conversion`.

    dtype: the model's floating dtype ("float64", or "float32", ... which the trace runs in float64);
    expected_difference: the relative difference to expect between the trace and the model's own
    numbers (float64's round-off, 1e-12, or the model dtype's machine epsilon: a float32 model agrees
    with its float64 trace only to about 1e-7 per step); notes: one sentence per change (a float32
    model run in float64, a Dropout left out as the identity of eval mode, ...)."""

    dtype: str = "float64"
    expected_difference: float = 1e-12
    notes: list = field(default_factory=list)


def torch_module():
    """torch, imported when a conversion asks for it (`import tracer` never imports it)."""
    try:
        import torch
    except ImportError:
        raise ModelError("torch", "PyTorch is not installed: pip install 'tracer[torch]'") from None
    return torch


def as_array(values, what, torch):
    """A tensor or array-like as numpy (floating tensors as float64); numbers only."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = values.double().numpy() if values.is_floating_point() else values.numpy()
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ModelError(what, f"must be numbers, not {array.dtype}")
    return array


def values(tensor):
    """A parameter's values as float64 numpy."""
    return tensor.detach().cpu().double().numpy()


def is_tensor_number(value):
    return hasattr(value, "item") and getattr(value, "ndim", 1) == 0


def number(value):
    """A hyper-parameter (a float or a 0-d tensor) as a finite float."""
    result = float(value.item() if is_tensor_number(value) else value)
    if not math.isfinite(result):
        raise ModelError("optimizer", f"hyper-parameter {result} is not finite")
    return result
