"""Optimisers, each defined once: hyper-parameters, state, numpy rule and Excel forms side by side.

PyTorch's documented update rules, with every state initialised to 0 and t = step + 1.
Weight decay (when not 0) first adds wd·θ to the gradient: g ← g + wd·θ.
  sgd       Δθ = lr·g
  momentum  b = μ·b_prev + g;  Δθ = lr·(g + μ·b) with nesterov, else lr·b
  adagrad   s = s_prev + g²;   Δθ = lr·g / (√s + eps)
  rmsprop   v = α·v_prev + (1−α)·g²;   Δθ = lr·g / (√v + eps)
  adam      m = β1·m_prev + (1−β1)·g;  v = β2·v_prev + (1−β2)·g²
            m̂ = m / (1−β1^t);  v̂ = v / (1−β2^t);  Δθ = lr·m̂ / (√v̂ + eps)
θ ← θ − Δθ. In the Excel forms, `r` maps names to cell expressions: g (the gradient as the
update sees it), theta, t, each hyper-parameter (a defined name), each state of this row,
and prev_<state> (the previous step's state cell, or 0 at the first step).
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tracer.maths import procedures
from tracer.maths.ieee import propagate_nonfinite as poison


@dataclass(frozen=True)
class Optimizer:
    name: str
    params: dict                 # hyper-parameter -> default (None = required)
    state: tuple                 # state names, in the order they are computed
    rule: Callable               # (g, θ, prev state dict, hyper, t) -> new state dict (with "update")
    excel_state: dict            # state name -> (r) -> formula body
    excel_update: Callable       # (r) -> formula body
    meaning: str = ""

    def step(self, grad, theta, previous, hyper, t):
        """Δθ and the new state for gradient `grad` at parameter values `theta`."""
        state = self.rule(_decayed(grad, theta, hyper), previous, hyper, t)
        return state.pop("update"), state


def _decayed(grad, theta, hyper):
    wd = hyper.get("weight_decay", 0.0)
    return grad + wd * theta if wd else grad


def excel_gradient(gradient, theta, hyper_names, hyper):
    """The gradient expression with weight decay added when it is not 0."""
    if hyper.get("weight_decay", 0.0):
        return f"({gradient}+{hyper_names['weight_decay']}*{theta})"
    return gradient


# Each line poisons its result where one of its inputs is non-finite, as a spreadsheet formula
# reading an error cell would (v = inf makes m̂/√v = 0 in IEEE arithmetic, #NUM! in a sheet).

def _momentum(g, prev, h, t):
    buffer = h["momentum"] * prev["momentum_buffer"] + g
    step = poison(g + h["momentum"] * buffer, g, buffer) if h["nesterov"] else buffer
    return {"momentum_buffer": buffer, "update": h["lr"] * step}


def _adagrad(g, prev, h, t):
    total = poison(prev["sum"] + g * g, prev["sum"], g)
    return {"sum": total, "update": poison(h["lr"] * g / (np.sqrt(total) + h["eps"]), g, total)}


def _rmsprop(g, prev, h, t):
    average = poison(h["alpha"] * prev["square_avg"] + (1 - h["alpha"]) * (g * g), prev["square_avg"], g)
    return {"square_avg": average, "update": poison(h["lr"] * g / (np.sqrt(average) + h["eps"]), g, average)}


def _adam(g, prev, h, t):
    m = h["beta1"] * prev["exp_avg"] + (1 - h["beta1"]) * g
    v = poison(h["beta2"] * prev["exp_avg_sq"] + (1 - h["beta2"]) * (g * g), prev["exp_avg_sq"], g)
    m_hat = m / (1 - h["beta1"] ** t)
    v_hat = v / (1 - h["beta2"] ** t)
    return {"exp_avg": m, "exp_avg_sq": v, "m_hat": m_hat, "v_hat": v_hat,
            "update": poison(h["lr"] * m_hat / (np.sqrt(v_hat) + h["eps"]), m_hat, v_hat)}


OPTIMIZERS = {
    o.name: o
    for o in [
        Optimizer(
            "sgd", params={"lr": None, "weight_decay": 0.0}, state=(),
            rule=lambda g, prev, h, t: {"update": h["lr"] * g},
            excel_state={},
            excel_update=lambda r: f"{r['lr']}*{r['g']}",
            meaning="Δθ = lr·g",
        ),
        Optimizer(
            "momentum", params={"lr": None, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
            state=("momentum_buffer",), rule=_momentum,
            excel_state={"momentum_buffer": lambda r: f"{r['momentum']}*{r['prev_momentum_buffer']}+{r['g']}"},
            excel_update=lambda r: (f"{r['lr']}*({r['g']}+{r['momentum']}*{r['momentum_buffer']})" if r["nesterov"]
                                    else f"{r['lr']}*{r['momentum_buffer']}"),
            meaning="b = μ·b_prev + g; Δθ = lr·b (Nesterov: lr·(g + μ·b))",
        ),
        Optimizer(
            "adagrad", params={"lr": 0.01, "eps": 1e-10, "weight_decay": 0.0}, state=("sum",), rule=_adagrad,
            excel_state={"sum": lambda r: f"{r['prev_sum']}+{r['g']}*{r['g']}"},
            excel_update=lambda r: f"{r['lr']}*{r['g']}/(SQRT({r['sum']})+{r['eps']})",
            meaning="s = s_prev + g²; Δθ = lr·g/(√s + eps)",
        ),
        Optimizer(
            "rmsprop", params={"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
            state=("square_avg",), rule=_rmsprop,
            excel_state={"square_avg": lambda r: f"{r['alpha']}*{r['prev_square_avg']}+(1-{r['alpha']})*({r['g']}*{r['g']})"},
            excel_update=lambda r: f"{r['lr']}*{r['g']}/(SQRT({r['square_avg']})+{r['eps']})",
            meaning="v = α·v_prev + (1−α)·g²; Δθ = lr·g/(√v + eps)",
        ),
        Optimizer(
            "adam", params={"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
            state=("exp_avg", "exp_avg_sq", "m_hat", "v_hat"), rule=_adam,
            excel_state={
                "exp_avg": lambda r: f"{r['beta1']}*{r['prev_exp_avg']}+(1-{r['beta1']})*{r['g']}",
                "exp_avg_sq": lambda r: f"{r['beta2']}*{r['prev_exp_avg_sq']}+(1-{r['beta2']})*({r['g']}*{r['g']})",
                # IFERROR: β^t below 2.2e-308 is #NUM! in a spreadsheet, 0 (or subnormal) in IEEE
                "m_hat": lambda r: f"{r['exp_avg']}/(1-IFERROR({r['beta1']}^{r['t']},0))",
                "v_hat": lambda r: f"{r['exp_avg_sq']}/(1-IFERROR({r['beta2']}^{r['t']},0))",
            },
            excel_update=lambda r: f"{r['lr']}*{r['m_hat']}/(SQRT({r['v_hat']})+{r['eps']})",
            meaning="m, v moving averages of g and g²; Δθ = lr·m̂/(√v̂ + eps) with bias correction",
        ),
    ]
}

STATE_SYMBOLS = {"momentum_buffer": "b", "sum": "s", "square_avg": "v", "exp_avg": "m", "exp_avg_sq": "v",
                 "m_hat": "m̂", "v_hat": "v̂"}

# the lr schedule is a procedure: defined with its Excel form in procedures.py
SCHEDULES = procedures.SCHEDULES
learning_rate = procedures.learning_rate
