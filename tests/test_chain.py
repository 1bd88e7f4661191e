"""The chain rule: factors from the trace, their product equal to the engine's gradient."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from tracer import chain, engine, scenario as scenario_module
from tracer.errors import InputError
from tracer.trace import param_name
from tests.conftest import build
from tests.test_engine import networks


def run(name):
    return engine.run(scenario_module.load(name))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_product_of_factors_equals_engine_gradient(raw):
    trace = build(raw)
    widths = trace.scenario.widths
    for layer in range(1, len(widths)):
        last = 0 if trace.scenario.layers[layer - 1].kind == "batchnorm" else widths[layer - 1] - 1
        for name in (param_name(trace.scenario, "W", layer, (last, 0)), param_name(trace.scenario, "b", layer, (widths[layer] - 1,))):
            explained = chain.explain(trace, name, step=1)
            if np.isfinite(explained.engine):
                assert explained.product == pytest.approx(explained.engine, rel=1e-12, abs=1e-300)


def test_vanishing_zero_factor_and_zero_product():
    explained = chain.explain(run("sigmoid-vanishing"), "W1[0,0]", step=0)
    labels = {f.label: f for f in explained.factors}
    assert labels["⑤"].value == 0.0 and labels["②"].value == 379.0
    assert explained.product == 0.0 == explained.engine
    text = chain.render(explained)
    assert "exactly 0 because u is far outside ±5" in text and "equal" in text


def test_deep_path_has_six_slopes_matching_the_trace():
    trace = run("deep-sigmoid")
    explained = chain.explain(trace, "W1[0,0]", step=0)
    assert len(explained.path_slopes) == 6
    for layer, (unit, (_, value)) in enumerate(zip(explained.path, explained.path_slopes), start=1):
        assert value == trace.slope[layer - 1][0, 0, unit]
    assert all(v <= 0.25 for _, v in explained.path_slopes[:5])
    text = chain.render(explained)
    assert "6 local slopes" in text and f"{np.prod([v for _, v in explained.path_slopes]):.6g}" in text


def test_sum_over_all_paths_is_the_gradient():
    trace = run("deep-sigmoid")
    widths = trace.scenario.widths
    import itertools
    total = 0.0
    for rest in itertools.product(*[range(w) for w in widths[2:]]):
        total += chain.explain(trace, "W1[0,0]", step=0, path=[0] + list(rest)).path_term
    assert total == pytest.approx(chain.explain(trace, "W1[0,0]", step=0).engine, rel=1e-10)


def test_latex_and_cli(invoke):
    result = invoke("chain", "xor", "--param", "W1[1,0]", "--latex")
    assert result.exit_code == 0 and "\\sigma'" in result.output and "\\frac" in result.output
    result = invoke("chain", "xor", "--param", "W1[5,0]")
    assert result.exit_code == 2 and "W1 has shape 2×2" in result.output
    result = invoke("chain", "leaky-relu-explosion", "--param", "W1[0,0]", "--step", "3")
    assert result.exit_code == 0 and "equal" in result.output


def test_bad_parameter_names():
    for text in ("W1[0]", "V1[0,0]", "b1[0,0]", "W0[0,0]"):
        with pytest.raises(InputError):
            chain.parse_parameter(text, [2, 2, 1])
