"""Recurrent layer kinds (rnn, lstm, gru) in the engine (issue 12): the scenario's sequences, training
through time against torch in float64 (tests/torch_reference.py's rnn_reference: torch.nn.RNN tanh
and relu, LSTM, GRU, and its hand-written Elman loop for other activations) for every optimiser,
finite differences (gradcheck), the records with a time index, and the templates' phenomena
computed from independent numbers."""
from fractions import Fraction
import math

import numpy as np
import pytest

from tracer.training import engine, records, templates
from tracer.explain import gradcheck
from tracer.maths import optim
from tracer.training import scenario as scenario_module
from tracer.errors import ScenarioError

ref = pytest.importorskip("tests.torch_reference")

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
RELATIVE = 1e-9
HYPER = {"sgd": {"lr": 0.1}, "momentum": {"lr": 0.05, "momentum": 0.8, "nesterov": True},
         "adagrad": {"lr": 0.1}, "rmsprop": {"lr": 0.01, "alpha": 0.9}, "adam": {"lr": 0.05, "beta1": 0.8, "beta2": 0.99}}
CASES = [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "identity"), ("rnn", "sigmoid"), ("rnn", "leaky_relu"),
         ("rnn", "elu"), ("lstm", None), ("gru", None)]
ACTIVATION_PARAMS = {"leaky_relu": {"slope": 0.07}, "elu": {"alpha": 1.3}}
NAMES = {"W1": "weights", "Wh1": "recurrent_weights", "b1": "bias", "bh1": "recurrent_bias",
         "W2": "head_weights", "b2": "head_bias"}


def problem(cell, seed, samples=3, time=5, features=2, units=3, outputs=2, per_time=False):
    """Random sequences, targets after the last time step (or at every time step, per_time) and
    explicit weights (tracer's orientation)."""
    rng = np.random.default_rng(seed)
    columns = GATES[cell] * units
    weights = {"weights": rng.normal(size=(features, columns)) * 0.6,
               "recurrent_weights": rng.normal(size=(units, columns)) * 0.6,
               "bias": rng.normal(size=columns) * 0.3, "recurrent_bias": rng.normal(size=columns) * 0.3,
               "head_weights": rng.normal(size=(units, outputs)) * 0.6, "head_bias": rng.normal(size=outputs) * 0.3}
    targets = rng.normal(size=(samples, time, outputs) if per_time else (samples, outputs))
    return rng.normal(size=(samples, time, features)), targets, weights


def raw_scenario(cell, activation, x, t, w, optimizer="sgd", hyper=None, steps=5, clip_norm=None, clip_value=None):
    """The tracer scenario of rnn_reference's net: the recurrent layer, a dense identity head."""
    recurrent = {"kind": cell, "units": w["recurrent_weights"].shape[0], "init": "explicit",
                 "weights": w["weights"].tolist(), "recurrent_weights": w["recurrent_weights"].tolist(),
                 "bias": w["bias"].tolist(), "recurrent_bias": w["recurrent_bias"].tolist()}
    if activation:
        recurrent.update(activation=activation, **ACTIVATION_PARAMS.get(activation, {}))
    hyper = dict(hyper or HYPER[optimizer])
    options = {k: v for k, v in hyper.items() if k not in ("beta1", "beta2")}
    if "beta1" in hyper:
        options["betas"] = [hyper["beta1"], hyper["beta2"]]
    training = {k: v for k, v in (("clip_norm", clip_norm), ("clip_value", clip_value)) if v is not None}
    return {"steps": steps, "data": {"inputs": x.tolist(), "targets": t.tolist()},
            "layers": [recurrent, {"units": w["head_weights"].shape[1], "activation": "identity", "init": "explicit",
                                   "weights": w["head_weights"].tolist(), "bias": w["head_bias"].tolist()}],
            "optimizer": {"name": optimizer, **options}, "training": training}


def tracer_values(trace, step, kind):
    """{W1, Wh1, b1, bh1, W2, b2}: the gradients (kind "grad") or the parameters (kind "param") at step."""
    if kind == "grad":
        return {"W1": trace.grad_W[0][step], "Wh1": trace.grad_Wh[0][step], "b1": trace.grad_b[0][step],
                "bh1": trace.grad_bh[0][step], "W2": trace.grad_W[1][step], "b2": trace.grad_b[1][step]}
    return {"W1": trace.W[0][step], "Wh1": trace.Wh[0][step], "b1": trace.b[0][step], "bh1": trace.bh[0][step],
            "W2": trace.W[1][step], "b2": trace.b[1][step]}


def relative(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-300)))


def parity(cell, activation, optimizer, seed=0, per_time=False, **training):
    """The largest relative difference between tracer and torch over every gradient and every
    parameter after each of 5 steps, and the losses."""
    x, t, w = problem(cell, seed, per_time=per_time)
    trace = engine.run(scenario_module.from_dict(raw_scenario(cell, activation, x, t, w, optimizer, **training)))
    run = ref.rnn_reference(cell, x, t, **w, activation=activation or "tanh",
                            activation_params=ACTIVATION_PARAMS.get(activation), optimizer=optimizer,
                            hyper=HYPER[optimizer], steps=5, loop=cell == "rnn" and activation not in ("tanh", "relu"),
                            **training)
    worst = {"grad": 0.0, "param": 0.0, "loss": 0.0}
    for step in range(5):
        mine = tracer_values(trace, step, "grad")
        worst["grad"] = max([worst["grad"]] + [relative(mine[n], run.grads[step][n]) for n in NAMES])
        worst["loss"] = max(worst["loss"], relative(trace.loss[step], run.losses[step]))
        after = tracer_values(trace, step + 1, "param")
        worst["param"] = max([worst["param"]] + [relative(after[n], run.params[step + 1][n]) for n in NAMES])
    return worst


@pytest.mark.parametrize("optimizer", list(optim.OPTIMIZERS))
@pytest.mark.parametrize("cell, activation", CASES, ids=[f"{c}-{a}" if a else c for c, a in CASES])
def test_parity_with_torch_every_gradient_and_the_parameters_after_5_steps(cell, activation, optimizer):
    worst = parity(cell, activation, optimizer)
    assert max(worst.values()) < RELATIVE, worst


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("cell, activation", [("rnn", "tanh"), ("rnn", "elu"), ("lstm", None), ("gru", None)])
def test_parity_with_torch_with_targets_at_every_time_step(cell, activation, optimizer):
    """Many-to-many: the head reads every h_t, a sample's loss is the sum over time (rnn_reference's
    time_reduction "sum")."""
    worst = parity(cell, activation, optimizer, per_time=True)
    assert max(worst.values()) < RELATIVE, worst


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_parity_with_torch_with_clipping(cell):
    """clip_norm over every parameter (W, Wh, b, bh of the cell and the head) then clip_value, as
    torch's clip_grad_norm_ and clip_grad_value_."""
    worst = parity(cell, "tanh" if cell == "rnn" else None, "adam", seed=3, clip_norm=0.5, clip_value=0.2)
    assert max(worst.values()) < RELATIVE, worst


@pytest.mark.parametrize("cell, activation", [("rnn", "tanh"), ("rnn", "sigmoid"), ("lstm", None), ("gru", None)])
def test_gradcheck_on_recurrent_nets(cell, activation):
    """Every parameter (W1, b1, Wh1, bh1 and the head) at two steps against finite differences."""
    x, t, w = problem(cell, 7, samples=2, time=4, units=2)
    trace = engine.run(scenario_module.from_dict(raw_scenario(cell, activation, x, t, w, "adam", steps=2)))
    report = gradcheck.check(trace, steps=(0, 1))
    names = {c.name for c in report.checks}
    assert {"Wh1[0,0]", "bh1[0]", "W1[0,0]", "b1[0]", "W2[0,0]", "b2[0]"} <= names
    assert len(report.checks) == 2 * sum(v.size for v in w.values()), (len(report.checks), report.skipped)
    assert report.worst.error < 1e-6, report.worst


def test_stacked_recurrent_layers_pass_the_error_down_through_every_time_step():
    """rnn → gru → dense: gradcheck of every parameter (the gru's ∂E/∂x reaches the rnn at every t)."""
    x, t, w = problem("rnn", 11, samples=2, time=3, units=2)
    raw = raw_scenario("rnn", "tanh", x, t, w, "sgd", steps=1)
    rng = np.random.default_rng(12)
    raw["layers"].insert(1, {"kind": "gru", "units": 2, "init": "explicit", "weights": rng.normal(size=(2, 6)).tolist(),
                             "recurrent_weights": rng.normal(size=(2, 6)).tolist(), "bias": rng.normal(size=6).tolist(),
                             "recurrent_bias": rng.normal(size=6).tolist()})
    trace = engine.run(scenario_module.from_dict(raw))
    report = gradcheck.check(trace)
    assert len(report.checks) == (4 + 2 + 4 + 2) + (12 + 6 + 12 + 6) + (4 + 2)   # rnn, gru, head
    assert report.worst.error < 1e-6, report.worst


def test_targets_at_every_time_step_with_two_dense_layers_gradcheck_and_records():
    """lstm → dense tanh → dense: every parameter against finite differences; the dense layers' u, a,
    δ and the loss's ∂E/∂a are kept per (sample, time, unit), E per sample is Σ_t of the loss at t."""
    x, t, w = problem("lstm", 5, samples=2, time=3, units=2, per_time=True)
    raw = raw_scenario("lstm", None, x, t, w, "adam", steps=2)
    raw["layers"].insert(1, {"units": 2, "activation": "tanh", "init": "xavier_uniform", "bias_init": "normal"})
    trace = engine.run(scenario_module.from_dict(raw))
    report = gradcheck.check(trace, steps=(0, 1))
    assert len(report.checks) == 2 * ((16 + 8 + 16 + 8) + (4 + 2) + (4 + 2)) and report.worst.error < 1e-6, report.worst
    assert trace.u[1].shape == (2, 2, 3, 2) and trace.a[2].shape == (2, 2, 3, 2)
    y = trace.a[2][0]                                                   # (samples, time, outputs) at step 0
    np.testing.assert_allclose(trace.sample_loss[0], (0.5 * (y - t) ** 2).sum(axis=(1, 2)), rtol=1e-13)
    assert trace.values(("u", 2, (1, 0)), "sample", 0, 1, 1) == trace.u[1][0, 1, 1, 0]
    fields = {f.csv: f.index for f in records.fields(trace.scenario) if f.layer == 3 and f.csv}
    assert fields["u"] == "time-unit" and fields["grad_W"] == "matrix"


def test_records_have_a_time_index_and_sum_over_time():
    """h, e, δ per (sample, time, unit) under keys (name, l, (t, j)); the per-time gradient
    contributions (grad_W_time, ...) add up to the per-sample gradient; h_{T−1} is what the head reads."""
    x, t, w = problem("rnn", 1)
    trace = engine.run(scenario_module.from_dict(raw_scenario("rnn", "tanh", x, t, w, steps=2)))
    h = trace.values(("h", 1, (4, 2)), "sample", 1, 2, 2)
    assert h == trace.norm["h"][0][1, 2, 4, 2] and h == trace.a[0][1, 2, 2]
    for name in ("W", "b", "Wh", "bh"):
        per_time = trace.norm[f"grad_{name}_time"][0]
        np.testing.assert_allclose(per_time.sum(axis=2), trace._store(f"grad_{name}_sample")[0], rtol=1e-12, atol=1e-15)
    # the first contribution to Wh reads h₋₁ = 0
    assert not trace.norm["grad_Wh_time"][0][:, :, 0].any()
    fields = {(f.csv, f.index) for f in records.fields(trace.scenario) if f.layer == 1}
    assert {("h", "time-unit"), ("grad_W", "time-matrix"), ("grad_W", "matrix"), ("Wh", "matrix"), ("m_Wh", "matrix")} - fields \
        == {("m_Wh", "matrix")}   # sgd: no optimiser state


def test_frozen_biases_of_a_recurrent_layer():
    """train_bias = false freezes b and bh (PyTorch's bias=False trains neither)."""
    x, t, w = problem("gru", 2)
    raw = raw_scenario("gru", None, x, t, w, "adam", steps=3)
    raw["layers"][0]["train_bias"] = False
    trace = engine.run(scenario_module.from_dict(raw))
    assert np.array_equal(trace.b[0][3], w["bias"]) and np.array_equal(trace.bh[0][3], w["recurrent_bias"])
    assert not np.array_equal(trace.Wh[0][3], w["recurrent_weights"])


# ---------------------------------------------------------------- the scenario's errors

def _error(edit):
    x, t, w = problem("rnn", 0, samples=2, time=3)
    raw = raw_scenario("rnn", "tanh", x, t, w)
    edit(raw)
    with pytest.raises(ScenarioError) as caught:
        scenario_module.from_dict(raw)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _ragged(raw):
    raw["data"]["inputs"][1] = raw["data"]["inputs"][1][:2]


def _features(raw):
    raw["data"]["inputs"][1][2] = [0.0]


def _after_dense(raw):
    raw["layers"].insert(0, {"units": 2, "activation": "tanh"})


def _softmax(raw):
    raw["layers"][0]["activation"] = "softmax"


def _shape(raw):
    raw["layers"][0]["recurrent_weights"] = [[1.0, 2.0, 3.0]]


def _output(raw):
    raw["layers"].pop()
    raw["data"]["targets"] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def _rows(raw):
    raw["data"]["inputs"] = [[0.1, 0.2], [0.3, 0.4]]


def _sequences_on_dense(raw):
    raw["layers"].pop(0)


def _gate_activation(raw):
    raw["layers"][0].update(kind="lstm", activation="relu")


def _time_mismatch(raw):
    raw["data"]["targets"] = [[[0.0, 0.0]] * 2, [[0.0, 0.0]] * 2]


def _norm_head(raw):
    raw["data"]["targets"] = [[[0.0, 0.0]] * 3, [[0.0, 0.0]] * 3]
    raw["layers"].insert(1, {"kind": "layernorm"})


def _per_time_on_rows(raw):
    raw["data"]["inputs"] = [[0.1, 0.2], [0.3, 0.4]]
    raw["data"]["targets"] = [[[0.0, 0.0]] * 3, [[0.0, 0.0]] * 3]


@pytest.mark.parametrize("edit, fragments", [
    (_time_mismatch, ("data.targets", "2 time steps of targets for 3 time steps of inputs")),
    (_norm_head, ("layers[1].kind", "must be dense, not layernorm")),
    (_per_time_on_rows, ("data.targets", "need input sequences")),
    (_ragged, ("data.inputs", "ragged sequences: sample 1 has 2 time steps")),
    (_features, ("data.inputs", "sample 1", "1 values")),
    (_after_dense, ("layers[1].kind", "must come before every non-recurrent layer")),
    (_softmax, ("layers[0].activation", "softmax is not elementwise")),
    (_shape, ("layers[0].recurrent_weights", "does not match (units, gates·units) = (3, 3)")),
    (_output, ("layers[0].kind", "cannot be the output layer")),
    (_rows, ("data.inputs", "needs input sequences")),
    (_sequences_on_dense, ("layers[0].kind", "need a recurrent first layer")),
    (_gate_activation, ("layers[0].activation", "fixed activations")),
], ids=lambda v: getattr(v, "__name__", ""))
def test_bad_recurrent_scenarios_get_one_clear_line(edit, fragments):
    message = _error(edit)
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------- the phenomena, by independent numbers

def test_a_linear_scalar_rnn_multiplies_the_error_by_wh_at_every_time_step():
    """h_t = 1.1·h_{t−1} + x_t, 100 time steps, the head reads h₉₉ (weight 1): e₀ = ∂E/∂h₀ is
    e₉₉·1.1⁹⁹ (1.1⁹⁹ as an exact fraction, rounded once), and with x₀ = 1, x_t = 0 afterwards
    h₉₉ = 1.1⁹⁹, so ∂h₉₉/∂h₀ = 1.1⁹⁹; over 100 steps from h₋₁ the factor is 1.1¹⁰⁰ ≈ 13,780.6."""
    x = np.zeros((1, 100, 1))
    x[0, 0, 0] = 1.0
    w = {"weights": np.array([[1.0]]), "recurrent_weights": np.array([[1.1]]), "bias": np.zeros(1),
         "recurrent_bias": np.zeros(1), "head_weights": np.array([[1.0]]), "head_bias": np.zeros(1)}
    trace = engine.run(scenario_module.from_dict(raw_scenario("rnn", "identity", x, np.zeros((1, 1)), w, steps=1)))
    power = float(Fraction(11, 10) ** 99)
    assert abs(trace.norm["h"][0][0, 0, 99, 0] - power) <= 1e-12 * power
    e = trace.norm["e"][0][0, 0, :, 0]
    assert abs(e[0] / e[99] - power) <= 1e-12 * power
    assert abs(float(Fraction(11, 10) ** 100) - 13780.61233982) < 1e-6


# ---------------------------------------------------------------- the templates' phenomena

def load_template(name):
    """A built-in recurrent template."""
    assert templates.exists(name), name
    return scenario_module.load(name)


def rel(a, b):
    return abs(a - b) / abs(b)


def test_rnn_exploding_multiplies_the_error_by_1_1_per_time_step():
    """h_t = 1.1^t (x₀ = 1, W = 1, Wh = 1.1), head y = h₁₀₀, target 1: every number from exact fractions.
    e₀/e₁₀₀ = 1.1¹⁰⁰; ∂E/∂W1 = x₀·δ₀ = 1.1¹⁰⁰·(1.1¹⁰⁰ − 1); ∂E/∂Wh1 = Σ_t h_(t−1)·δ_t = 100·1.1⁹⁹·(1.1¹⁰⁰ − 1);
    ∂E/∂b1 = Σ_t δ_t = (1.1¹⁰⁰ − 1)·Σ_k 1.1^k; then the update lr·1.9e8 makes the run overflow at step 1."""
    F = Fraction(11, 10)
    e100 = F ** 100 - 1
    trace = engine.run(load_template("rnn-exploding"))
    e = trace.norm["e"][0][0, 0, :, 0]
    assert len(e) == 101 and rel(e[0] / e[100], float(F ** 100)) < 1e-12
    assert rel(float(F ** 100), 13780.61233982) < 1e-11      # "1.1 multiplied 100 times is over 10,000"
    assert rel(trace.grad_W[0][0, 0, 0], float(F ** 100 * e100)) < 1e-12
    assert rel(trace.grad_Wh[0][0, 0, 0], float(100 * F ** 99 * e100)) < 1e-12
    assert rel(trace.grad_b[0][0, 0], float(e100 * sum(F ** k for k in range(101)))) < 1e-12
    assert trace.grad_bh[0][0, 0] == trace.grad_b[0][0, 0]
    assert trace.first_nonfinite_step() == 1


def test_rnn_clipped_keeps_every_step_within_lr_times_clip_norm():
    """‖g‖ at step 0 from exact fractions; every update's norm ≤ lr·clip_norm = 0.01; all finite."""
    F = Fraction(11, 10)
    e100 = F ** 100 - 1
    through_time = e100 * sum(F ** k for k in range(101))                 # ∂E/∂b1 = ∂E/∂bh1
    squares = [F ** 100 * e100, through_time, 100 * F ** 99 * e100, through_time, F ** 100 * e100, e100]
    trace = engine.run(load_template("rnn-clipped"))
    assert rel(trace.grad_norm[0], math.sqrt(float(sum(g * g for g in squares)))) < 1e-12
    assert trace.first_nonfinite_step() is None
    for step in range(trace.steps):
        updates = [u[step] for store in ("update_W", "update_b", "update_Wh", "update_bh")
                   for u in trace._store(store) if u is not None]
        assert math.sqrt(sum(float(np.sum(u * u)) for u in updates)) <= 0.01 * (1 + 1e-9)


def torch_input_gradients(trace):
    """∂E_s/∂x_t of every sample at step 0 by torch autograd (nn.RNN/LSTM/GRU or the Elman loop), the
    net rebuilt from the trace's step-0 parameters: an independent measure of δ through time."""
    torch = pytest.importorskip("torch")
    s = trace.scenario
    layer = s.layers[0]
    module = ref.recurrent_module(layer.kind, s.widths[0], layer.units, layer.activation, layer.activation_params)
    with torch.no_grad():
        module.weight_ih_l0.copy_(ref.tensor(trace.W[0][0].T))
        module.weight_hh_l0.copy_(ref.tensor(trace.Wh[0][0].T))
        module.bias_ih_l0.copy_(ref.tensor(trace.b[0][0]))
        module.bias_hh_l0.copy_(ref.tensor(trace.bh[0][0]))
    x = ref.tensor(s.inputs).requires_grad_(True)
    states, _ = module(x)
    y = states[:, -1, :] @ ref.tensor(trace.W[1][0]) + ref.tensor(trace.b[1][0])
    (0.5 * ((y - ref.tensor(s.targets)) ** 2).sum()).backward()      # Σ_s E_s: per-sample gradients
    return x.grad.numpy()


@pytest.mark.parametrize("name, reaches", [("rnn-vanishing", False), ("lstm-long", True), ("gru-long", True)])
def test_the_gradient_vanishes_through_time_in_the_rnn_and_reaches_the_first_step_in_lstm_and_gru(name, reaches):
    """The first time step's contribution to ∂E/∂W1 against the last's, per sample. rnn-vanishing:
    below 1e-7, and below the bound |x₀/x₄₉|·0.5⁴⁹ (|Wh·tanh'| ≤ 0.5 per time step); lstm-long,
    gru-long: above 1e-2. Torch's ∂E/∂x_t (autograd, independent) equals the engine's Σ_m W[i,m]·δ_t[m]."""
    s = load_template(name)
    trace = engine.run(s)
    contributions = trace.norm["grad_W_time"][0][0][:, :, 0, :]      # (samples, time, columns) at step 0
    first, last = np.abs(contributions[:, 0]).sum(axis=1), np.abs(contributions[:, -1]).sum(axis=1)
    x = s.inputs[:, :, 0]
    if reaches:
        assert (first / last > 1e-2).all(), first / last
    else:
        assert (first / last < 1e-7).all() and (first / last <= np.abs(x[:, 0] / x[:, -1]) * 0.5 ** 49).all()
    params = trace.parameters(0)
    result = engine.forward_backward(s, params.pop("W"), params.pop("b"), s.inputs, s.targets, params)
    dx = result.records[0]["dx"]
    expected = torch_input_gradients(trace)
    assert np.max(np.abs(dx - expected) / np.maximum(np.abs(expected), 1e-300)) < 1e-9
    ratio = np.abs(expected[:, 0, 0] / expected[:, -1, 0])
    assert (ratio > 1e-2).all() if reaches else (ratio < 1e-7).all()


@pytest.mark.parametrize("name", ["rnn-exploding", "rnn-clipped", "rnn-vanishing", "lstm-long", "gru-long"])
def test_gradcheck_passes_on_every_recurrent_template(name):
    trace = engine.run(load_template(name))
    report = gradcheck.check(trace, steps=(0,))
    assert len(report.checks) == sum(a[0].size for store in ("W", "b", "Wh", "bh") for a in trace._store(store) if a is not None)
    assert report.worst.error < 1e-6, report.worst


def test_the_csv_time_column_of_a_recurrent_trace(tmp_path):
    """Time-indexed rows carry their time step in the `time` column (after `value`); the per-sample
    gradient sums and every dense-layer row leave it empty; the CSV is the row writer's, byte for byte,
    and to_frame has the same rows."""
    from tests.test_trace import read, reference_csv
    x, t, w = problem("gru", 4, samples=2, time=3, units=2)
    trace = engine.run(scenario_module.from_dict(raw_scenario("gru", None, x, t, w, "adam", steps=2)))
    path = tmp_path / "trace.csv"
    trace.write_csv(path)
    assert path.read_bytes() == reference_csv(trace)
    rows = read(path)
    assert list(rows[0]) == ["step", "sample", "quantity", "layer", "row", "col", "value", "time"]

    def pick(**match):
        found = [r for r in rows if all(r[k] == str(v) for k, v in match.items())]
        assert len(found) == 1, match
        return float(found[0]["value"])
    assert pick(step=1, sample=1, quantity="h", layer=1, row=1, time=2) == trace.norm["h"][0][1, 1, 2, 1]
    assert pick(step=0, sample=0, quantity="grad_Wh", layer=1, row=1, col=4, time=2) == trace.norm["grad_Wh_time"][0][0, 0, 2, 1, 4]
    assert pick(step=0, sample=0, quantity="grad_Wh", layer=1, row=1, col=4, time="") == trace.grad_Wh_sample[0][0, 0, 1, 4]
    assert pick(step=0, sample="", quantity="Wh", layer=1, row=0, col=5, time="") == trace.Wh[0][0, 0, 5]
    assert pick(step=1, sample="", quantity="exp_avg_bh", layer=1, row=3, time="") == trace.state[("exp_avg", "bh")][0][1, 3]
    assert pick(step=2, sample="", quantity="bh", layer=1, row=3, time="") == trace.bh[0][2, 3]
    assert all(r["time"] == "" for r in rows if r["layer"] == "2")
    frame = trace.to_frame()
    assert len(frame) == len(rows) and frame["time"].notna().sum() == sum(r["time"] != "" for r in rows)


@pytest.mark.parametrize("per_time", [False, True])
def test_the_dense_head_derives_its_per_sample_gradients_only_without_targets_per_time_step(per_time):
    """A dense head on an lstm derives grad_W, grad_b per sample from h_(T−1) and δ (issue 15),
    unless it runs at every time step (its per-sample gradients are sums over time: recorded); the
    cell keeps its own. Either way Σ_s of the per-sample gradients is the batch gradient (whose W, b
    torch parity checks), and the CSV accessor reads the same numbers."""
    x, t, w = problem("lstm", 3, per_time=per_time)
    s = scenario_module.from_dict(raw_scenario("lstm", None, x, t, w, "adam", steps=3))
    trace = engine.run(s)
    assert [(f.layer, f.name, f.derived) for f in records.sample_fields(s) if f.store.endswith("_sample")] == \
        [(1, name, False) for name in ("grad_W", "grad_b", "grad_Wh", "grad_bh")] + \
        [(2, name, not per_time) for name in ("grad_W", "grad_b")]
    for l, names in ((1, ("W", "b", "Wh", "bh")), (2, ("W", "b"))):
        for name in names:
            per_sample = np.asarray(getattr(trace, f"grad_{name}_sample")[l - 1])
            np.testing.assert_allclose(per_sample.sum(axis=1), getattr(trace, f"grad_{name}")[l - 1][:trace.steps],
                                       rtol=1e-12, atol=1e-15)
    head = np.asarray(trace.grad_W_sample[1])
    assert trace.values(("grad_W", 2, (0, 1)), "sample", 1, 0, trace.sample_ids[1, 0]) == head[1, 0, 0, 1]
