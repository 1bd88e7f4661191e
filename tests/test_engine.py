"""The engine's backprop against central finite differences, and IEEE/spreadsheet propagation."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from tracer.maths import activations
from tracer.training import engine, scenario as scenario_module
from tracer.explain import gradcheck
from tracer import layers
from tests.conftest import build

ELEMENTWISE = sorted(n for n, a in activations.ACTIVATIONS.items() if a.elementwise)


@st.composite
def networks(draw):
    depth = draw(st.integers(1, 5))
    loss = draw(st.sampled_from(["half_sse", "sse", "mse", "bce", "softmax_ce"]))
    n_in = draw(st.integers(1, 6))
    widths = [draw(st.integers(1, 6)) for _ in range(depth)]
    if loss == "softmax_ce":
        widths[-1] = max(2, widths[-1])
    layers = []
    for index, units in enumerate(widths):
        activation = draw(st.sampled_from(ELEMENTWISE))
        if index == depth - 1:
            activation = {"bce": "sigmoid", "softmax_ce": "softmax"}.get(loss, activation)
        layer = {"units": units, "activation": activation, "init": draw(st.sampled_from(["xavier_normal", "he_uniform", "normal"])),
                 "bias_init": "uniform", "bias_low": -0.5, "bias_high": 0.5}
        if layer["init"] == "normal":
            layer["std"] = 0.5
        if activation == "leaky_relu":
            layer["slope"] = draw(st.sampled_from([0.01, 0.1]))
        if activation == "elu":
            layer["alpha"] = draw(st.sampled_from([1.0, 0.5]))
        previous = n_in if index == 0 else widths[index - 1]
        if index < depth - 1 and units == previous:
            layer["residual"] = draw(st.booleans())
        layers.append(layer)
        if index < depth - 1 and draw(st.integers(0, 3)) == 0:
            layers.append({"kind": "batchnorm", "activation": draw(st.sampled_from(ELEMENTWISE)), "slope": 0.1,
                           "alpha": 0.5})
            for key in ("slope", "alpha"):
                if not (key == "slope" and layers[-1]["activation"] == "leaky_relu"
                        or key == "alpha" and layers[-1]["activation"] == "elu"):
                    del layers[-1][key]
    norm = any(layer.get("kind") == "batchnorm" for layer in layers)
    samples = draw(st.integers(2 if norm else 1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    inputs = rng.normal(0, 1.5, (samples, n_in))
    soft = draw(st.booleans())   # cross-entropy targets in [0, 1] whose rows need not sum to 1
    if loss in ("softmax_ce", "bce") and soft:
        targets = rng.uniform(0, 1, (samples, widths[-1]))
    elif loss == "softmax_ce":
        targets = np.eye(widths[-1])[rng.integers(0, widths[-1], samples)]
    elif loss == "bce":
        targets = rng.integers(0, 2, (samples, widths[-1])).astype(float)
    else:
        targets = rng.normal(0, 1, (samples, widths[-1]))
    batch = draw(st.sampled_from(["full", 1, 2]))
    if isinstance(batch, int) and (batch > samples or norm and (batch == 1 or samples % batch == 1)):
        batch = "full"   # (batchnorm refuses a batch of one sample)
    return {
        "seed": seed, "steps": 2,
        "data": {"inputs": inputs.tolist(), "targets": targets.tolist()},
        "layers": layers, "loss": {"name": loss, "reduction": draw(st.sampled_from(["sum", "mean"]))},
        "optimizer": {"name": "sgd", "lr": 0.05}, "training": {"batch": batch},
    }


# Found by hypothesis: a batch of two whose batchnorm variance (7e-5 in layer 2, 2.4e-5 in layer 4)
# is of the order of eps = 1e-5, so x̂ = d/√(d² + eps) bends within ~1e-3 of W1[1,4]; the fixed step
# h = 1e-4 left a Richardson remainder of 2.7e-5 (backprop −49.32561256, numeric −49.32430078).
BATCHNORM_VARIANCE_NEAR_EPS = {
    "seed": 2, "steps": 2,
    "data": {"inputs": [[0.2835800726902996, -0.784122662221121], [-0.6195953150878402, -3.6622010739597837]],
             "targets": [[1.799707382720902], [1.1441658720372287]]},
    "layers": [
        {"units": 5, "activation": "identity", "init": "xavier_normal", "bias_init": "uniform", "bias_low": -0.5, "bias_high": 0.5},
        {"kind": "batchnorm", "activation": "elu", "alpha": 0.5},
        {"units": 2, "activation": "gelu", "init": "xavier_normal", "bias_init": "uniform", "bias_low": -0.5, "bias_high": 0.5},
        {"kind": "batchnorm", "activation": "elu", "alpha": 0.5},
        {"units": 1, "activation": "elu", "init": "xavier_normal", "bias_init": "uniform", "bias_low": -0.5, "bias_high": 0.5,
         "alpha": 1.0},
    ],
    "loss": {"name": "half_sse", "reduction": "sum"},
    "optimizer": {"name": "sgd", "lr": 0.05}, "training": {"batch": "full"},
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
@example(BATCHNORM_VARIANCE_NEAR_EPS)
def test_backprop_matches_finite_differences(raw):
    trace = build(raw)
    report = gradcheck.check(trace, steps=(0, 1))
    assume(not report.nonfinite and report.checks)
    worst = report.worst
    assert worst.error < 1e-6, worst


def test_gradcheck_shrinks_its_step_where_batchnorm_variance_is_near_eps():
    trace = build(BATCHNORM_VARIANCE_NEAR_EPS)
    assert trace.norm["var"][1][0, 4] < 10 * 1e-5   # σ² of the order of eps
    report = gradcheck.check(trace, steps=(0,))
    assert not report.unresolved and not report.skipped
    checked = {c.name: c for c in report.checks}
    assert abs(checked["W1[1,4]"].backprop) > 10 and checked["W1[1,4]"].error < 1e-8


def test_gradcheck_reports_a_gradient_finite_differences_cannot_resolve():
    # two inputs 1e4 apart and σ² = eps: x̂ = d/√(d² + eps) turns over within ~1e-6 of W1[0,0],
    # finer than the smallest step 1e-4/16; the check lists the parameter instead of failing it
    scenario = scenario_module.from_dict({
        "steps": 1, "data": {"inputs": [[0.0], [1e4]], "targets": [[0.3], [-0.2]]},
        "layers": [{"units": 1, "activation": "identity", "init": "explicit", "weights": [[2 * 10 ** -2.5 / 1e4]], "bias": [0.0]},
                   {"kind": "batchnorm", "activation": "identity"},
                   {"units": 1, "activation": "tanh", "init": "explicit", "weights": [[0.7]], "bias": [0.1]}],
        "optimizer": {"lr": 0.1},
    })
    report = gradcheck.check(engine.run(scenario), steps=(0,))
    assert (0, "W1[0,0]") in report.unresolved
    assert report.checks and report.worst.error < 1e-6


def test_gradcheck_catches_a_wrong_gradient(base_raw):
    trace = build(base_raw)
    trace.grad_W[0][0, 0, 0] *= 1.001
    assert gradcheck.check(trace, steps=(0,)).worst.error > 1e-4


def test_weighted_sum_is_left_to_right():
    a = np.array([[1e16, 1.0, -1e16]])
    W = np.ones((3, 1))
    # ((1e16 + 1) - 1e16) + 0 = 0 in left-to-right double arithmetic, as in a spreadsheet
    assert engine.weighted_sum(a, W, np.zeros(1))[0, 0] == 0.0


def test_overflow_propagates_without_raising(base_raw):
    base_raw["optimizer"]["lr"] = 1e150
    base_raw["steps"] = 6
    base_raw["layers"][0]["activation"] = "relu"
    trace = build(base_raw)
    assert trace.first_nonfinite_step() is not None
    assert trace.warnings, "numpy's overflow warnings are recorded"
    bad = trace.first_nonfinite_step()
    # once a parameter is non-finite, everything computed from it stays non-finite
    assert not np.isfinite(trace.loss[bad + 1:]).any()


def test_relu_of_minus_infinity_is_poisoned_like_a_spreadsheet_error():
    scenario = scenario_module.from_dict({
        "steps": 1, "data": {"inputs": [[1.0]], "targets": [[0.0]]},
        "layers": [{"units": 1, "activation": "relu", "init": "explicit", "weights": [[-1e308]], "bias": [-1e308]}],
        "optimizer": {"lr": 0.1},
    })
    trace = engine.run(scenario)
    assert np.isneginf(trace.u[0][0, 0, 0])
    assert np.isnan(trace.a[0][0, 0, 0])  # IEEE would say max(-inf, 0) = 0; a spreadsheet says #NUM!


def test_mean_reduction_divides_by_batch(base_raw):
    summed = build(base_raw)
    base_raw["loss"]["reduction"] = "mean"
    mean = build(base_raw)
    np.testing.assert_allclose(mean.grad_W[0][0], summed.grad_W[0][0] / 3, rtol=1e-15)


def test_minibatches_cycle_through_the_data(base_raw):
    base_raw["training"]["batch"] = 2
    base_raw["steps"] = 4
    trace = build(base_raw)
    assert [trace.samples(t).tolist() for t in range(4)] == [[0, 1], [2], [0, 1], [2]]


def test_frozen_bias_does_not_move(base_raw):
    base_raw["layers"][0]["train_bias"] = False
    trace = build(base_raw)
    assert (trace.b[0][0] == trace.b[0][-1]).all()
    assert not (trace.W[0][0] == trace.W[0][-1]).all()


def test_clip_norm_as_pytorch(base_raw):
    base_raw["training"]["clip_norm"] = 0.05
    trace = build(base_raw)
    for step in range(trace.steps):
        grads = np.concatenate([g[step].ravel() for pair in zip(trace.grad_W, trace.grad_b) for g in pair])
        norm = np.sqrt(np.sum(grads ** 2))
        factor = min(1.0, 0.05 / (norm + 1e-6))
        assert trace.grad_norm[step] == pytest.approx(norm, rel=1e-14)
        assert trace.clip_factor[step] == pytest.approx(factor, rel=1e-14)
        np.testing.assert_allclose(trace.update_W[0][step], 0.1 * trace.grad_W[0][step] * factor, rtol=1e-14)


def test_clip_value_clamps_each_entry(base_raw):
    base_raw["training"]["clip_value"] = 0.01
    trace = build(base_raw)
    np.testing.assert_allclose(trace.update_W[0][0], 0.1 * np.clip(trace.grad_W[0][0], -0.01, 0.01), rtol=1e-15)
    assert np.abs(trace.update_W[0]).max() <= 0.1 * 0.01 + 1e-18


def _single_unit(inputs, targets, **extra):
    raw = {"seed": 1, "steps": 2, "data": {"inputs": inputs, "targets": targets},
           "layers": [{"units": 1, "activation": "identity", "init": "explicit", "weights": [[0.5]], "bias": [0.0]}],
           "optimizer": {"name": "sgd", "lr": 0.1}}
    for key, value in extra.items():
        raw[key] = value if not isinstance(value, dict) else dict(raw.get(key, {}), **value)
    return raw


# Where numpy and a spreadsheet part ways at the ends of the double range: LibreOffice's x^y is
# #NUM! when the result underflows below 2.2e-308 (x·x gives 0 or a subnormal, as numpy does), and
# it reads the literal 1.7976931348623157E+308 as infinite.
EXTREMES = {
    "squared error underflows": _single_unit([[1e-170], [2e-170]], [[1e-170], [3e-170]]),
    "input of the largest double": _single_unit([[1.7976931348623157e308], [1.0]], [[1.0], [0.0]]),
    "target of the largest double": _single_unit([[1.0], [2.0]], [[-1.7976931348623157e308], [0.0]]),
    "batchnorm variance overflows": dict(_single_unit([[1e200], [-1e200]], [[1.0], [0.0]]),
                                         layers=[{"kind": "batchnorm"}, {"units": 1, "activation": "identity"}]),
    "batchnorm variance underflows": dict(_single_unit([[1e-170], [-1e-170]], [[1.0], [0.0]]),
                                          layers=[{"kind": "batchnorm"}, {"units": 1, "activation": "identity"}]),
    "standardised inputs underflow": _single_unit([[1e-155, 1.0], [3e-155, 2.0], [0.0, 4.0]], [[1.0], [0.0], [0.5]],
                                                  data={"normalize": "standard"}),
    "adam bias correction underflows": _single_unit([[1.0], [2.0]], [[1.0], [0.0]], steps=160,
                                                    optimizer={"name": "adam", "lr": 0.001, "betas": [0.01, 0.999]}),
    "exponential schedule underflows": _single_unit([[1.0], [2.0]], [[1.0], [0.0]], steps=160,
                                                    optimizer={"schedule": "exponential", "gamma": 0.01}),
    "step schedule overflows": _single_unit([[1.0], [2.0]], [[1.0], [0.0]], steps=4,
                                            optimizer={"schedule": "step", "step_size": 1, "gamma": 1e300}),
    "lr times the schedule overflows": _single_unit([[1.0], [2.0]], [[1.0], [0.0]], steps=3,
                                                    optimizer={"lr": 1e10, "schedule": "exponential", "gamma": 1e300}),
}
EXTREMES["standardised inputs underflow"]["layers"][0]["weights"] = [[0.5], [0.5]]


def test_a_schedule_that_overflows_gives_an_infinite_learning_rate():
    """γ^k beyond the double range: lr = inf (a spreadsheet's #NUM!), not a Python OverflowError;
    1e300² overflows, 1e300 itself and lr·γ^k below 1.8e308 do not."""
    trace = build(EXTREMES["step schedule overflows"])
    assert trace.lr[0] == 0.1 and trace.lr[1] == 0.1 * 1e300 and math.isinf(trace.lr[2]) and math.isinf(trace.lr[3])
    assert np.isfinite(trace.W[0][2]).all() and not np.isfinite(trace.W[0][3]).all()
    trace = build(EXTREMES["lr times the schedule overflows"])
    assert trace.lr[0] == 1e10 and math.isinf(trace.lr[1])    # 1e10 · 1e300


def test_batchnorm_whose_variance_overflows_is_non_finite_like_the_sheet():
    """σ² = inf: IEEE gives x̂ = x/√inf = 0, a spreadsheet an error in every cell that reads σ²."""
    trace = build(EXTREMES["batchnorm variance overflows"])
    assert np.isinf(trace.norm["var"][0][0, 0])
    assert np.isnan(trace.norm["xhat"][0][0]).all()


@pytest.mark.libreoffice(workbooks=lambda label: build(EXTREMES[label]))
@pytest.mark.parametrize("label", list(EXTREMES))
def test_error_cells_fall_where_the_engine_is_not_finite_at_the_ends_of_the_range(recomputed, label):
    assert recomputed.report.ok, recomputed.report.summary()


def recorded(trace):
    """Every value of a trace: its kept arrays and the per-sample gradients it derives."""
    out = {}
    for field, array in trace.arrays.items():
        out[(field.name, field.layer, field.group)] = np.asarray(array)
    return out


@given(networks())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_blocked_sums_give_the_bits_of_the_loops_on_whole_runs(raw):
    """The engine with every sum in blocks of a few values (several blocks per sum) records the same
    bits as with the plain loops (one numpy call per term, the per-sample gradients summed by np.sum)."""
    loaded = scenario_module.from_dict(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers.base, "LOOP_TERMS", 10**9)
        patch.setattr(layers.base, "SUM_BLOCK_CELLS", 10**12)
        loops = recorded(engine.run(loaded))
        patch.setattr(layers.base, "LOOP_TERMS", 0)
        patch.setattr(layers.base, "SUM_BLOCK_CELLS", 5)
        blocks = recorded(engine.run(loaded))
    assert loops.keys() == blocks.keys()
    for key, expected in loops.items():
        np.testing.assert_array_equal(blocks[key].view(np.int64), expected.view(np.int64), err_msg=str(key))


# ---------------------------------------------------------------- the sum order

@given(networks())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_matmul_order_trains_like_the_in_order_sums(raw):
    """The same run in both sum orders: every recorded value agrees to 1e-9 relative, with an
    absolute floor of 1e-9 × the largest |value| of its quantity in the step (a value that
    cancels to ~0 differs by the rounding of its terms). in_order is the default and both record their order."""
    loaded = scenario_module.from_dict(raw)
    in_order, matmul = engine.run(loaded), engine.run(loaded, sums="matmul")
    assert (in_order.sum_order, matmul.sum_order) == ("in_order", "matmul")
    assume(in_order.first_nonfinite_step() is None and matmul.first_nonfinite_step() is None)
    kinks = [np.asarray(u) for u, layer in zip(in_order.u, loaded.layers)
             if u is not None and activations.get(layer.activation).piecewise]
    assume(all((np.abs(u[~np.isnan(u)]) > 1e-9).all() for u in kinks))   # no u at a kink, where a last bit picks the branch
    expected, found = recorded(in_order), recorded(matmul)
    for key, value in expected.items():
        steps = value.reshape(value.shape[0], -1) if value.ndim > 1 else value.reshape(-1, 1)
        scale = np.abs(np.nan_to_num(steps)).max(axis=1, keepdims=True) if steps.size else 0.0
        other = found[key].reshape(steps.shape)
        assert np.array_equal(np.isnan(steps), np.isnan(other)), key
        assert (np.abs(other - steps) <= 1e-9 * np.maximum(np.abs(steps), scale))[~np.isnan(steps)].all(), key


def test_an_unknown_sum_order_is_refused(base_raw):
    with pytest.raises(ValueError, match="unknown sum order 'blas'"):
        engine.run(scenario_module.from_dict(base_raw), sums="blas")


def test_a_window_keeps_the_sum_order_of_its_run(base_raw):
    trace = engine.run(scenario_module.from_dict(base_raw), sums="matmul")
    assert trace.window(1, 2).sum_order == "matmul"
