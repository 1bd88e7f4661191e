"""The Excel face of the recurrent kinds (rnn, lstm, gru): the Trace sheet unrolled through time,
recomputed by LibreOffice (never mocked) against the engine cell for cell — overflow included, where
the engine's inf/NaN must be the sheet's error cells — and the shape of its formulas: the engine's
terms in the engine's order (h₋₁ = 0 written as 0), the error through time in its own columns, the
gradients summed over time, and the sheet's limits refused naming data.inputs."""
import numpy as np
import pytest

from tracer.training import engine, scenario as scenario_module
from tracer.training.engine import batch_schedule
from tracer.errors import LimitError
from tracer.workbook import layout, writer

from tests.conftest import assert_refused


RAW = []   # the raw dicts of the scenarios built (the last one written as TOML for the CLI)


def sequences(samples, time, features, seed=0):
    """Reproducible input sequences (samples × time × features) and one target per sample."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(samples, time, features)).round(3).tolist(), rng.normal(size=(samples, 1)).round(3).tolist()


def scenario(layers, samples=3, time=4, features=2, steps=3, optimizer=None, training=None, inputs=None):
    """Recurrent layers then a dense identity head of one output."""
    x, t = sequences(samples, time, features)
    raw = {"steps": steps, "seed": 1, "data": {"inputs": inputs if inputs is not None else x, "targets": t[:len(inputs or x)]},
           "layers": layers + [{"units": 1, "activation": "identity"}],
           "optimizer": optimizer or {"name": "sgd", "lr": 0.1}}
    if training:
        raw["training"] = training
    RAW.append(raw)
    return scenario_module.from_dict(raw)


def scalar_rnn(recurrent_weight, time, activation="identity", lr=0.01, steps=2):
    """The articles' scalar cell h_t = f(x_t + Wh·h_{t−1}) with explicit weights, over `time` steps."""
    inputs = [[[1.0] for _ in range(time)], [[0.5 if k % 2 else -0.5] for k in range(time)]]
    return scenario([{"kind": "rnn", "units": 1, "activation": activation, "init": "explicit", "weights": [[1.0]],
                      "recurrent_weights": [[recurrent_weight]], "bias": [0.0]}],
                    inputs=inputs, steps=steps, optimizer={"name": "sgd", "lr": lr})


def many_to_many():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 5, 2)).round(3).tolist()
    targets = np.eye(2)[rng.integers(0, 2, size=(3, 5))].tolist()
    return scenario_module.from_dict({
        "steps": 3, "seed": 4, "data": {"inputs": x, "targets": targets},
        "layers": [{"kind": "lstm", "units": 2}, {"kind": "gru", "units": 2}, {"units": 3, "activation": "tanh"},
                   {"units": 2, "activation": "softmax"}],
        "loss": {"name": "softmax_ce", "reduction": "mean"}, "optimizer": {"name": "adam", "lr": 0.05},
        "training": {"batch": 2}})


NETS = {
    # four Elman cells stacked: tanh, relu, leaky_relu (its slope a Settings cell), identity; each passes
    # its error down at every time step through its W; momentum
    "rnn-stack": lambda: scenario(
        [{"kind": "rnn", "units": 3, "activation": "tanh"}, {"kind": "rnn", "units": 2, "activation": "relu"},
         {"kind": "rnn", "units": 2, "activation": "leaky_relu", "slope": 0.2}, {"kind": "rnn", "units": 2, "activation": "identity"}],
        optimizer={"name": "momentum", "lr": 0.1, "momentum": 0.9}),
    # lstm under an rnn under a gru: adam, batches of 2, clipping by norm over W, b, Wh, bh, a frozen
    # bias (b and bh) on the gru
    "lstm-rnn-gru": lambda: scenario(
        [{"kind": "lstm", "units": 2}, {"kind": "rnn", "units": 2, "activation": "sigmoid"},
         {"kind": "gru", "units": 2, "train_bias": False}],
        optimizer={"name": "adam", "lr": 0.05}, training={"batch": 2, "clip_norm": 0.5}),
    # targets at every time step (many-to-many): lstm under gru, two dense layers on every h_t,
    # softmax_ce per time step summed over time, mean reduction
    "many-to-many": lambda: many_to_many(),
    # the articles' scalar cell over 100 time steps with a huge recurrent weight: h overflows part-way
    # through the sequence; the engine's inf/NaN are the sheet's error cells from there on
    "rnn-overflow": lambda: scalar_rnn(1e5, 100, steps=2),
}


def run_net(name):
    return engine.run(NETS[name]())


@pytest.mark.libreoffice(workbooks=run_net)
@pytest.mark.parametrize("name", list(NETS))
def test_recurrent_workbooks_verify(recomputed, name):
    trace, report = recomputed.trace, recomputed.report
    assert report.ok, report.summary()
    assert report.cells > 1000
    # the Diagnosis sheet (per-unit counts left out for layers through time) and, on a many-to-one
    # net, the ChainRule sheet of its dense layers are recomputed too
    assert report.cells_by_sheet["Diagnosis"] > 0 and report.cells_by_sheet["Histograms"] > 0
    assert (report.cells_by_sheet.get("ChainRule", 0) > 0) == (name != "many-to-many")
    if name == "rnn-overflow":   # 1e5^k overflows before t = 99: error cells where the engine is non-finite
        assert not np.isfinite(trace.values(("h", 1, (99, 0)), "sample", 0, 0, 0))
        assert np.isfinite(trace.values(("h", 1, (20, 0)), "sample", 0, 0, 0))
        assert report.errors_matched > 1000
    else:
        assert report.errors_matched == 0


def columns_of(s):
    return {c.key: c for c in layout.TraceLayout(s, batch_schedule(s)).columns}


def test_the_cell_is_unrolled_time_step_by_time_step():
    """Keys (quantity, l, (t, j)), time outer; headers h₀⁽¹⁾(t=3); inputs per (time, feature)."""
    s = scenario([{"kind": "rnn", "units": 2, "activation": "tanh"}], time=4, features=2)
    trace_layout = layout.TraceLayout(s, batch_schedule(s))
    keys = [c.key for c in trace_layout.columns]
    forward = [k for k in keys if k[0] in ("u", "h", "slope") and k[1] == 1]
    assert forward[:6] == [("u", 1, (0, 0)), ("u", 1, (0, 1)), ("h", 1, (0, 0)), ("h", 1, (0, 1)),
                           ("slope", 1, (0, 0)), ("slope", 1, (0, 1))]
    assert [k[2][0] for k in forward] == sorted(k[2][0] for k in forward)
    assert [k for k in keys if k[0] == "x"] == [("x", 0, (t, i)) for t in range(4) for i in range(2)]
    columns = {c.key: c for c in trace_layout.columns}
    assert columns[("h", 1, (3, 0))].header == "h₀⁽¹⁾(t=3)"
    assert columns[("x", 0, (2, 1))].sample == "Data!G{d}"   # x[t=2, i=1] is input column 2·2 + 1 = 5: B…I hold 0…7
    # the error through time: e_time for t < T−1 only, e and δ at every time step
    assert [("e_time", 1, (t, 0)) in columns for t in range(4)] == [True, True, True, False]
    assert all(("e", 1, (t, 0)) in columns and ("delta", 1, (t, 0)) in columns for t in range(4))
    # the parameters W, b, Wh, bh side by side in the parameter, update and gradient groups
    names = [c.header for c in trace_layout.columns if c.group.startswith("parameters")]
    assert names[:6] == ["W1[0,0]", "W1[0,1]", "W1[1,0]", "W1[1,1]", "b1[0]", "b1[1]"]
    assert names[6:12] == ["Wh1[0,0]", "Wh1[0,1]", "Wh1[1,0]", "Wh1[1,1]", "bh1[0]", "bh1[1]"]
    assert ("update_Wh", 1, (1, 1)) in columns and ("grad_bh", 1, (1,)) in columns


def test_formulas_write_the_engines_terms_in_its_order():
    """u_t = x_t·W + b + h_{t−1}·Wh + bh as one running sum, h₋₁ = 0 written as 0 at t = 0; the dense
    head reads h at t = T−1 and passes its error down there; gradients summed from t = 0."""
    s = scenario([{"kind": "rnn", "units": 2, "activation": "tanh"}], time=3, features=1)
    trace_layout = layout.TraceLayout(s, batch_schedule(s))
    c = trace_layout.cell
    u0, u2 = (trace_layout.columns[[col.key for col in trace_layout.columns].index(("u", 1, (t, 1)))].sample for t in (0, 2))
    assert u0 == f"{c(('x', 0, (0, 0)))}{{r}}*{c(('W', 1, (0, 1)))}{{p}}+{c(('b', 1, (1,)))}{{p}}+" \
                 f"0*{c(('Wh', 1, (0, 1)))}{{p}}+0*{c(('Wh', 1, (1, 1)))}{{p}}+{c(('bh', 1, (1,)))}{{p}}"
    assert u2 == f"{c(('x', 0, (2, 0)))}{{r}}*{c(('W', 1, (0, 1)))}{{p}}+{c(('b', 1, (1,)))}{{p}}+" \
                 f"{c(('h', 1, (1, 0)))}{{r}}*{c(('Wh', 1, (0, 1)))}{{p}}+{c(('h', 1, (1, 1)))}{{r}}*{c(('Wh', 1, (1, 1)))}{{p}}+" \
                 f"{c(('bh', 1, (1,)))}{{p}}"
    columns = {col.key: col for col in trace_layout.columns}
    assert columns[("u", 2, 0)].sample.startswith(f"{c(('h', 1, (2, 0)))}{{r}}*{c(('W', 2, (0, 0)))}{{p}}")
    assert columns[("e", 1, (2, 0))].sample == f"{c(('W', 2, (0, 0)))}{{p}}*{c(('delta', 2, 0))}{{r}}"
    assert columns[("e", 1, (1, 0))].sample == f"{c(('e_time', 1, (1, 0)))}{{r}}"
    assert columns[("grad_Wh", 1, (1, 0))].sample == "+".join(
        [f"0*{c(('delta', 1, (0, 0)))}{{r}}"] + [f"{c(('h', 1, (t - 1, 1)))}{{r}}*{c(('delta', 1, (t, 0)))}{{r}}" for t in (1, 2)])


def test_lstm_and_gru_write_their_gates_and_the_states_at_t0():
    """lstm: c_0 = f·0 + i·g and δ_f = ec·0·f' at t = 0; gru: the n columns of Wh see δ_hn, h_0 = (1 − z)·n + z·0."""
    lstm = columns_of(scenario([{"kind": "lstm", "units": 1}], time=2, features=1))
    assert lstm[("c", 1, (0, 0))].sample.split("+")[0].endswith("*0")
    assert "*0*" in lstm[("delta_f", 1, (0, 0))].sample and "*0*" not in lstm[("delta_f", 1, (1, 0))].sample
    assert {k[0] for k in lstm if len(k) == 3 and k[1] == 1 and isinstance(k[2], tuple) and len(k[2]) == 2 and k[2][0] == 0} >= {
        "u_i", "u_f", "u_g", "u_o", "i", "f", "g", "o", "c", "tanh_c", "h", "e", "ec", "delta_i", "delta_o"}
    gru = scenario([{"kind": "gru", "units": 1}], time=2, features=1)
    trace_layout = layout.TraceLayout(gru, batch_schedule(gru))
    columns = {col.key: col for col in trace_layout.columns}
    assert columns[("h", 1, (0, 0))].sample.endswith("*0")
    delta_hn = trace_layout.cell(("delta_hn", 1, (1, 0)))
    assert f"{delta_hn}{{r}}" in columns[("grad_Wh", 1, (0, 2))].sample       # column m = 2 is the n gate
    assert f"{delta_hn}{{r}}" not in columns[("grad_W", 1, (0, 2))].sample


def test_a_sequence_of_100_steps_fits_the_formula_limit():
    s = scalar_rnn(1.1, 100)
    trace_layout = layout.TraceLayout(s, batch_schedule(s))
    writer.check_limits(trace_layout)
    longest = max(len(col.sample or "") for col in trace_layout.columns)
    assert 100 * len("A1*B1+") < longest < writer.MAX_FORMULA // 2


@pytest.mark.parametrize("time, problem", [(400, "it sums 400 time steps"), (3000, "3000 time steps unrolled")])
def test_a_sequence_too_long_for_the_sheet_is_refused_naming_the_inputs(tmp_path, invoke, time, problem):
    """Before training, one line naming data.inputs, exit code 2, nothing written."""
    s = scalar_rnn(1.1, time, steps=1)
    with pytest.raises(LimitError) as refused:
        writer.check_scenario_fits(s)
    assert refused.value.key == "data.inputs" and problem in str(refused.value)
    source = tmp_path / "long.toml"
    source.write_text(scenario_module.dump_toml(RAW[-1]), encoding="utf-8")
    assert_refused(invoke("run", source, "-o", tmp_path / "long.xlsx"), "data.inputs", problem)
    assert not (tmp_path / "long.xlsx").exists()


def test_many_to_many_runs_the_dense_layers_at_every_time_step():
    """Targets per time step: the dense layers' columns once per t (keys (q, l, (t, j))), reading h
    of the same t; E sums the per-time losses from t = 0; their gradients sum over time; the gru's
    error from above arrives at every t (+ the part from t+1)."""
    s = many_to_many()
    trace_layout = layout.TraceLayout(s, batch_schedule(s))
    c, columns = trace_layout.cell, {col.key: col for col in trace_layout.columns}
    assert [("t", 0, (t, 1)) in columns for t in range(6)] == [True] * 5 + [False]
    assert columns[("u", 3, (2, 0))].header == "u₀⁽³⁾(t=2)"
    assert columns[("u", 3, (2, 0))].sample.startswith(f"{c(('h', 2, (2, 0)))}{{r}}*{c(('W', 3, (0, 0)))}{{p}}")
    loss = columns[("loss",)].sample
    assert loss.startswith("(") and all(f"{c(('t', 0, (t, 1)))}{{r}}" in loss for t in range(5))
    assert columns[("grad_b", 4, (1,))].sample == "+".join(f"({c(('delta', 4, (t, 1)))}{{r}})" for t in range(5))
    assert columns[("e", 2, (1, 0))].sample.endswith(f"+{c(('e_time', 2, (1, 0)))}{{r}}")
    assert f"{c(('delta', 3, (1, 0)))}{{r}}" in columns[("e", 2, (1, 0))].sample
