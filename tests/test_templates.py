"""Each built-in template reproduces its article's phenomenon, in numbers."""
import math

import numpy as np
import pytest

from tracer.training import engine, scenario as scenario_module, templates
from tracer.explain import gradcheck


def run(name, **kwargs):
    return engine.run(scenario_module.load(name, **kwargs))


def test_every_template_has_a_commented_header_and_description():
    for name in templates.names():
        text = templates.read(name)
        assert text.startswith(f"# {name}:"), name
        assert "Look at" in text, name
        assert scenario_module.loads(text).description


@pytest.mark.parametrize("name", templates.names())
def test_gradcheck_passes_on_every_template(name):
    trace = run(name)
    report = gradcheck.check(trace, steps=sorted({0, trace.steps // 2, trace.steps - 1}))
    assert report.checks and report.worst.error < 1e-6, report.worst


def test_sigmoid_vanishing_hidden_gradients_are_exactly_zero():
    trace = run("sigmoid-vanishing")
    assert (trace.u[0][0] > 100).all()                     # u in the hundreds
    assert (trace.slope[0] == 0).all()                     # σ'(u) = 0 exactly, every step and unit
    assert (trace.grad_W[0] == 0).all() and (trace.grad_b[0] == 0).all()
    assert (trace.W[0][-1] == trace.W[0][0]).all()         # the hidden layer never moves


def test_leaky_relu_explosion_exponents_and_signs():
    trace = run("leaky-relu-explosion")
    g = trace.grad_W[0][:, 0, 0]
    exponents = [math.log10(abs(v)) for v in g[1:4]]
    for got, expected in zip(exponents, (18, 57, 170)):
        assert abs(got - expected) <= 3, exponents
    assert g[1] < 0 < g[2] and g[3] < 0                    # -1e18 → +1e57 → -1e170
    assert not np.isfinite(g[4:]).any()                    # then it overflows
    assert trace.first_nonfinite_step() == 4
    assert (trace.slope[0][1] == 0.01).all()               # u < 0 after the first update: slope 0.01


def test_deep_sigmoid_first_layer_gradient_is_orders_below_last():
    trace = run("deep-sigmoid")
    assert trace.gradient_norm(1)[0] < 1e-2 * trace.gradient_norm(6)[0]
    assert (trace.slope[0] <= 0.25).all()


@pytest.mark.parametrize("remedy,twin", [("normalized-inputs", "sigmoid-vanishing"), ("small-lr", "leaky-relu-explosion"),
                                         ("clipped-explosion", "leaky-relu-explosion"),
                                         ("xavier-tanh", "deep-sigmoid"), ("he-relu-deep", "deep-sigmoid"),
                                         ("batchnorm-deep", "deep-sigmoid"), ("layernorm-deep", "deep-sigmoid")])
def test_remedies_learn_where_their_twin_does_not(remedy, twin):
    fixed, broken = run(remedy), run(twin)
    assert np.isfinite(fixed.loss).all()
    assert fixed.loss[-1] < 0.5 * fixed.loss[0]
    ratio_fixed = fixed.gradient_norm(1)[0] / fixed.gradient_norm(fixed.layers)[0]
    ratio_broken = broken.gradient_norm(1)[0] / broken.gradient_norm(broken.layers)[0]
    if twin == "leaky-relu-explosion":
        assert not np.isfinite(broken.loss).all()
    else:
        assert ratio_fixed > 10 * ratio_broken   # the first layer gets its gradient back


def test_layernorm_deep_gives_the_first_layer_its_gradient_back():
    fixed, broken = run("layernorm-deep"), run("deep-sigmoid")
    assert [layer.kind for layer in fixed.scenario.layers] == ["dense", "layernorm"] * 5 + ["dense"]
    assert fixed.scenario.inputs.tolist() == broken.scenario.inputs.tolist()
    # every sigmoid sees, per sample, x̂ with mean 0 and variance σ²/(σ² + eps) over its four units
    for l in range(1, 10, 2):
        xhat = fixed.norm["xhat"][l][0]
        np.testing.assert_allclose(xhat.mean(axis=1), 0, atol=1e-12)
        np.testing.assert_allclose(xhat.var(axis=1), 1, rtol=1e-3)
    share_fixed = fixed.gradient_norm(1)[0] / fixed.gradient_norm(fixed.layers)[0]
    share_broken = broken.gradient_norm(1)[0] / broken.gradient_norm(broken.layers)[0]
    assert share_fixed > 10 * share_broken
    assert np.isfinite(fixed.loss).all() and fixed.loss[-1] < 0.5 * fixed.loss[0]


def test_linear_regression_worked_example():
    trace = run("linear-regression")
    assert trace.u[0][0, 0, 0] == 95.0                     # 0.5·170 + 10
    assert trace.sample_loss[0, 0] == 900.0                # (95 − 65)²
    assert trace.grad_W[0][0, 0, 0] == 2 * 30 * 170        # ∂E/∂a = 10,200
    assert trace.grad_b[0][0, 0] == 60.0
    assert trace.loss[-1] < 1e-2


def test_xor_learns():
    trace = run("xor")
    outputs = trace.a[-1][-1, :, 0]
    assert trace.loss[-1] < 0.01
    assert (np.round(outputs) == trace.scenario.targets[:, 0]).all()
