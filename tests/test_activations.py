"""Every activation's numpy forward and slope against sympy's own definition and differentiation."""
import numpy as np
import pytest
import sympy as sp

from tracer.maths import activations

POINTS = np.concatenate([np.linspace(-8, 8, 161), [-30.0, -3.3, -0.01, 0.01, 0.3, 2.7, 30.0]])
PARAMS = {"slope": 0.07, "alpha": 1.3}
ELEMENTWISE = [name for name, a in activations.ACTIVATIONS.items() if a.elementwise]


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_forward_matches_sympy_definition(name):
    act = activations.get(name)
    x = sp.Symbol("x", real=True)
    params = {k: PARAMS[k] for k in act.params}
    expr = act.symbolic(x, params)
    expected = np.array([float(expr.subs(x, sp.Rational(float(p))).evalf(40)) for p in POINTS])
    got = act.forward(POINTS, params)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)  # libm erfc: ~1e-13 in the far tail


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_slope_matches_sympy_derivative(name):
    act = activations.get(name)
    x = sp.Symbol("x", real=True)
    params = {k: PARAMS[k] for k in act.params}
    derivative = sp.diff(act.symbolic(x, params), x)
    points = POINTS[POINTS != 0]  # the kink of ReLU-like functions has no derivative
    expected = np.array([float(derivative.subs(x, sp.Rational(float(p))).evalf(40)) for p in points])
    got = act.slope(points, act.forward(points, params), params)
    # sigmoid-type slopes are evaluated as a(1-a), as the write-up does: cancellation in
    # 1 - a costs a few ulps of 1 relative to a, hence the absolute tolerance.
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=5e-16)


def test_sigmoid_slope_is_exactly_zero_when_saturated():
    act = activations.get("sigmoid")
    u = np.array([40.0, 875.0, -800.0])
    assert (act.slope(u, act.forward(u, {}), {}) == 0).all()


def test_overflow_safe_sigmoid_has_no_overflow():
    with np.errstate(all="raise"):
        a = activations.get("sigmoid").forward(np.array([-1000.0, 1000.0]), {})
    assert a.tolist() == [0.0, 1.0]


def test_softmax_against_sympy():
    act = activations.get("softmax")
    xs = sp.symbols("x0:3", real=True)
    total = sum(sp.exp(v) for v in xs)
    point = {xs[0]: 0.3, xs[1]: -1.2, xs[2]: 2.0}
    u = np.array([[0.3, -1.2, 2.0]])
    a = act.forward(u, {})
    for j, v in enumerate(xs):
        expr = sp.exp(v) / total
        assert a[0, j] == pytest.approx(float(expr.subs(point)), rel=1e-14)
        assert act.slope(u, a, {})[0, j] == pytest.approx(float(sp.diff(expr, v).subs(point)), rel=1e-12)
