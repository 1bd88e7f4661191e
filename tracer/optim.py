"""Optimisers, each defined once: hyper-parameters, numpy update rule and Excel form.

  sgd   Δθ = lr · g ;  θ ← θ − Δθ
"""
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Optimizer:
    name: str
    params: dict                 # hyper-parameter -> default (None = required)
    update: Callable             # (grad, hyper) -> Δθ, the amount subtracted
    excel_update: Callable       # (grad_cell, hyper_names) -> formula body


OPTIMIZERS = {
    o.name: o
    for o in [
        Optimizer(
            "sgd",
            params={"lr": None},
            update=lambda grad, h: h["lr"] * grad,
            excel_update=lambda grad, h: f"{h['lr']}*{grad}",
        ),
    ]
}
