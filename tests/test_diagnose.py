"""Diagnosis: the write-up's two failures named, with the numbers and the responsible factor."""
import numpy as np

from tracer import diagnose, engine, scenario as scenario_module


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
