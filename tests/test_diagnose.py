"""Diagnosis: the write-up's two failures named, with the numbers and the responsible factor."""
import math

import numpy as np
import pytest

from tracer.explain import diagnose
from tracer.training import engine, scenario as scenario_module


def diagnosed(name, **kwargs):
    return diagnose.diagnose(engine.run(scenario_module.load(name, **kwargs)))


def test_vanishing_names_the_zero_sigma_prime_at_step_0():
    d = diagnosed("sigmoid-vanishing")
    assert d.first["vanishing"] == (0, 1)
    assert d.saturated[(0, 1)] == (12, 12)
    assert "⑤ σ'(u₀⁽¹⁾) = 0" in d.why and "far outside ±5" in d.why and "step 0" in d.why


def test_explosion_reports_alternating_growth_and_first_nonfinite_step():
    d = diagnosed("leaky-relu-explosion")
    value = next(s for s in d.swings if s.quantity == "value" and s.name == "W1[0,0]")
    gradient = next(s for s in d.swings if s.quantity == "gradient" and s.name == "W1[0,0]")
    assert 2.5 < value.exponent < 3.7 and 2.5 < gradient.exponent < 3.5
    assert np.all(np.diff(np.sign(gradient.values)) != 0)
    assert d.first["non-finite"] == (4, 1)
    text = diagnose.render(d)
    assert "alternates in sign while it grows" in text and "--window" in text
    a, b = d.window
    assert a <= 4 <= b


def test_thresholds_come_from_the_scenario():
    quiet = diagnosed("xor")
    assert not quiet.first
    strict = diagnosed("xor", overrides=["diagnosis.vanishing=1.0"])
    assert strict.first["vanishing"][0] == 0


def test_dead_relu_units_are_found():
    d = diagnosed("he-relu-deep")
    trace = d.trace
    for (layer, unit), step in d.dead.items():
        n = len(trace.samples(step))
        assert (trace.u[layer - 1][step, :n, unit] <= 0).all()


def test_cli_diagnose(invoke):
    result = invoke("diagnose", "sigmoid-vanishing")
    assert result.exit_code == 0 and "vanishing" in result.output and "Findings" in result.output


# ---------------------------------------------------------------- why did the net stop learning?

from tracer.training import templates  # noqa: E402


def _norm(trace, layer, step):
    """‖∇⁽ˡ⁾‖ at `step`, from the batch gradients with plain numpy."""
    return float(np.sqrt(np.sum(trace.grad_W[layer - 1][step] ** 2) + np.sum(trace.grad_b[layer - 1][step] ** 2)))


def _stalled(loss, window=5, still=1e-4, far=0.1):
    """The loss changed by less than `still` of itself at each of the last `window` steps while it is
    above `far` of its starting value (minimum 0 for squared errors and 0/1 targets)."""
    changes = np.abs(np.diff(loss[-window - 1:])) / np.abs(loss[-window - 1:-1])
    return bool(np.all(changes < still) and loss[-1] > far * loss[0])


def test_deep_sigmoid_names_the_plateau_the_depth_ratio_and_the_sigma_slopes():
    d = diagnosed("deep-sigmoid")
    trace = d.trace
    assert _stalled(trace.loss)
    assert "plateau" in d.stalls and "depth" in d.stalls
    text = "\n".join(d.findings)
    assert "No anomaly" not in text
    plateau = next(t for k, t in zip(d.kinds, d.findings) if k == "plateau")
    assert "since step 2" in plateau and f"{trace.loss[-1]:.6g}" in plateau
    ratio = _norm(trace, 1, 0) / _norm(trace, 6, 0)
    assert 1e-4 < ratio < 1e-2          # about 1e-3 of the output layer's
    depth = next(t for k, t in zip(d.kinds, d.findings) if k == "depth")
    assert f"{ratio:.2g} of the output layer 6's" in depth
    assert "five σ' ≤ 0.25" in depth
    slopes = [float(np.mean(trace.slope[l][0, :4], axis=0).max()) for l in range(5)]
    assert all(s <= 0.25 for s in slopes)


def test_sigmoid_vanishing_names_saturation():
    d = diagnosed("sigmoid-vanishing")
    trace = d.trace
    hidden = trace.a[0][0, :4]
    assert np.all(np.minimum(np.abs(hidden), np.abs(1 - hidden)) < 1e-2)   # σ within 0.01 of 0 or 1
    saturation = next(t for k, t in zip(d.kinds, d.findings) if k == "saturation")
    assert "Saturated σ units" in saturation and "layer 1, 100% of the unit-samples from step 0" in saturation


def test_leaky_relu_explosion_names_the_producer_of_the_first_nonfinite_value():
    d = diagnosed("leaky-relu-explosion")
    p = d.producer
    assert p.step == 4 and p.name.startswith("u2[0]") and "product" in p.operation
    (_, a), (_, w) = p.operands
    assert np.isfinite(a) and np.isfinite(w)
    with np.errstate(over="ignore"):
        assert np.isinf(np.float64(a) * np.float64(w))
    # nothing earlier in the run is non-finite: every step before is finite everywhere
    trace = d.trace
    for store in trace.u + trace.a + trace.grad_W + trace.delta:
        assert np.isfinite(store[:4]).all()
    assert any(k == "non-finite" and "The first non-finite value is u2[0]" in t for k, t in zip(d.kinds, d.findings))


def test_an_overflowing_schedule_is_named_as_the_producer():
    """lr·γ^k = 1e10·1e300 overflows at step 1, while the loss of step 1 is still finite: the
    schedule is named, not the update it feeds."""
    from tests.test_engine import EXTREMES
    from tests.conftest import build
    trace = build(EXTREMES["lr times the schedule overflows"])
    assert np.isfinite(trace.sample_loss[1]).all()
    p = diagnose.find_producer(trace)
    assert (p.step, p.name) == (1, "lr") and math.isinf(p.value) and "schedule" in p.operation
    assert dict(p.operands) == {"lr": 1e10, "γ": 1e300, "k": 1}


def test_xor_has_no_stall_finding():
    d = diagnosed("xor")
    assert not d.stalls and "progress" in d.kinds


def test_an_oscillating_loss_is_named():
    d = diagnosed("xor", overrides=["optimizer.lr=50.0"])
    flips = np.sign(np.diff(d.trace.loss))
    assert (flips[1:] * flips[:-1] < 0).sum() >= 3
    assert "oscillation" in d.stalls


def test_no_template_says_no_anomaly_while_stalled_and_remedies_say_what_improved():
    for name in templates.names():
        d = diagnosed(name)
        text = "\n".join(d.findings)
        if np.isfinite(d.trace.loss).all() and _stalled(d.trace.loss):
            assert "plateau" in d.stalls and "No anomaly" not in text, name
    for name in ("batchnorm-deep", "he-relu-deep", "normalized-inputs", "clipped-explosion", "small-lr", "xavier-tanh"):
        d = diagnosed(name)
        progress = next(t for k, t in zip(d.kinds, d.findings) if k == "progress")
        assert f"{d.trace.loss[-1]:.4g}" in progress and "lower" in progress


def test_update_ratio_and_units_at_their_floor():
    d = diagnosed("deep-sigmoid")
    trace = d.trace
    step = 10
    update = np.sqrt(np.sum(trace.update_W[0][step] ** 2) + np.sum(trace.update_b[0][step] ** 2))
    weight = np.sqrt(np.sum(trace.W[0][step] ** 2) + np.sum(trace.b[0][step] ** 2))
    assert d.series.update[step, 0] == pytest.approx(update / weight, rel=1e-12)
    assert "frozen" in d.stalls
    relu = diagnosed("he-relu-deep")
    for l, counts in relu.series.floor.items():
        u = relu.trace.u[l - 1][0, :4]
        assert counts[0] == float((u <= 0).all(axis=0).sum())


def test_diagnose_runs_through_layernorm(tmp_path, invoke):
    """`tracer diagnose` on a layernorm net; the dominant path crosses the layernorm along the
    diagonal (unit j of the layer below feeds x̂ⱼ), with γ on that edge."""
    from tests.conftest import build, write_toml
    from tests.test_layers import network
    raw = network("layernorm", steps=4, activation="sigmoid")
    trace = build(raw)
    units, slopes, weights = diagnose.dominant_path(trace, 1, 0)
    assert len(units) == 3 and units[0] == units[1]
    assert weights[0] == trace.W[1][0, 0, units[1]] and weights[1] == trace.W[2][0, units[1], units[2]]
    assert diagnose.diagnose(trace).findings
    result = invoke("diagnose", str(write_toml(tmp_path, scenario_module.dump_toml(raw))))
    assert result.exit_code == 0 and "Findings:" in result.output, result.output


def test_a_saturated_recurrent_layer_is_diagnosed_without_a_traceback():
    # found by the fuzz campaign (seed 1, case 51): an input of 1e11 saturates the tanh of
    # rnn-vanishing, and the saturation sentence read the recurrent layer's f(u) store, which is None
    import tomllib
    raw = tomllib.loads(templates.read("rnn-vanishing"))
    raw["data"]["inputs"][0][3][0] = 1e11
    trace = engine.run(scenario_module.from_dict(raw))
    findings = diagnose.diagnose(trace).findings
    assert any(text.startswith("Saturated tanh units") for text in findings), findings
