"""The analysis through time of recurrent layers (tracer/layers/recurrent/through_time.py, chain.py): `tracer chain` of W, Wh,
b, bh as a sum over time steps, `tracer diagnose`'s error through time, `tracer check` with ~k.

Independent numbers: the engine's gradients (themselves held to torch in tests/test_recurrent.py),
sympy's own evaluation of the printed expression, and 1.1¹⁰⁰ computed by hand with Fraction."""
from fractions import Fraction
import math
import re

import numpy as np
import pytest

from tracer.explain import chain, check, diagnose, through_time
from tracer.training import engine, scenario as scenario_module
from tests.latex_check import check_latex

T_LONG = 101     # time steps t = 0 … 100: 100 steps of recurrence from h₀ to h₁₀₀, as in the articles


def _scalar_linear(steps=1, lr=1e-4, xs=None, recurrent=1.1, activation="identity", target=0.0):
    """The articles' cell: h_t = 1.1·h_{t−1} + x_t (identity), x₀ = 1 then 0 for 100 time steps, a dense
    identity output reading h₁₀₀: ∂h₁₀₀/∂h₀ = 1.1¹⁰⁰."""
    xs = [1.0] + [0.0] * (T_LONG - 1) if xs is None else xs
    inputs = "[[" + ", ".join(f"[{x}]" for x in xs) + "]]"
    return f"""
name = "scalar-linear"
steps = {steps}
[data]
inputs = {inputs}
targets = [[{target}]]
[[layers]]
kind = "rnn"
units = 1
activation = "{activation}"
init = "explicit"
weights = [[1.0]]
recurrent_weights = [[{recurrent}]]
bias = [0.0]
[[layers]]
units = 1
activation = "identity"
init = "explicit"
weights = [[1.0]]
bias = [0.0]
[loss]
name = "half_sse"
reduction = "sum"
[optimizer]
name = "sgd"
lr = {lr}
"""


SEQUENCES = "[[[0.5, -0.2], [0.1, 0.4], [0.9, 0.3], [-0.4, 0.2]], [[-0.3, 0.8], [0.2, -0.5], [0.6, 0.1], [0.3, 0.3]]]"


def _small(kind, units=2, activation="tanh", recurrent_scale=0.6):
    """Two sequences of 4 time steps, 2 features; a recurrent layer of `units` units, a dense output."""
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    rng = np.random.default_rng(5)
    columns = gates * units
    matrix = lambda rows, scale: "[" + ", ".join("[" + ", ".join(f"{v:.3f}" for v in row) + "]"  # noqa: E731
                                                  for row in rng.normal(scale=scale, size=(rows, columns))) + "]"
    vector = lambda: "[" + ", ".join(f"{v:.3f}" for v in rng.normal(scale=0.3, size=columns)) + "]"  # noqa: E731
    act = f'activation = "{activation}"\n' if kind == "rnn" else ""
    return f"""
name = "small-{kind}"
steps = 2
[data]
inputs = {SEQUENCES}
targets = [[1.0], [0.0]]
[[layers]]
kind = "{kind}"
units = {units}
{act}init = "explicit"
weights = {matrix(2, 0.7)}
recurrent_weights = {matrix(units, recurrent_scale)}
bias = {vector()}
recurrent_bias = {vector()}
[[layers]]
units = 1
activation = "identity"
init = "explicit"
weights = [{", ".join(["[0.7]", "[-0.6]", "[0.4]"][:units])}]
bias = [0.1]
[loss]
name = "half_sse"
reduction = "sum"
[optimizer]
name = "sgd"
lr = 0.1
"""


def _run(text):
    return engine.run(scenario_module.loads(text))


@pytest.fixture(scope="module")
def linear():
    return _run(_scalar_linear())


def _printed_contributions(text):
    """The per-time-step contributions as printed: the last column of the table's rows."""
    rows = re.findall(r"^\s+(\d+)\s.*\s(\S+)$", text.split("with the numbers of the trace")[1], flags=re.M)
    return [(int(t), float(value)) for t, value in rows]


# ---------------------------------------------------------------- tracer chain

def test_scalar_linear_cell_prints_1_1_to_the_100(linear):
    explained = chain.explain(linear, "Wh1[0,0]", step=0, evaluate=True)
    text = chain.render(explained)
    by_hand = Fraction(11, 10) ** 100                          # 1.1¹⁰⁰ exactly, not from the engine
    assert float(by_hand) == pytest.approx(13780.61234, abs=1e-5)
    assert explained.constant == 1.1
    assert explained.power == pytest.approx(float(by_hand), rel=1e-13)
    assert "∂h_100/∂h_0 = (1.1)^100 = 13780.61234" in text
    # the error reaching time step 0 is 1.1¹⁰⁰ times the error at the last time step (identity: f' = 1)
    e_last = explained.rows[-1]["error"]
    assert e_last == pytest.approx(float(by_hand), rel=1e-13)          # y − t = h₁₀₀ = 1.1¹⁰⁰ (target 0)
    assert explained.rows[0]["error"] == pytest.approx(float(by_hand) * e_last, rel=1e-12)


def test_printed_contributions_sum_to_the_engines_gradient(linear):
    for name in ("Wh1[0,0]", "W1[0,0]", "b1[0]", "bh1[0]"):
        explained = chain.explain(linear, name, step=0)
        printed = _printed_contributions(chain.render(explained))
        assert [t for t, _ in printed] == list(range(T_LONG))
        assert math.fsum(v for _, v in printed) == pytest.approx(explained.engine, rel=1e-12)
        # each contribution is the engine's own per-time-step gradient (grad_Wh with its time)
        assert np.array_equal([v for _, v in printed], explained.engine_times)


def test_sympy_evaluates_the_printed_expression_to_the_engines_gradient(linear):
    for name in ("Wh1[0,0]", "W1[0,0]", "bh1[0]"):
        explained = chain.explain(linear, name, step=0, evaluate=True)
        assert explained.sympy_total == pytest.approx(explained.engine, rel=1e-12)
        assert "evaluated by sympy" in chain.render(explained)


def test_the_scalar_sum_is_the_closed_form_by_hand(linear):
    """h_{t−1} = 1.1^(t−1) (t ≥ 1), e_t = 1.1^(100−t)·e₁₀₀: every contribution h_{t−1}·e_t = 1.1⁹⁹·e₁₀₀, so
    ∂E/∂Wh = 100·1.1⁹⁹·e₁₀₀ with e₁₀₀ = y − t = h₁₀₀ = 1.1¹⁰⁰ (dense identity weight 1)."""
    explained = chain.explain(linear, "Wh1[0,0]", step=0)
    e_last = Fraction(11, 10) ** 100
    assert explained.engine == pytest.approx(float(100 * Fraction(11, 10) ** 99 * e_last), rel=1e-12)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_every_parameter_of_a_small_cell(kind):
    trace = _run(_small(kind))
    U, gates = 2, {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    names = [f"W1[1,{gates * U - 1}]", f"Wh1[1,{gates * U - 1}]", f"Wh1[0,{U - 1}]", f"b1[{gates * U - 1}]", "bh1[0]"]
    for step in (0, 1):
        for sample in (0, 1):
            for name in names:
                explained = chain.explain(trace, name, step=step, sample=sample, evaluate=True)
                printed = _printed_contributions(chain.render(explained))
                assert math.fsum(v for _, v in printed) == pytest.approx(explained.engine, rel=1e-12, abs=1e-15)
                assert explained.sympy_total == pytest.approx(explained.engine, rel=1e-12, abs=1e-15)
                assert np.array_equal([r["contribution"] for r in explained.rows], explained.engine_times)


def test_a_tanh_cell_shows_a_varying_factor_per_time_step():
    trace = _run(_small("rnn", units=1, recurrent_scale=1.5))
    explained = chain.explain(trace, "Wh1[0,0]", step=0)
    assert explained.scalar and explained.constant is None
    Wh = trace.Wh[0][0, 0, 0]
    u = through_time.time_values(trace, "u", 1)[0, 0, :, 0]
    assert explained.power == pytest.approx(np.prod([Wh * (1 - math.tanh(x) ** 2) for x in u[1:]]), rel=1e-12)
    assert "varies from" in chain.render(explained)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_latex_of_recurrent_parameters_is_valid(kind, linear):
    trace = linear if kind == "rnn" else _run(_small(kind))
    for name in ("Wh1[0,0]", "W1[0,0]", "b1[0]", "bh1[0]"):
        check_latex(chain.render(chain.explain(trace, name, step=0, latex=True), latex=True))


def test_recurrent_parameter_names_are_checked(invoke, tmp_path):
    from tests.conftest import write_toml
    path = write_toml(tmp_path, _small("lstm"))
    for text, fragment in (("Wh1[2,0]", "Wh1 has shape 2×8"), ("bh1[8]", "bh1 has shape 8"),
                           ("Wh1[0]", "needs two indices"), ("gamma1[0]", "its parameters are W1[i,j], Wh1[i,j]")):
        result = invoke("chain", str(path), "--param", text)
        assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_chain_cli_for_a_recurrent_weight(invoke, tmp_path):
    from tests.conftest import write_toml
    path = write_toml(tmp_path, _scalar_linear())
    result = invoke("chain", str(path), "--param", "Wh1[0,0]")
    assert result.exit_code == 0, result.output
    assert "1.1 at every time step" in result.output and "(equal)" in result.output


# ---------------------------------------------------------------- tracer diagnose

def test_diagnose_finds_exploding_through_time(linear):
    d = diagnose.diagnose(linear)
    finding = d.time[1]
    # ‖e_t‖/‖e₁₀₀‖ = 1.1^(100−t): beyond 1e3 first where 1.1^k > 1000, k = 73 steps back (by hand: 1.1⁷² < 1000)
    assert Fraction(11, 10) ** 72 < 1000 < Fraction(11, 10) ** 73
    assert (finding.kind, finding.time) == ("exploding", T_LONG - 1 - 73)
    assert finding.factor == pytest.approx(1.1, rel=1e-12)
    assert finding.norms[0] / finding.norms[-1] == pytest.approx(float(Fraction(11, 10) ** 100), rel=1e-12)
    sentence = next(text for kind, text in zip(d.kinds, d.findings) if kind == "time")
    assert sentence.startswith("Exploding through time") and "time step 27" in sentence and "1.1" in sentence
    text = diagnose.render(d)
    assert "‖∂E/∂h_t‖ of layer 1 (rnn)" in text and "first beyond the threshold" in text


def test_diagnose_finds_vanishing_through_time():
    """tanh with a small recurrent weight: ‖e_t‖ shrinks by about Wh·f'(u) per time step."""
    trace = _run(_scalar_linear(xs=[0.5] * 30, recurrent=0.4, activation="tanh", target=1.0))
    finding = diagnose.diagnose(trace).time[1]
    assert finding.kind == "vanishing"
    ratio = finding.norms / finding.norms[-1]
    assert ratio[finding.time] < 1e-7 <= ratio[finding.time + 1]
    # the ratio is the product of the factors Wh·f'(u_s) from time step t+1 on, computed here from u
    u = [float(v) for v in through_time.time_values(trace, "u", 1)[0, 0, :, 0]]
    by_hand = np.prod([0.4 * (1 - math.tanh(x) ** 2) for x in u[finding.time + 1:]])
    assert ratio[finding.time] == pytest.approx(by_hand, rel=1e-9)


def test_diagnose_of_a_non_finite_recurrent_run_names_the_time_step():
    trace = _run(_scalar_linear(steps=2, lr=1e-4))
    d = diagnose.diagnose(trace)
    assert d.producer is not None and "~" in d.producer.name and d.producer.name.startswith("u1[0]~")


# ---------------------------------------------------------------- tracer check with ~k

@pytest.fixture(scope="module")
def small_rnn():
    return _run(_small("rnn", units=2))


def _check(trace, lines, tmp_path):
    path = tmp_path / "hand.csv"
    path.write_text("name,value\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return check.check(trace, check.read_hand(path, trace))


def _engine(trace, quantity, l, index, step, sample, time=None):
    return check.engine_value(trace, check.Key(quantity, l, index, step, sample, time))


def test_every_rule_through_time_gives_the_engines_value(small_rnn):
    """Each rule recomputed from the engine's own inputs equals the engine's value bit for bit."""
    local = check.Local(small_rnn)
    T = 4
    keys = []
    for step in (0, 1):
        for sample in (0, 1):
            for k in range(T):
                for j in range(2):
                    keys += [check.Key(q, 1, (j,), step, sample, k) for q in ("u", "h", "slope", "e", "delta")]
                    keys += [check.Key("grad_b", 1, (j,), step, sample, k), check.Key("grad_bh", 1, (j,), step, sample, k)]
                    keys += [check.Key(q, 1, (i, j), step, sample, k) for q in ("grad_W", "grad_Wh") for i in range(2)]
            keys += [check.Key(q, 1, (1, 0), step, sample) for q in ("grad_W", "grad_Wh")]
            keys += [check.Key("a", 1, (j,), step, sample) for j in range(2)]
        keys += [check.Key(q, 1, (0, 1), step, None) for q in ("grad_Wh", "update_Wh")]
        keys += [check.Key("Wh", 1, (1, 1), step + 1, None)]
    for key in keys:
        assert local(key, check._Values(small_rnn, {}, local=local)) == check.engine_value(small_rnn, key), key


def test_hand_names_with_a_time_step(small_rnn, tmp_path):
    key = check.parse_name("h1[0]~3@1#1", small_rnn)
    assert (key.quantity, key.layer, key.index, key.time, key.step, key.sample) == ("h", 1, (0,), 3, 1, 1)
    assert key.label() == "h1[0]~3@1#1"
    assert check.parse_name("grad Wh1[1,0]~2", small_rnn).sample == 0
    for text, fragment in (("h1[0]", "give the time step"), ("h1[0]~4", "outside 0..3"), ("u2[0]~1", "without one"),
                           ("Wh1[0,0]~1", "belong to the step"), ("h2[0]", "recurrent layer"),
                           ("Wh1[2,0]", "shape 2×2")):
        with pytest.raises(Exception) as caught:
            check.parse_name(text, small_rnn)
        assert fragment in str(caught.value), (text, str(caught.value))


def test_right_numbers_through_time(small_rnn, tmp_path):
    names = ["u1[0]~0#1", "h1[1]~2#1", "slope1[0]~3#0", "e1[1]~1#1", "delta1[0]~2#0", "grad Wh1[1,0]~3#1",
             "grad Wh1[1,0]#1", "grad bh1[1]", "update Wh1[0,1]", "Wh1[0,1]@1", "a1[1]#0"]
    lines = [f"{n},{check.engine_value(small_rnn, check.parse_name(n, small_rnn))!r}" for n in names]
    results = _check(small_rnn, lines, tmp_path)
    assert all(r.right for r in results)


def test_slips_through_time(small_rnn, tmp_path):
    ev = lambda *a: _engine(small_rnn, *a)  # noqa: E731
    # h_t taken for h_{t−1} in a recurrent weight's contribution
    wrong = ev("h", 1, (1,), 0, 1, 2) * ev("delta", 1, (0,), 0, 1, 2)
    [r] = _check(small_rnn, [f"grad Wh1[1,0]~2#1,{wrong!r}"], tmp_path)
    assert r.kind == "mistake" and "another time step: h1[1]~2@0#1 was used instead" in r.explanation
    # the error from t+1 left out
    [r] = _check(small_rnn, ["e1[0]~1#1,0.000000"], tmp_path)
    assert "the error arriving from time step 2 is left out" in r.explanation
    # a contribution wrong, and the sum over time that follows from it
    g = [ev("grad_Wh", 1, (1, 0), 0, 1, t) for t in range(4)]
    results = _check(small_rnn, [f"grad Wh1[1,0]~1#1,{g[1] + 0.01!r}", f"grad Wh1[1,0]#1,{g[0] + (g[1] + 0.01) + g[2] + g[3]!r}"],
                     tmp_path)
    assert [r.kind for r in results] == ["mistake", "consequence"]
    # a sign flip on u at a time step
    [r] = _check(small_rnn, [f"u1[0]~2#1,{-ev('u', 1, (0,), 0, 1, 2)!r}"], tmp_path)
    assert "sign is flipped" in r.explanation


# ---------------------------------------------------------------- targets per time step, stacked cells

def _many_to_many():
    return _small("rnn").replace("targets = [[1.0], [0.0]]",
                                 "targets = [[[1.0], [0.0], [0.5], [0.2]], [[0.0], [1.0], [0.2], [0.4]]]")


def _stacked():
    text = _small("rnn")
    second = """[[layers]]
kind = "rnn"
units = 2
activation = "tanh"
init = "explicit"
weights = [[0.4, -0.7], [0.6, 0.3]]
recurrent_weights = [[0.5, 0.2], [-0.3, 0.8]]
bias = [0.05, -0.02]
recurrent_bias = [0.01, 0.03]
"""
    head = text.index("[[layers]]\nunits = 1")
    return (text[:head] + second + text[head:]).replace('"small-rnn"', '"stacked-rnn"')


@pytest.mark.parametrize("text", [_many_to_many, _stacked])
def test_rules_through_time_of_many_to_many_and_stacked_cells(text):
    trace = _run(text())
    local = check.Local(trace)
    recurrent = [l for l, layer in enumerate(trace.scenario.layers, start=1) if through_time.is_recurrent(layer)]
    for step in (0, 1):
        for sample in (0, 1):
            for l in recurrent:
                for k in range(4):
                    for j in range(2):
                        for q in ("u", "h", "slope", "e", "delta"):
                            key = check.Key(q, l, (j,), step, sample, k)
                            assert local(key, check._Values(trace, {}, local=local)) == check.engine_value(trace, key), key
                for q in ("grad_W", "grad_Wh"):
                    key = check.Key(q, l, (1, 0), step, sample)
                    assert local(key, check._Values(trace, {}, local=local)) == check.engine_value(trace, key), key


def test_chain_of_a_dense_layer_at_every_time_step():
    trace = _run(_many_to_many())
    for name in ("W2[1,0]", "b2[0]", "Wh1[0,1]"):
        explained = chain.explain(trace, name, step=1, sample=1, evaluate=True)
        printed = _printed_contributions(chain.render(explained))
        assert len(printed) == 4
        assert math.fsum(v for _, v in printed) == pytest.approx(explained.engine, rel=1e-12)
        assert explained.sympy_total == pytest.approx(explained.engine, rel=1e-12)
        check_latex(chain.render(chain.explain(trace, name, step=1, latex=True), latex=True))
    d = diagnose.diagnose(trace)
    assert 1 in d.time and d.findings


def test_stacked_cells_chain_and_diagnose():
    trace = _run(_stacked())
    for name in ("Wh1[1,0]", "W2[0,1]", "Wh2[1,1]"):
        explained = chain.explain(trace, name, step=0, evaluate=True)
        assert explained.total == pytest.approx(explained.engine, rel=1e-12)
        assert explained.sympy_total == pytest.approx(explained.engine, rel=1e-12)
    assert set(diagnose.diagnose(trace).time) == {1, 2}


# ---------------------------------------------------------------- the recurrent templates

def _template(name):
    """A recurrent template by name once installed, else its staged file (tests/recurrent_templates)."""
    from pathlib import Path
    from tracer.training import templates
    if templates.exists(name):
        return engine.run(scenario_module.load(name))
    return engine.run(scenario_module.load(str(Path(__file__).parent / "recurrent_templates" / f"{name}.toml")))


def test_templates_through_time():
    exploding = diagnose.diagnose(_template("rnn-exploding")).time[1]
    assert (exploding.kind, exploding.time) == ("exploding", 100 - 73)
    assert exploding.norms[0] / exploding.norms[-1] == pytest.approx(float(Fraction(11, 10) ** 100), rel=1e-12)
    vanishing = diagnose.diagnose(_template("rnn-vanishing")).time[1]
    assert vanishing.kind == "vanishing"
    lstm = diagnose.diagnose(_template("lstm-long")).time[1]
    # the remedy: no crossing, and the error through the cell state keeps its order over 49 time steps
    assert lstm.kind == "" and lstm.cell_state[0] / lstm.cell_state[-1] > 0.1
    assert vanishing.ratio[0] < 1e-7 < lstm.ratio[0]
    explained = chain.explain(_template("rnn-exploding"), "Wh1[0,0]", step=0)
    assert explained.power == pytest.approx(float(Fraction(11, 10) ** 100), rel=1e-13)


# ---------------------------------------------------------------- random cells

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(["rnn", "lstm", "gru"]), units=st.integers(1, 3), scale=st.floats(0.1, 2.0),
       activation=st.sampled_from(["tanh", "relu", "sigmoid", "identity"]), which=st.sampled_from(["W", "Wh", "b", "bh"]),
       seed=st.integers(0, 10_000))
def test_random_cells_sum_to_the_engine(kind, units, scale, activation, which, seed):
    """For random explicit weights: the printed contributions sum to the engine's gradient and sympy's
    evaluation of the expression agrees, for every parameter kind of every cell."""
    text = _small(kind, units=units, activation=activation, recurrent_scale=scale)
    trace = _run(text)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    rng = np.random.default_rng(seed)
    m = int(rng.integers(gates * units))
    index = {"W": (int(rng.integers(2)), m), "Wh": (int(rng.integers(units)), m), "b": (m,), "bh": (m,)}[which]
    name = f"{which}1[{','.join(map(str, index))}]"
    explained = chain.explain(trace, name, step=int(rng.integers(2)), sample=int(rng.integers(2)), evaluate=True)
    printed = _printed_contributions(chain.render(explained))
    scale_of = math.fsum(abs(v) for _, v in printed) + 1e-300
    assert abs(math.fsum(v for _, v in printed) - explained.engine) <= 1e-12 * scale_of
    assert abs(explained.sympy_total - explained.engine) <= 1e-12 * scale_of


def test_check_cli_with_time_steps(invoke, tmp_path, small_rnn):
    from tests.conftest import write_toml
    path = write_toml(tmp_path, _small("rnn", units=2))
    value = check.engine_value(small_rnn, check.parse_name("h1[0]~3@1#1", small_rnn))
    hand = tmp_path / "hand.csv"
    hand.write_text(f"name,value\nh1[0]~3@1#1,{value!r}\ne1[1]~0#0,0.000000\n", encoding="utf-8")
    result = invoke("check", str(path), str(hand))
    assert result.exit_code == 1 and "h1[0]~3@1#1" in result.output and "the error arriving from time step 1" in result.output
    hand.write_text("name,value\nh1[0]~9,0.5\n", encoding="utf-8")
    result = invoke("check", str(path), str(hand))
    assert result.exit_code == 2 and "time step 9 is outside 0..3" in result.output and "Traceback" not in result.output
    result = invoke("chain", str(path), "--param", "Wh1[0,0]", "--path", "0,0")
    assert result.exit_code == 2 and "sum over time steps" in result.output


def test_why_names_the_sum_over_time_of_a_dense_layer_at_every_time_step():
    trace = _run(_many_to_many())
    d = diagnose.diagnose(trace)
    text = diagnose._why_through_time(trace, d, "exploding", 0, 2, "W")
    name = re.search(r"Its weight (W2\[\d,0\])", text).group(1)
    explained = chain.explain(trace, name, step=0)
    i = name[3]
    assert f"Σ_t h1_t[{i}]·δ_t over 4 time steps" in text and f"{explained.total:.4g}" in text
    assert abs(explained.batch) == np.abs(trace.grad_W[1][0]).max()


def test_a_hand_check_through_101_time_steps_stays_shallow(tmp_path):
    """e₀ reads δ₁, which reads e₁, ... up to the last time step: recomputed in the order of the
    computation, not by a recursion 100 time steps deep (the fuzz campaign's RecursionError)."""
    trace = _template("rnn-exploding")
    results = _check(trace, ["e1[0]~0,1", "h1[0]~100,1", f"e1[0]~3,{check.engine_value(trace, check.parse_name('e1[0]~3', trace))!r}"],
                     tmp_path)
    assert [r.right for r in results] == [False, True, False]
    first = next(r for r in results if r.entry.text == "e1[0]~0")
    assert "delta1[0]~0" not in first.explanation      # no factor that follows from the number itself
