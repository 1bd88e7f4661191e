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

Every loss answers for the output delta δ⁽ᴸ⁾ (the one place that knows whether it is fused):
  records_output_error                 True when ∂E/∂a⁽ᴸ⁾ is a quantity of its own (the CSV's dE_da rows,
                                       the workbook's ∂E/∂a columns, the chain rule's factors ④ ∂E/∂a
                                       and ⑤ f'(u)); False for a fused loss
  reads_output_slope                   the same truth, asked by those who multiply slopes (diagnosis, checks)
  output_error(y, t)                   numpy ∂E/∂a⁽ᴸ⁾ (B, K), or None for a fused loss
  output_delta(y, t, slope)            numpy δ⁽ᴸ⁾ = ∂E/∂a · f'(u), or the fused δ (slope unused)
  excel_output_delta(y, t, k, dE_da, slope)
                                       formula body of δ⁽ᴸ⁾_k from the cells of the outputs y and targets t
                                       (lists), of ∂E/∂a (a list, empty when not recorded) and of f'(u_k)
  symbolic_output_error(y, t, k)       sympy ∂E/∂a_k (hand-written; None for a fused loss)
  symbolic_output_delta(y, t, k, slope)  sympy δ_k: symbolic_output_error·slope, or the fused δ
  output_delta_text                    δ in words: "a − t", "a·Σt − t" or "∂E/∂a · f'(u)"
  output_delta_meaning                 the δ column's comment in the workbook
and, for the diagnosis and the hand checks, minimum(t) (the per-sample floor of E: 0 for squared
errors, the targets' entropy for cross-entropy) and derivative_text.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tracer.maths.symbolic import sympy as sp

from tracer.maths import procedures
from tracer.maths.activations import _x_log1p


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
    symbolic_error: Callable | None = None  # not fused: (y_syms, t_syms, k) -> sympy ∂E/∂y_k
    minimum: Callable = lambda t: np.zeros(t.shape[0])  # (t) -> per-sample smallest loss these targets allow
    derivative_text: str = ""              # ∂E/∂y in words (a hand check's hint for a factor 2 or ½)

    @property
    def fused(self):
        """True when the loss owns the output delta δ = ∂E/∂u (`delta`: y − t for bce with
        sigmoid, y·Σt − t for softmax_ce) and the output slope is not used."""
        return self.error is None

    # ------------------------------------------------------------ the output delta δ⁽ᴸ⁾

    @property
    def records_output_error(self):
        """True when ∂E/∂a⁽ᴸ⁾ is recorded as its own quantity (dE_da) and δ⁽ᴸ⁾ = ∂E/∂a·f'(u)."""
        return self.error is not None

    @property
    def reads_output_slope(self):
        """True when δ⁽ᴸ⁾ passes through the output slope f'(u⁽ᴸ⁾) (δ = ∂E/∂a·f'); False when the
        loss owns δ. The same as records_output_error: ∂E/∂a exists exactly when δ reads f'."""
        return self.records_output_error

    def output_error(self, y, t):
        """∂E/∂a⁽ᴸ⁾ per sample (B, K), or None when the loss owns δ⁽ᴸ⁾ (nothing recorded)."""
        return self.error(y, t) if self.records_output_error else None

    def output_delta(self, y, t, slope):
        """δ⁽ᴸ⁾ = ∂E/∂u⁽ᴸ⁾ per sample: ∂E/∂a · f'(u), or the fused δ (y − t, y·Σt − t; slope unused)."""
        if self.records_output_error:
            return self.error(y, t) * slope
        return self.delta(y, t)

    def excel_output_delta(self, y_cells, t_cells, k, dE_da_cells, slope_cell):
        """Formula body of δ⁽ᴸ⁾_k: ∂E/∂a_k·f'(u_k) from the ∂E/∂a and slope cells, or the fused
        δ from the output and target cells (`dE_da_cells` is empty when ∂E/∂a is not recorded)."""
        if self.records_output_error:
            return f"{dE_da_cells[k]}*{slope_cell}"
        return self.excel_delta(y_cells, t_cells, k)

    def symbolic_output_error(self, y_syms, t_syms, k):
        """sympy ∂E/∂y_k as written by hand (None for a fused loss)."""
        return self.symbolic_error(y_syms, t_syms, k) if self.records_output_error else None

    def symbolic_output_delta(self, y_syms, t_syms, k, slope=None):
        """sympy δ_k = ∂E/∂y_k · slope, or the fused δ (slope unused)."""
        if self.records_output_error:
            return sp.Mul(self.symbolic_error(y_syms, t_syms, k), slope, evaluate=False)
        return self.symbolic_delta(y_syms, t_syms, k)

    @property
    def output_delta_text(self):
        """δ⁽ᴸ⁾ in words, for headers and explanations."""
        return "∂E/∂a · f'(u)" if self.records_output_error else self.delta_text

    @property
    def output_delta_meaning(self):
        """The comment of the workbook's δ⁽ᴸ⁾ column."""
        if self.records_output_error:
            return "δ = ∂E/∂a · f'(u)"
        return f"δ = ∂E/∂u = {self.delta_text} (fused with the loss)"


def _squares(y_cells, t_cells):
    # (t−y)·(t−y), not (t−y)^2: a spreadsheet's power is #NUM! when it underflows, a product is 0
    return "+".join(f"({t}-{y})*({t}-{y})" for y, t in zip(y_cells, t_cells))


def _sq_sum(y, t):
    with np.errstate(all="ignore"):
        return np.sum((t - y) * (t - y), axis=-1)


def _plogp(p):
    """p·ln p, 0 at p = 0."""
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def _bce_minimum(t):
    """−Σ_k [t ln t + (1−t) ln(1−t)] per sample: bce's value at y = t."""
    with np.errstate(all="ignore"):
        return -np.sum(_plogp(t) + _plogp(1.0 - t), axis=1)


def _softmax_ce_minimum(t):
    """−Σ_k t ln t per sample: softmax_ce's value at y = t."""
    with np.errstate(all="ignore"):
        return -np.sum(_plogp(t), axis=1)


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
            symbolic_error=lambda y, t, k: y[k] - t[k],
            derivative_text="E = ½Σ(t−y)² has ∂E/∂y = y − t (the ½ cancels the 2)",
        ),
        Loss(
            "sse",
            value=lambda u, y, t: _sq_sum(y, t),
            excel_value=lambda u, y, t: _squares(y, t),
            symbolic=lambda y, t: sum((ti - yi) ** 2 for yi, ti in zip(y, t)),
            error=lambda y, t: 2.0 * (y - t),
            excel_error=lambda y, t, k: f"2*({y}-{t})",
            symbolic_error=lambda y, t, k: 2 * (y[k] - t[k]),
            derivative_text="E = Σ(t−y)² has ∂E/∂y = 2(y − t)",
        ),
        Loss(
            "mse",
            value=lambda u, y, t: _sq_sum(y, t) / y.shape[-1],
            excel_value=lambda u, y, t: f"({_squares(y, t)})/{len(y)}",
            symbolic=lambda y, t: sum((ti - yi) ** 2 for yi, ti in zip(y, t)) / len(y),
            error=lambda y, t: 2.0 * (y - t) / y.shape[-1],
            excel_error=lambda y, t, k: f"2*({y}-{t})/{k}",
            symbolic_error=lambda y, t, k: 2 * (y[k] - t[k]) / len(y),
            derivative_text="E = (1/K)Σ(t−y)² has ∂E/∂y = 2(y − t)/K",
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
            minimum=_bce_minimum,
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
            minimum=_softmax_ce_minimum,
            probabilities=True,
        ),
    ]
}

REDUCTIONS = procedures.REDUCTIONS   # the batch reduction, with its Excel form, is a procedure
