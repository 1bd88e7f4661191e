"""Loss functions, each defined once: numpy value and gradient, Excel forms, sympy form.

Per sample, with outputs y (activations of the last layer), targets t and K outputs:
  half_sse    E = ½ Σ_k (t_k − y_k)²          ∂E/∂y_k = y_k − t_k
  sse         E = Σ_k (t_k − y_k)²            ∂E/∂y_k = 2 (y_k − t_k)
  mse         E = (1/K) Σ_k (t_k − y_k)²      ∂E/∂y_k = 2 (y_k − t_k) / K
  bce         E = −Σ_k [t ln y + (1−t) ln(1−y)], sigmoid output, computed from u;
              fused: δ_k = ∂E/∂u_k = y_k − t_k            (for any t)
  softmax_ce  E = −Σ_k t_k ln y_k, softmax output, computed from u (log-sum-exp);
              fused: δ_k = ∂E/∂u_k = y_k·Σ_m t_m − t_k    (Σ_m t_m summed left to right;
              exactly y_k − t_k when the targets of the sample sum to 1)
A fused loss owns its output delta δ = ∂E/∂u (numpy, Excel and sympy forms); the output layer's
slope is then not used.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import sympy as sp

from .activations import _x_log1p


@dataclass(frozen=True)
class Loss:
    name: str
    value: Callable            # (u, y, t) -> per-sample loss, shape (B,)
    excel_value: Callable      # (u_cells, y_cells, t_cells) -> formula body
    symbolic: Callable         # (y_syms, t_syms) -> sympy expression
    error: Callable | None = None        # (y, t) -> ∂E/∂y; None when fused
    excel_error: Callable | None = None  # (y_cell, t_cell, K) -> formula body
    output_activation: str | None = None  # the output activation a fused loss needs
    delta: Callable | None = None          # fused: (y, t) -> δ = ∂E/∂u
    excel_delta: Callable | None = None    # fused: (y_cells, t_cells, k) -> formula body of δ_k
    symbolic_delta: Callable | None = None  # fused: (y_syms, t_syms, k) -> sympy expression of δ_k
    delta_text: str = ""                   # fused: δ in words, for headers and explanations
    probabilities: bool = False            # targets must lie in [0, 1] (else the loss has no minimum)

    @property
    def fused(self):
        """True when the loss owns the output delta δ = ∂E/∂u (`delta`: y − t for bce with
        sigmoid, y·Σt − t for softmax_ce) and the output slope is not used."""
        return self.error is None


def _squares(y_cells, t_cells):
    # (t−y)·(t−y), not (t−y)^2: a spreadsheet's power is #NUM! when it underflows, a product is 0
    return "+".join(f"({t}-{y})*({t}-{y})" for y, t in zip(y_cells, t_cells))


def _sq_sum(y, t):
    with np.errstate(all="ignore"):
        return np.sum((t - y) * (t - y), axis=-1)


def _bce(u, y, t):
    with np.errstate(all="ignore"):
        return np.sum(np.maximum(u, 0.0) - u * t + np.log1p(np.exp(-np.abs(u))), axis=-1)


def _x_bce(u_cells, y_cells, t_cells):
    return "+".join(
        f"(MAX({u},0)-{u}*{t}+{_x_log1p(f'EXP(-ABS({u}))')})" for u, t in zip(u_cells, t_cells)
    )


def _target_total(t):
    """Σ_m t_m per sample, summed left to right (as the workbook's t0+t1+… does)."""
    total = t[..., 0:1]
    for m in range(1, t.shape[-1]):
        total = total + t[..., m:m + 1]
    return total


def _softmax_ce_delta(y, t):
    with np.errstate(all="ignore"):
        return y * _target_total(t) - t


def _softmax_ce(u, y, t):
    """E = −Σ_k t_k·(u_k − m) + (Σ_k t_k)·ln Σ_k exp(u_k − m), m = max_k u_k: −Σ t ln softmax(u)
    with the log-sum-exp written once (both terms are ≥ 0, so nothing cancels)."""
    with np.errstate(all="ignore"):
        top = np.max(u, axis=-1, keepdims=True)
        log_total = np.log(np.sum(np.exp(u - top), axis=-1))
        return -np.sum(t * (u - top), axis=-1) + _target_total(t)[..., 0] * log_total


def _x_softmax_ce(u_cells, y_cells, t_cells):
    # the same form as _softmax_ce: the log-sum-exp once, so the formula grows as K, not K²
    # (10 classes: about 3,100 characters, not 13,300, under the 8,192 limit)
    top = f"MAX({','.join(u_cells)})"
    log_total = "LN(" + "+".join(f"EXP({u}-{top})" for u in u_cells) + ")"
    shifted = "+".join(f"{t}*({u}-{top})" for u, t in zip(u_cells, t_cells))
    return f"-({shifted})+({'+'.join(t_cells)})*{log_total}"


LOSSES = {
    loss.name: loss
    for loss in [
        Loss(
            "half_sse",
            value=lambda u, y, t: 0.5 * _sq_sum(y, t),
            excel_value=lambda u, y, t: f"0.5*({_squares(y, t)})",
            symbolic=lambda y, t: sp.Rational(1, 2) * sum((ti - yi) ** 2 for yi, ti in zip(y, t)),
            error=lambda y, t: y - t,
            excel_error=lambda y, t, k: f"{y}-{t}",
        ),
        Loss(
            "sse",
            value=lambda u, y, t: _sq_sum(y, t),
            excel_value=lambda u, y, t: _squares(y, t),
            symbolic=lambda y, t: sum((ti - yi) ** 2 for yi, ti in zip(y, t)),
            error=lambda y, t: 2.0 * (y - t),
            excel_error=lambda y, t, k: f"2*({y}-{t})",
        ),
        Loss(
            "mse",
            value=lambda u, y, t: _sq_sum(y, t) / y.shape[-1],
            excel_value=lambda u, y, t: f"({_squares(y, t)})/{len(y)}",
            symbolic=lambda y, t: sum((ti - yi) ** 2 for yi, ti in zip(y, t)) / len(y),
            error=lambda y, t: 2.0 * (y - t) / y.shape[-1],
            excel_error=lambda y, t, k: f"2*({y}-{t})/{k}",
        ),
        Loss(
            "bce",
            value=_bce,
            excel_value=_x_bce,
            symbolic=lambda y, t: -sum(ti * sp.log(yi) + (1 - ti) * sp.log(1 - yi) for yi, ti in zip(y, t)),
            output_activation="sigmoid",
            delta=lambda y, t: y - t,
            excel_delta=lambda y, t, k: f"{y[k]}-{t[k]}",
            symbolic_delta=lambda y, t, k: y[k] - t[k],
            delta_text="a − t",
            probabilities=True,
        ),
        Loss(
            "softmax_ce",
            value=_softmax_ce,
            excel_value=_x_softmax_ce,
            symbolic=lambda y, t: -sum(ti * sp.log(yi) for yi, ti in zip(y, t)),
            output_activation="softmax",
            delta=_softmax_ce_delta,
            excel_delta=lambda y, t, k: f"{y[k]}*({'+'.join(t)})-{t[k]}",
            symbolic_delta=lambda y, t, k: sp.Add(sp.Mul(y[k], sp.Add(*t, evaluate=False), evaluate=False), -t[k],
                                                  evaluate=False),
            delta_text="a·Σt − t",
            probabilities=True,
        ),
    ]
}

REDUCTIONS = ("sum", "mean")
