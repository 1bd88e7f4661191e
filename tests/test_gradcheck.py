"""tracer/explain/gradcheck.py: the stacked evaluation of E(θ ± h) against the reference path (a full
engine.forward_backward pass per loss) on nets of every layer kind, the sample of parameters, and
gradcheck on the wide nets (wide-784-32-10, digits-64-32-10) on a sample, a planted wrong gradient
caught. The all-parameter runs of the wide nets: benchmarks/gradcheck.py."""
import copy

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tracer
from tracer.training import engine, scenario as scenario_module, templates
from tracer.explain import gradcheck
from tracer import layers
from tracer.errors import InputError
from tests.conftest import build
from tests.test_engine import BATCHNORM_VARIANCE_NEAR_EPS
from tests.test_layers import network
from tests.test_recurrent import problem, raw_scenario


def _relu_residual():
    """dense relu → dense relu with a residual skip → batchnorm relu → dense softmax: kinks at u = 0,
    a layer whose forward reads its input again, a batch-coupled layer above dense ones."""
    rng = np.random.default_rng(4)
    inputs = rng.normal(size=(6, 3))
    targets = np.eye(2)[rng.integers(0, 2, size=6)]
    return {"seed": 3, "steps": 2, "data": {"inputs": inputs.tolist(), "targets": targets.tolist()},
            "layers": [{"units": 4, "activation": "relu", "init": "he_uniform", "bias_init": "normal", "bias_std": 0.3},
                       {"units": 4, "activation": "relu", "residual": True, "init": "he_uniform"},
                       {"kind": "batchnorm", "activation": "leaky_relu"},
                       {"units": 2, "activation": "softmax", "init": "xavier_uniform"}],
            "loss": {"name": "softmax_ce", "reduction": "mean"}, "optimizer": {"name": "sgd", "lr": 0.5},
            "training": {"batch": 3}}


def _wide_dense():
    """A dense layer of fan-in 12 (above the loop of LOOP_TERMS terms: the sum in blocks) under a
    layernorm and a sigmoid output with bce."""
    rng = np.random.default_rng(8)
    return {"seed": 5, "steps": 2, "data": {"inputs": rng.normal(size=(5, 12)).tolist(),
                                            "targets": rng.integers(0, 2, size=(5, 2)).astype(float).tolist()},
            "layers": [{"units": 6, "activation": "tanh", "init": "xavier_uniform"}, {"kind": "layernorm", "activation": "elu"},
                       {"units": 2, "activation": "sigmoid", "init": "xavier_uniform"}],
            "loss": {"name": "bce", "reduction": "sum"}, "optimizer": {"name": "sgd", "lr": 0.1}, "training": {"batch": "full"}}


def _recurrent(cell, activation, per_time=False, stacked=False):
    x, t, w = problem(cell, 7, samples=2, time=3, units=2, per_time=per_time)
    raw = raw_scenario(cell, activation, x, t, w, "sgd", steps=2)
    if per_time:
        raw["layers"].insert(1, {"units": 2, "activation": "relu", "init": "xavier_uniform", "bias_init": "normal"})
    if stacked:
        raw["layers"].insert(1, {"kind": "gru", "units": 2})
    return raw


def _kinks():
    """The relu net with a sample of zeros and first-layer biases of 1e-5: that sample's u is b, and
    b ± h crosses u = 0."""
    raw = _relu_residual()
    raw["data"]["inputs"][0] = [0.0, 0.0, 0.0]
    raw["layers"][0] = dict(raw["layers"][0], bias_init="constant", bias_value=1e-5)
    del raw["layers"][0]["bias_std"]
    return raw


def _unresolved():
    """tests/test_engine.py's batchnorm with σ² = eps: E turns over within ~1e-6 of W1[0,0]."""
    return {"steps": 1, "data": {"inputs": [[0.0], [1e4]], "targets": [[0.3], [-0.2]]},
            "layers": [{"units": 1, "activation": "identity", "init": "explicit", "weights": [[2 * 10 ** -2.5 / 1e4]],
                        "bias": [0.0]},
                       {"kind": "batchnorm", "activation": "identity"},
                       {"units": 1, "activation": "tanh", "init": "explicit", "weights": [[0.7]], "bias": [0.1]}],
            "optimizer": {"lr": 0.1}}


NETS = {
    "relu-kinks": _kinks,
    "batchnorm-variance-near-eps-halvings": lambda: copy.deepcopy(BATCHNORM_VARIANCE_NEAR_EPS),
    "batchnorm-unresolved": _unresolved,
    "dense-relu-residual-batchnorm-softmax": _relu_residual,
    "dense-fan-in-12-layernorm-bce": _wide_dense,
    "batchnorm": lambda: network("batchnorm", steps=2, activation="relu"),
    "layernorm": lambda: network("layernorm", steps=2),
    "rnn-relu": lambda: _recurrent("rnn", "relu"),
    "lstm-per-time-dense-relu": lambda: _recurrent("lstm", None, per_time=True),
    "rnn-gru-stacked": lambda: _recurrent("rnn", "tanh", stacked=True),
    "gru": lambda: _recurrent("gru", None),
}


def _names(report):
    return [(c.step, c.name) for c in report.checks]


@pytest.mark.parametrize("name", NETS)
def test_stacked_evaluation_gives_the_derivatives_of_the_reference_path(name):
    """Every parameter at step 0: the same checks, kinks and unresolved parameters, and the same
    numeric derivatives to 1e-12 (relative) as one full forward_backward pass per E(θ ± h)."""
    trace = build(NETS[name]())
    fast, slow = gradcheck.check(trace, (0,)), gradcheck.check(trace, (0,), reference=True)
    assert _names(fast) == _names(slow) and fast.checks
    assert fast.skipped == slow.skipped and fast.unresolved == slow.unresolved and fast.nonfinite == slow.nonfinite
    for a, b in zip(fast.checks, slow.checks):
        assert abs(a.numeric - b.numeric) <= 1e-12 * max(abs(a.numeric), abs(b.numeric), 1e-300), (a, b)
    assert fast.worst.error < 1e-6, fast.worst
    assert bool(fast.skipped) == (name == "relu-kinks") and bool(fast.unresolved) == (name == "batchnorm-unresolved")


def test_the_stacked_pass_is_the_engines_loss_bit_for_bit_at_every_kind():
    """The unperturbed pass of the stacked evaluation (forward only, from layer 1) has the engine's E."""
    for make in NETS.values():
        trace = build(make())
        params = trace.parameters(0)
        ids = trace.samples(0)
        step = gradcheck._Step(trace.scenario, params, trace.scenario.inputs[ids], trace.scenario.targets[ids])
        assert step.loss == trace.loss[0]


def test_a_net_whose_step_is_non_finite_is_left_out_as_before():
    trace = build(network("dense", steps=2))
    for g in trace.grad_W:
        g[1] = np.nan
    report = gradcheck.check(trace, steps=(0, 1))
    assert report.nonfinite == [1] and report.checks


@pytest.mark.parametrize("name", templates.LARGE)
def test_gradcheck_passes_on_the_wide_nets_on_a_sample(name):
    """A reproducible sample of 600 parameters (every bias, both layers) at the first, middle and
    last steps, in the sum order of the template's workbook (tracer.run: matmul for the matrix
    layout of wide-784-32-10): every gradient agrees to 1e-6."""
    trace = tracer.run(scenario_module.load(name))
    steps = sorted({0, trace.steps // 2, trace.steps - 1})
    chosen = gradcheck.sample_parameters(trace, 600, seed=0)
    report = gradcheck.check(trace, steps, sample=600, seed=0)
    seen = {name for _, name in _names(report)} | {name for _, name in report.skipped + report.unresolved}
    units = [layer.units for layer in trace.scenario.layers]
    assert {f"b{l + 1}[{j}]" for l, n in enumerate(units) for j in range(n)} <= seen
    assert {c.name[:2] for c in report.checks} == {"W1", "W2", "b1", "b2"}
    assert len(seen) == len(chosen) == 600
    assert len(report.checks) >= 0.9 * 600 * len(steps) and not report.unresolved
    assert report.worst.error < 1e-6, report.worst


@pytest.mark.parametrize("name", templates.LARGE)
def test_stacked_evaluation_in_the_matmul_order_agrees_with_the_reference_path(name):
    """Sums as numpy matrix products (the matrix layout's order): BLAS blocks a product of K columns
    or K·B rows its own way, so E(θ ± h) may differ from a full pass's in the last bits; the
    derivatives agree to the round-off the steps allow for (~1e-12·|E| / h relative to the floor)."""
    trace = engine.run(scenario_module.load(name), sums="matmul")
    fast = gradcheck.check(trace, (0,), sample=150, seed=3)
    slow = gradcheck.check(trace, (0,), sample=150, seed=3, reference=True)
    assert _names(fast) == _names(slow) and fast.skipped == slow.skipped and fast.unresolved == slow.unresolved
    floor = 1e-3 * trace.loss[0]
    for a, b in zip(fast.checks, slow.checks):
        assert abs(a.numeric - b.numeric) <= 2e-8 * max(abs(a.numeric), abs(b.numeric), floor), (a, b)
    assert fast.worst.error < 1e-6


@pytest.mark.parametrize("name", templates.LARGE)
def test_a_planted_wrong_gradient_is_caught_on_the_wide_nets(name):
    """The largest sampled W1 gradient of step 0 made 0.1 % too large: the check names it."""
    trace = tracer.run(scenario_module.load(name))
    chosen = gradcheck.sample_parameters(trace, 200, seed=2)
    grad = trace.grad_W[0][0]
    flat = max((f for l, which, f in chosen if (l, which) == (0, "W")), key=lambda f: abs(grad.reshape(-1)[f]))
    i, j = np.unravel_index(flat, grad.shape)
    grad[i, j] *= 1.001
    worst = gradcheck.check(trace, (0,), sample=200, seed=2).worst
    assert worst.name == f"W1[{i},{j}]" and worst.error > 1e-4, worst


def test_a_sample_holds_every_bias_and_a_weight_of_every_array_reproducibly():
    trace = build(_recurrent("rnn", "tanh", stacked=True))      # W1, Wh1, b1, bh1, W2, Wh2, b2, bh2, W3, b3
    stored = trace.parameters(0)
    total = sum(a.size for arrays in stored.values() for a in arrays if a is not None)
    biases = {(l, which) for l, layer in enumerate(trace.scenario.layers) for which in layers.of(layer).bias_params}
    required = sum(stored[which][l].size for l, which in biases) + 5   # and one of W1, Wh1, W2, Wh2, W3
    chosen = gradcheck.sample_parameters(trace, required + 1, seed=5)
    assert len(chosen) == required + 1
    assert chosen == gradcheck.sample_parameters(trace, required + 1, seed=5)
    assert {(l, which, f) for l, which in biases for f in range(stored[which][l].size)} <= chosen
    arrays = {(l, which) for l, layer in enumerate(trace.scenario.layers) for which in layers.of(layer).stored_params}
    assert {(l, which) for l, which, _ in chosen} == arrays
    assert gradcheck.sample_parameters(trace, total + 5) == {(l, w, f) for l, w in arrays for f in range(stored[w][l].size)}
    with pytest.raises(InputError, match=f"{required} parameters here"):
        gradcheck.sample_parameters(trace, required - 1)


@settings(max_examples=15, deadline=None)
@given(count=st.integers(10, 28), seed=st.integers(0, 2**32 - 1))
def test_a_sample_has_the_size_asked_and_its_seed_decides_it(count, seed):
    """A 3-3-3-1 net (28 parameters, 7 biases, 3 weight arrays): any count from 10 up is checked."""
    raw = network("dense", steps=1)
    trace = build(raw)
    chosen = gradcheck.sample_parameters(trace, count, seed)
    assert len(chosen) == count == len(gradcheck.sample_parameters(trace, count, seed))
    assert gradcheck.sample_parameters(trace, count, seed) == chosen
    report = gradcheck.check(trace, (0,), sample=count, seed=seed)
    assert len(report.checks) + len(report.skipped) + len(report.unresolved) == count


def test_different_seeds_draw_different_samples():
    trace = build(network("dense", steps=1))
    drawn = {tuple(gradcheck.sample_parameters(trace, 12, seed)) for seed in range(8)}
    assert len(drawn) > 1


def test_progress_reaches_the_total():
    calls = []
    trace = build(copy.deepcopy(_wide_dense()))
    gradcheck.check(trace, steps=(0, 1), progress=lambda done, total: calls.append((done, total)))
    total = 2 * sum(a.size for arrays in trace.parameters(0).values() for a in arrays if a is not None)
    assert calls[-1] == (total, total) and all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
