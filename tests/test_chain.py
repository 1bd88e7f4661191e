"""The chain rule: factors from the trace, their product equal to the engine's gradient."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tracer.explain import chain
from tracer.training import engine, scenario as scenario_module, templates
from tracer.errors import InputError
from tracer.training.trace import param_name
from tests.conftest import build
from tests.latex_check import check_latex, compile_latex
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


def _deep_net(depth, width, seed=0, loss="half_sse", outputs=1):
    """`depth` sigmoid layers of `width` units, then `outputs` outputs (as a scenario dict)."""
    rng = np.random.default_rng(seed)
    layers = [{"units": width, "activation": "sigmoid", "init": "normal", "std": 1.5} for _ in range(depth)]
    out = {"bce": "sigmoid", "softmax_ce": "softmax"}.get(loss, "identity")
    layers.append({"units": outputs, "activation": out, "init": "normal", "std": 1.5})
    targets = (np.eye(outputs)[rng.integers(0, outputs, 3)] if loss == "softmax_ce"
               else rng.integers(0, 2, (3, outputs)).astype(float))
    return {"seed": seed, "steps": 1, "data": {"inputs": rng.normal(0, 1, (3, 2)).tolist(), "targets": targets.tolist()},
            "layers": layers, "loss": {"name": loss}, "optimizer": {"name": "sgd", "lr": 0.1}}


def _brute_force_terms(trace, layer, j, step=0, slot=0):
    """|term| of every path from unit j of `layer` to an output, enumerated:
    Π_{l<m<L} f'(u⁽ᵐ⁾) · Π_{m>l} W_m · δ⁽ᴸ⁾ (the factors common to all paths left out)."""
    import itertools
    widths, L = trace.scenario.widths, trace.layers
    terms = {}
    for rest in itertools.product(*[range(widths[m]) for m in range(layer + 1, L + 1)]):
        path = (j,) + rest
        term = trace.delta[L - 1][step, slot, path[-1]]
        for m in range(layer + 1, L + 1):
            term *= trace.W[m - 1][step, path[m - layer - 1], path[m - layer]]
            if m < L:
                term *= trace.slope[m - 1][step, slot, path[m - layer]]
        terms[path] = abs(term)
    return terms


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 5), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**16),
       st.sampled_from(["half_sse", "bce", "softmax_ce"]))
def test_dominant_path_is_the_largest_term_of_the_brute_force_enumeration(depth, width, outputs, seed, loss):
    if loss == "softmax_ce":
        outputs = max(2, outputs)
    trace = build(_deep_net(depth, width, seed, loss, outputs))
    terms = _brute_force_terms(trace, 1, 0)
    explained = chain.explain(trace, "W1[0,0]", step=0)
    largest = max(terms.values())
    assert terms[tuple(explained.path)] == pytest.approx(largest, rel=1e-12, abs=0)
    # ties go to the lowest units: no path before it in enumeration order is as large
    assert all(value < largest * (1 - 1e-12) for path, value in terms.items() if path < tuple(explained.path))


def test_chain_of_a_30_layer_net_returns(tmp_path):
    """8³⁰ paths: enumerating them never ends; the dynamic programme takes O(depth·width²)."""
    import subprocess
    import sys
    from tests.conftest import write_toml
    path = write_toml(tmp_path, scenario_module.dump_toml(_deep_net(30, 8)))
    done = subprocess.run([sys.executable, "-m", "tracer", "chain", str(path), "--param", "W1[0,0]"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "31 local slopes" in done.stdout or "30 local slopes" in done.stdout


@pytest.mark.parametrize("template", templates.names())
def test_latex_of_every_template_is_valid_latex(template, tmp_path):
    """`chain --latex` for a weight and a bias of every layer (the first, one in the middle, the last
    entries) at two steps: ASCII LaTeX that parses (and compiles, where pdflatex is installed)."""
    trace = run(template)
    s = trace.scenario
    texts = []
    for layer in range(1, len(s.layers) + 1):
        shape = trace.W[layer - 1].shape[1:]
        for kind, index in (("W", (0, 0)), ("W", (shape[0] - 1, shape[1] - 1)), ("b", (shape[1] // 2,))):
            for step in sorted({0, trace.steps - 1}):
                explained = chain.explain(trace, param_name(s, kind, layer, index), step=step, latex=True)
                text = chain.render(explained, latex=True)
                check_latex(text)
                texts.append(text)
    assert all("W_{" in t or "\\gamma_{" in t or "\\beta_{" in t or "b_{" in t for t in texts)
    compiled = compile_latex("\n\n\\newpage\n\n".join(texts), tmp_path)
    assert compiled is None or compiled[0], compiled


def _layernorm_trace(steps=3):
    from tests.test_layers import network
    return build(network("layernorm", steps=steps, activation="sigmoid"))


def test_chain_rule_through_layernorm_multiplies_to_the_engine_gradient():
    """γ, β of the layernorm layer, W and b below it (the error passes down through the layernorm),
    and W above it: the product of the printed factors is the engine's per-sample gradient."""
    trace = _layernorm_trace()
    for name in ("gamma2[0]", "gamma2[2]", "beta2[1]", "W1[0,0]", "W1[2,1]", "b1[2]", "W3[1,0]", "b3[0]"):
        for step in range(trace.steps):
            for sample in trace.samples(step).tolist():
                explained = chain.explain(trace, name, step=step, sample=sample)
                assert explained.product == pytest.approx(explained.engine, rel=1e-12, abs=1e-300), (name, step)
    gamma = chain.explain(trace, "gamma2[1]", step=1)
    assert gamma.factors[0].label == "②" and "x̂" in str(gamma.factors[0].symbol)
    assert gamma.factors[0].value == trace.values(("xhat", 2, 1), "sample", 1, 0, trace.samples(1)[0])
    assert not chain.explain(trace, "W1[0,0]", step=0).path     # the path view is for plain dense nets


def test_layernorm_error_down_by_sympy_agrees_with_the_engine():
    """The symbolic error passed down through the layernorm, (dx̂ⱼ − m1 − x̂ⱼ·m2)/√(σ² + ε), evaluated
    with the trace's x̂, dx̂ and per-sample statistics, and sympy's own derivative of the layernorm's
    definition Σₖ δₖ·(γₖ·(xₖ − μ)/√(σ² + ε) + βₖ) by x_j (δ = ∂E/∂u held fixed), both give the
    engine's e⁽¹⁾ⱼ."""
    import sympy as sp
    trace = _layernorm_trace()
    names, eps = chain.Names(), trace.scenario.layers[1].eps
    n = trace.scenario.widths[1]
    xs = sp.symbols(f"x0:{n}", real=True)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / n
    for step in (0, 2):
        for slot, sample in enumerate(trace.samples(step).tolist()):
            gamma, beta = trace.W[1][step, 0], trace.b[1][step]
            delta = trace.delta[1][step, slot]
            value = lambda key: float(trace.values(key, "sample", step, slot, sample))  # noqa: E731
            energy = sum(float(delta[k]) * (float(gamma[k]) * (xs[k] - mean) / sp.sqrt(var + eps) + float(beta[k]))
                         for k in range(n))
            point = {x: float(v) for x, v in zip(xs, trace.a[0][step, slot])}
            for j in range(n):
                engine_error = float(trace.error[0][step, slot, j])
                explained = chain.explain(trace, f"W1[0,{j}]", step=step, sample=sample)
                symbol, expression = explained.definitions[0]
                assert symbol == names.error(1, j)
                values = {names.unit("dx̂", 2, j): value(("dxhat", 2, j)), names.unit("x̂", 2, j): value(("xhat", 2, j)),
                          names.layer_scalar("m1", 2): value(("ln_m1", 2)), names.layer_scalar("m2", 2): value(("ln_m2", 2)),
                          names.layer_scalar("σ²", 2): value(("ln_var", 2)), names.plain("ε", ""): eps}
                assert expression.free_symbols == set(values)
                assert float(expression.subs(values)) == pytest.approx(engine_error, rel=1e-12, abs=1e-15)
                derivative = float(sp.diff(energy, xs[j]).subs(point))
                assert derivative == pytest.approx(engine_error, rel=1e-9, abs=1e-12)


def test_chain_cli_through_layernorm(invoke, tmp_path):
    from tests.conftest import write_toml
    from tests.test_layers import network
    path = write_toml(tmp_path, scenario_module.dump_toml(network("layernorm", activation="sigmoid")))
    for parameter in ("gamma2[0]", "W1[0,0]"):
        result = invoke("chain", str(path), "--param", parameter, "--step", "1")
        assert result.exit_code == 0 and "(equal)" in result.output, result.output
        latex = invoke("chain", str(path), "--param", parameter, "--latex")
        assert latex.exit_code == 0
        check_latex(latex.output)
        compiled = compile_latex(latex.output, tmp_path)
        assert compiled is None or compiled[0], compiled
    assert "error from the layernorm layer 2 above" in invoke("chain", str(path), "--param", "W1[0,0]").output
    refused = invoke("chain", str(path), "--param", "W2[0,0]")
    assert refused.exit_code == 2 and "layernorm layer: its parameters are gamma2[j] and beta2[j]" in refused.output
