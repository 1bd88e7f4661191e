"""Activation functions: each defined once, with its four faces side by side.

For every activation f:
  forward(u, p)        numpy: a = f(u)
  slope(u, a, p)       numpy: the local slope f'(u), computed the way a spreadsheet would
  excel_value(u, p)    Excel formula body for a, given the cell holding u
  excel_slope(u, a, p) Excel formula body for f'(u), given the cells holding u and a
  symbolic(x, p)       sympy expression of f(x), the independent reference for f'

`p` maps the activation's parameter names (`slope`, `alpha`) to numbers (numpy),
cell references or defined names (Excel), or sympy symbols. The Excel forms are
overflow-safe and take the same branch as the numpy forms, so a spreadsheet and the
engine agree cell for cell. Softmax is the one activation that is not elementwise:
its functions see the whole layer (last axis) and its Excel forms a list of cells.
"""
from dataclasses import dataclass, field
import math
from typing import Callable

import numpy as np
from tracer.maths.symbolic import sympy as sp

_erfc = np.vectorize(math.erfc, otypes=[float])
_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
# Beyond |u| > 40 the Gaussian density term u·φ(u) is below 1e-340: written as 0 on both
# sides, so the spreadsheet never squares a huge u into #NUM!.
_GELU_TAIL = 40.0


@dataclass(frozen=True)
class Activation:
    name: str
    symbol: str                      # used in headers: σ, tanh, ReLU, ...
    forward: Callable
    slope: Callable
    excel_value: Callable
    excel_slope: Callable
    symbolic: Callable | None
    params: dict = field(default_factory=dict)   # parameter name -> default value
    setting_names: dict = field(default_factory=dict)  # parameter -> its Settings cell's name prefix
                                                       # (default <activation>_<parameter>; + _<layer>)
    elementwise: bool = True
    piecewise: bool = False          # its slope jumps at u = 0 (finite differences must not cross it)
    # Diagnosis properties (read by diagnose.py, never by name):
    saturates_at: tuple = ()         # output levels a approaches where f' → 0 (σ: 0 and 1; tanh: ±1)
    can_die: bool = False            # u ≤ 0 for every sample leaves the unit at its floor (ReLU: f' = 0)
    slope_bound: float | None = None  # max |f'(u)| when it is below 1 (σ' ≤ 0.25): the depth factor
    exponential: bool = False        # f evaluates exp of u: an overflow is "the exponential inside" f


def _sigmoid(u):
    with np.errstate(all="ignore"):
        return np.where(u >= 0, 1.0 / (1.0 + np.exp(-u)), np.exp(u) / (1.0 + np.exp(u)))


def _x_sigmoid(u):
    return f"IF({u}>=0,1/(1+EXP(-{u})),EXP({u})/(1+EXP({u})))"


def _x_log1p(x):
    # Excel has no LOG1P; below 1e-5 the series is exact to double precision and LN(1+x)
    # above it is within 1e-11 relative.
    return f"IF({x}<0.00001,{x}*(1-{x}*(1/2-{x}/3)),LN(1+{x}))"


def _softplus(u):
    with np.errstate(all="ignore"):
        return np.where(u > 0, u + np.log1p(np.exp(-u)), np.log1p(np.exp(u)))


def _gelu_density_term(u):
    with np.errstate(all="ignore"):
        return np.where(np.abs(u) > _GELU_TAIL, 0.0, u * np.exp(-(u * u) / 2.0) / _SQRT2PI)


def _softmax(u):
    with np.errstate(all="ignore"):
        shifted = np.exp(u - np.max(u, axis=-1, keepdims=True))
        return shifted / np.sum(shifted, axis=-1, keepdims=True)


def _x_softmax(cells, j):
    top = f"MAX({','.join(cells)})"
    total = "+".join(f"EXP({c}-{top})" for c in cells)
    return f"EXP({cells[j]}-{top})/({total})"


def _ones(u):
    return np.ones_like(u)


ACTIVATIONS = {
    a.name: a
    for a in [
        Activation(
            "identity", "id",
            forward=lambda u, p: np.array(u, dtype=float),
            slope=lambda u, a, p: _ones(u),
            excel_value=lambda u, p: f"{u}",
            # 1, written so that an error in u still propagates (the engine's NaN rule)
            excel_slope=lambda u, a, p: f"1+0*{u}",
            symbolic=lambda x, p: x,
        ),
        Activation(
            "sigmoid", "σ",
            forward=lambda u, p: _sigmoid(u),
            # σ' = σ(1−σ): evaluated from a, as in the write-up, so it is exactly 0 once σ
            # rounds to 1 (u ≳ 37) or underflows to 0.
            slope=lambda u, a, p: a * (1.0 - a),
            excel_value=lambda u, p: _x_sigmoid(u),
            excel_slope=lambda u, a, p: f"{a}*(1-{a})",
            symbolic=lambda x, p: 1 / (1 + sp.exp(-x)),
            saturates_at=(0.0, 1.0),
            slope_bound=0.25,
        ),
        Activation(
            "tanh", "tanh",
            forward=lambda u, p: np.tanh(u),
            slope=lambda u, a, p: 1.0 - a * a,
            excel_value=lambda u, p: f"TANH({u})",
            excel_slope=lambda u, a, p: f"1-{a}*{a}",
            symbolic=lambda x, p: sp.tanh(x),
            saturates_at=(-1.0, 1.0),
        ),
        Activation(
            "relu", "ReLU",
            forward=lambda u, p: np.where(u > 0, u, 0.0),
            slope=lambda u, a, p: np.where(u > 0, 1.0, 0.0),
            excel_value=lambda u, p: f"IF({u}>0,{u},0)",
            excel_slope=lambda u, a, p: f"IF({u}>0,1,0)",
            symbolic=lambda x, p: sp.Piecewise((x, x > 0), (0, True)),
            piecewise=True,
            can_die=True,
        ),
        Activation(
            "leaky_relu", "LReLU",
            forward=lambda u, p: np.where(u > 0, u, p["slope"] * u),
            slope=lambda u, a, p: np.where(u > 0, 1.0, p["slope"] * np.ones_like(u)),
            excel_value=lambda u, p: f"IF({u}>0,{u},{p['slope']}*{u})",
            excel_slope=lambda u, a, p: f"IF({u}>0,1,{p['slope']})",
            symbolic=lambda x, p: sp.Piecewise((x, x > 0), (p["slope"] * x, True)),
            params={"slope": 0.01},
            setting_names={"slope": "leaky_slope"},
            piecewise=True,
            can_die=True,
        ),
        Activation(
            "elu", "ELU",
            forward=lambda u, p: np.where(u > 0, u, p["alpha"] * (np.exp(np.minimum(u, 0.0)) - 1.0)),
            slope=lambda u, a, p: np.where(u > 0, 1.0, p["alpha"] * np.exp(np.minimum(u, 0.0))),
            excel_value=lambda u, p: f"IF({u}>0,{u},{p['alpha']}*(EXP({u})-1))",
            excel_slope=lambda u, a, p: f"IF({u}>0,1,{p['alpha']}*EXP({u}))",
            symbolic=lambda x, p: sp.Piecewise((x, x > 0), (p["alpha"] * (sp.exp(x) - 1), True)),
            params={"alpha": 1.0},
            setting_names={"alpha": "elu_alpha"},
            piecewise=True,
            can_die=True,
            exponential=True,
        ),
        Activation(
            "silu", "SiLU",
            forward=lambda u, p: u * _sigmoid(u),
            slope=lambda u, a, p: _sigmoid(u) * (1.0 + u * (1.0 - _sigmoid(u))),
            excel_value=lambda u, p: f"{u}*{_x_sigmoid(u)}",
            excel_slope=lambda u, a, p: f"{_x_sigmoid(u)}*(1+{u}*(1-{_x_sigmoid(u)}))",
            symbolic=lambda x, p: x / (1 + sp.exp(-x)),
            exponential=True,
        ),
        Activation(
            "gelu", "GELU",
            forward=lambda u, p: 0.5 * u * _erfc(-u / _SQRT2),
            slope=lambda u, a, p: 0.5 * _erfc(-u / _SQRT2) + _gelu_density_term(u),
            excel_value=lambda u, p: f"0.5*{u}*ERFC(-{u}/SQRT(2))",
            excel_slope=lambda u, a, p: (
                f"0.5*ERFC(-{u}/SQRT(2))+IF(ABS({u})>{_GELU_TAIL:g},0,"
                f"{u}*EXP(-({u}*{u})/2)/SQRT(2*PI()))"
            ),
            symbolic=lambda x, p: x * sp.erfc(-x / sp.sqrt(2)) / 2,
            exponential=True,
        ),
        Activation(
            "softplus", "softplus",
            forward=lambda u, p: _softplus(u),
            slope=lambda u, a, p: _sigmoid(u),
            excel_value=lambda u, p: (
                f"IF({u}>0,{u}+{_x_log1p(f'EXP(-{u})')},{_x_log1p(f'EXP({u})')})"
            ),
            excel_slope=lambda u, a, p: _x_sigmoid(u),
            symbolic=lambda x, p: sp.log(1 + sp.exp(x)),
            exponential=True,
        ),
        Activation(
            "softmax", "softmax",
            forward=lambda u, p: _softmax(u),
            # the diagonal of the Jacobian, ∂a_j/∂u_j; shown for reading, the output
            # delta of softmax + cross-entropy is a − t.
            slope=lambda u, a, p: a * (1.0 - a),
            excel_value=lambda cells, j, p: _x_softmax(cells, j),
            excel_slope=lambda u, a, p: f"{a}*(1-{a})",
            symbolic=None,
            elementwise=False,
            saturates_at=(0.0, 1.0),
            slope_bound=0.25,
            exponential=True,
        ),
    ]
}


def get(name):
    """The activation called `name` (KeyError if unknown; the scenario reports it)."""
    return ACTIVATIONS[name]
