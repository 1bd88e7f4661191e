"""Loss values and gradients against sympy; fused deltas against sympy's d/du of loss(f(u))."""
import numpy as np
import pytest
import sympy as sp

from tracer import activations, losses

Y = np.array([[0.2, -1.3, 0.7]])
T = np.array([[0.0, 1.0, 0.5]])


@pytest.mark.parametrize("name", [n for n, l in losses.LOSSES.items() if not l.fused])
def test_value_and_error_match_sympy(name):
    loss = losses.LOSSES[name]
    ys, ts = sp.symbols("y0:3"), sp.symbols("t0:3")
    expr = loss.symbolic(ys, ts)
    point = {**dict(zip(ys, Y[0])), **dict(zip(ts, T[0]))}
    assert loss.value(Y, Y, T)[0] == pytest.approx(float(expr.subs(point)), rel=1e-14)
    for k, y in enumerate(ys):
        assert loss.error(Y, T)[0, k] == pytest.approx(float(sp.diff(expr, y).subs(point)), rel=1e-14)


@pytest.mark.parametrize("name", [n for n, l in losses.LOSSES.items() if l.fused])
def test_fused_loss_value_and_delta_match_sympy(name):
    loss = losses.LOSSES[name]
    act = activations.get(loss.output_activation)
    us, ts = sp.symbols("u0:3", real=True), sp.symbols("t0:3")
    if act.elementwise:
        ys = [act.symbolic(u, {}) for u in us]
    else:
        total = sum(sp.exp(u) for u in us)
        ys = [sp.exp(u) / total for u in us]
    targets = np.array([[0.0, 1.0, 0.0]]) if name == "softmax_ce" else T
    expr = loss.symbolic(ys, ts)
    u = np.array([[0.4, -2.1, 1.3]])
    point = {**dict(zip(us, u[0])), **dict(zip(ts, targets[0]))}
    y = act.forward(u, {})
    assert loss.value(u, y, targets)[0] == pytest.approx(float(expr.subs(point)), rel=1e-13)
    for k, var in enumerate(us):
        assert (y - targets)[0, k] == pytest.approx(float(sp.diff(expr, var).subs(point)), rel=1e-12)


def test_bce_is_finite_for_saturated_logits():
    u = np.array([[800.0, -800.0]])
    y = activations.get("sigmoid").forward(u, {})
    value = losses.LOSSES["bce"].value(u, y, np.array([[0.0, 1.0]]))
    assert value[0] == pytest.approx(1600.0)
