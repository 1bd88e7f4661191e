"""Loss values and gradients against sympy; fused deltas against sympy's d/du of loss(f(u))."""
import numpy as np
import pytest
import sympy as sp

from tracer.maths import activations, losses

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


# targets that are one-hot, soft (label smoothing), or rows that do not sum to 1 (all zero, several ones)
FUSED_TARGETS = [[0.0, 1.0, 0.0], [0.05, 0.9, 0.05], [0.3, 0.9, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.5]]


@pytest.mark.parametrize("targets", FUSED_TARGETS, ids=["one-hot", "smoothed", "sum 1.2", "zeros", "sum 2.5"])
@pytest.mark.parametrize("name", [n for n, l in losses.LOSSES.items() if l.fused])
def test_fused_loss_value_and_delta_match_sympy(name, targets):
    """δ = ∂E/∂u by sympy's d/du of loss(f(u)): y − t for bce, y·Σt − t for softmax_ce."""
    loss = losses.LOSSES[name]
    act = activations.get(loss.output_activation)
    us, ts = sp.symbols("u0:3", real=True), sp.symbols("t0:3")
    if act.elementwise:
        ys = [act.symbolic(u, {}) for u in us]
    else:
        total = sum(sp.exp(u) for u in us)
        ys = [sp.exp(u) / total for u in us]
    targets = np.array([targets])
    expr = loss.symbolic(ys, ts)
    u = np.array([[0.4, -2.1, 1.3]])
    point = {**dict(zip(us, u[0])), **dict(zip(ts, targets[0]))}
    y = act.forward(u, {})
    assert loss.value(u, y, targets)[0] == pytest.approx(float(expr.subs(point)), rel=1e-13)
    y_syms = sp.symbols("y0:3")
    for k, var in enumerate(us):
        exact = float(sp.diff(expr, var).subs(point))
        assert loss.delta(y, targets)[0, k] == pytest.approx(exact, rel=1e-12, abs=1e-15)
        # the sympy form the chain rule prints, at the same point
        assert float(loss.symbolic_delta(y_syms, ts, k).subs({**dict(zip(y_syms, y[0])), **point})) == pytest.approx(exact, rel=1e-12, abs=1e-15)


def test_softmax_ce_delta_is_y_minus_t_exactly_for_rows_summing_to_one():
    y = activations.get("softmax").forward(np.array([[0.4, -2.1, 1.3]]), {})
    t = np.array([[0.0, 1.0, 0.0]])
    assert (losses.LOSSES["softmax_ce"].delta(y, t) == y - t).all()


def _fused_targets_run(loss_name, targets):
    from tests.conftest import build
    inputs = [[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0], [0.2, 0.1], [1.0, 1.0]]
    output = {"bce": "sigmoid", "softmax_ce": "softmax"}[loss_name]
    return build({"seed": 3, "steps": 3, "data": {"inputs": inputs, "targets": targets},
                  "layers": [{"units": 3, "activation": "tanh", "init": "xavier_uniform"},
                             {"units": 3, "activation": output, "init": "xavier_uniform"}],
                  "loss": {"name": loss_name, "reduction": "mean"}, "optimizer": {"name": "sgd", "lr": 0.5},
                  "training": {"batch": 2}})


@pytest.mark.parametrize("name", ["softmax_ce", "bce"])
def test_fused_losses_gradcheck_with_rows_that_do_not_sum_to_one(name):
    from tracer.explain import gradcheck
    trace = _fused_targets_run(name, FUSED_TARGETS)
    report = gradcheck.check(trace, steps=(0, 1, 2))
    assert report.checks and not report.nonfinite
    assert report.worst.error < 1e-7, report.worst


@pytest.mark.libreoffice(workbooks=lambda: _fused_targets_run("softmax_ce", FUSED_TARGETS))
def test_softmax_ce_with_rows_that_do_not_sum_to_one_verifies_in_libreoffice(recomputed):
    assert recomputed.report.ok, recomputed.report.summary()


def test_bce_is_finite_for_saturated_logits():
    u = np.array([[800.0, -800.0]])
    y = activations.get("sigmoid").forward(u, {})
    value = losses.LOSSES["bce"].value(u, y, np.array([[0.0, 1.0]]))
    assert value[0] == pytest.approx(1600.0)


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_minimum_is_the_value_at_y_equal_t_and_nothing_is_lower(name):
    """loss.minimum(t) (the diagnosis's floor of E) is E where the outputs equal the targets, and
    no other output gives less."""
    loss = losses.LOSSES[name]
    t = np.array([[0.2, 0.5, 0.3], [0.05, 0.9, 0.05]])
    if loss.output_activation == "sigmoid":
        u = np.log(t / (1 - t))
    elif loss.output_activation == "softmax":
        u = np.log(t)
    else:
        u = t.copy()
    y = activations.get(loss.output_activation or "identity").forward(u, {})
    np.testing.assert_allclose(loss.value(u, y, t), loss.minimum(t), rtol=1e-12, atol=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(20):
        other = u + rng.normal(size=u.shape)
        y_other = activations.get(loss.output_activation or "identity").forward(other, {})
        assert (loss.value(other, y_other, t) >= loss.minimum(t) - 1e-12).all()
