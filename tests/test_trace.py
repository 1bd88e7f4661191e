"""The tidy CSV: its contract columns, names and values read back against the trace arrays; the
vectorised writer against the row-by-row one, the DataFrame and the repr."""
import csv
import io
import math
import sys

import numpy as np
import pytest

from tracer.training import engine, scenario as scenario_module, templates
from tracer.training.trace import CSV_COLUMNS, Trace
from tests.conftest import build


def read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_csv_columns_and_values(tmp_path, base_raw):
    trace = build(base_raw)
    path = tmp_path / "trace.csv"
    trace.write_csv(path)
    rows = read(path)
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    def pick(**match):
        found = [r for r in rows if all(r[k] == str(v) for k, v in match.items())]
        assert len(found) == 1, match
        return float(found[0]["value"])
    assert pick(step=1, sample=2, quantity="u", layer=1, row=1) == trace.u[0][1, 2, 1]
    assert pick(step=2, sample=0, quantity="delta", layer=2, row=0) == trace.delta[1][2, 0, 0]
    assert pick(step=0, sample="", quantity="grad_W", layer=1, row=1, col=2) == trace.grad_W[0][0, 1, 2]
    assert pick(step=0, sample=1, quantity="grad_W", layer=2, row=2, col=0) == trace.grad_W_sample[1][0, 1, 2, 0]
    assert pick(step=2, sample="", quantity="update_b", layer=1, row=0) == trace.update_b[0][2, 0]
    assert pick(step=3, sample="", quantity="W", layer=2, row=1, col=0) == trace.W[1][3, 1, 0]
    assert pick(step=1, sample="", quantity="loss", layer="") == trace.loss[1]
    assert pick(step=1, sample=0, quantity="dE_da", layer=2, row=0) == trace.output_error[1, 0, 0]
    # every batch gradient is the sum of its per-sample rows
    per_sample = sum(pick(step=0, sample=s, quantity="grad_b", layer=1, row=0) for s in range(3))
    assert math.isclose(per_sample, pick(step=0, sample="", quantity="grad_b", layer=1, row=0), rel_tol=1e-14)


def test_csv_writes_inf_and_nan(tmp_path, base_raw):
    base_raw["optimizer"]["lr"] = 1e200
    base_raw["steps"] = 5
    trace = build(base_raw)
    path = tmp_path / "trace.csv"
    trace.write_csv(path)
    values = {r["value"] for r in read(path)}
    assert "nan" in values or "inf" in values or "-inf" in values


@pytest.mark.parametrize("name", templates.names())
@pytest.mark.parametrize("steps", [1, 7])
def test_bytes_needed_is_what_allocate_takes(name, steps):
    """The size guard's figure (computed without allocating) equals the arrays' bytes."""
    loaded = scenario_module.load(name, steps=steps)
    schedule = engine.batch_schedule(loaded)
    trace = Trace.allocate(loaded, schedule)
    arrays = [schedule, trace.output_error, trace.sample_loss, trace.loss, trace.lr, trace.grad_norm, trace.clip_factor]
    for quantity in ("u", "a", "slope", "delta", "h", "error", "W", "b", "grad_W_sample", "grad_b_sample",
                     "grad_W", "grad_b", "update_W", "update_b",
                     "Wh", "bh", "grad_Wh_sample", "grad_bh_sample", "grad_Wh", "grad_bh", "update_Wh", "update_bh"):
        arrays += getattr(trace, quantity)
    for group in (trace.norm, trace.state, trace.initial_state):
        arrays += [array for per_layer in group.values() for array in per_layer]
    assert Trace.bytes_needed(loaded, steps, loaded.batch_size) == sum(a.nbytes for a in arrays if a is not None)


def reference_csv(trace):
    """The CSV as the row-by-row writer wrote it before it was vectorised: `rows()` through the
    csv module, values with repr."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in trace.rows():
        writer.writerow(["" if v is None else (repr(float(v)) if i == 6 else v) for i, v in enumerate(row)])
    return buffer.getvalue().encode("utf-8")


def csv_cases():
    from tests.test_remedies import network
    cases = [(name, lambda name=name: engine.run(scenario_module.load(name))) for name in templates.names()]
    cases.append(("window", lambda: engine.run(scenario_module.load("leaky-relu-explosion")).window(2, 5)))
    cases.append(("partial-batch", lambda: engine.run(scenario_module.load("xor", steps=5, overrides=["training.batch=3"]))))
    for optimizer in ("adam", "momentum", "rmsprop"):
        cases.append((f"bn-res-clip-{optimizer}", lambda o=optimizer: build(network(True, True, o, True))))
    return cases


@pytest.mark.parametrize("name,make", csv_cases(), ids=[name for name, _ in csv_cases()])
def test_csv_is_byte_for_byte_the_row_writers(tmp_path, name, make):
    trace = make()
    path = tmp_path / "trace.csv"
    trace.write_csv(path)
    assert path.read_bytes() == reference_csv(trace)


def test_csv_tables_split_steps_without_changing_rows(base_raw):
    trace = build(dict(base_raw, steps=7))
    whole = np.concatenate([table["value"] for table in trace.tables()])
    parts = np.concatenate([table["value"] for table in trace.tables(steps_per_table=2)])
    expected = np.array([row[6] for row in trace.rows()])
    np.testing.assert_array_equal(whole, expected)
    np.testing.assert_array_equal(parts, expected)


def test_to_frame_has_the_csvs_columns_and_rows(tmp_path):
    pandas = pytest.importorskip("pandas")
    trace = engine.run(scenario_module.load("batchnorm-deep", steps=3))
    frame = trace.to_frame()
    assert tuple(frame.columns) == CSV_COLUMNS
    path = tmp_path / "trace.csv"
    trace.write_csv(path)
    read = pandas.read_csv(path, dtype={"sample": "Int64", "layer": "Int64", "row": "Int64", "col": "Int64",
                                        "value": str, "time": "Int64"}, keep_default_na=False,
                           na_values={"sample": [""], "layer": [""], "row": [""], "col": [""], "time": [""]})
    assert len(frame) == len(read) == sum(1 for _ in trace.rows())
    for column in ("step", "sample", "layer", "row", "col", "time"):
        assert frame[column].astype("Int64").equals(read[column].astype("Int64")), column
    assert list(frame["quantity"]) == list(read["quantity"])
    np.testing.assert_array_equal(frame["value"].to_numpy(), [float(v) for v in read["value"]])   # bit for bit
    assert frame["sample"].isna().sum() == sum(1 for row in trace.rows() if row[1] is None)


def test_to_frame_without_pandas_says_how_to_install(monkeypatch, base_raw):
    monkeypatch.setitem(sys.modules, "pandas", None)   # import pandas now raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        build(base_raw).to_frame()


def test_short_reprs():
    trace = engine.run(scenario_module.load("leaky-relu-explosion"))
    text = repr(trace)
    assert len(text) < 200 and "leaky-relu-explosion" in text and "5-3-1" in text
    assert "non-finite from step 4" in text
    scenario = repr(trace.scenario)
    assert len(scenario) < 300 and "leaky_relu" in scenario and "sgd" in scenario


def test_per_sample_gradients_are_derived_from_the_layer_below_and_delta(base_raw):
    """No (T, B, fan_in, units) array is kept: ∂E/∂W[i,j] = a⁽ˡ⁻¹⁾ᵢ·δⱼ (xᵢ on layer 1) and ∂E/∂b = δ
    per sample are computed when read, the bits of the products the engine summed; a short last
    batch's padding slot is NaN, as recorded ones are."""
    base_raw["training"]["batch"] = 2              # batches [0, 1], [2] (one padding slot)
    trace = build(base_raw)
    assert all(array.nbytes == 0 for array in trace.grad_W_sample + trace.grad_b_sample)
    inputs = trace.scenario.inputs
    for step in range(trace.steps):
        ids = trace.samples(step)
        for l in (1, 2):
            below = inputs[ids] if l == 1 else trace.a[0][step, :len(ids)]
            delta = trace.delta[l - 1][step, :len(ids)]
            expected = below[:, :, None] * delta[:, None, :]
            block = trace.grad_W_sample[l - 1][step]
            np.testing.assert_array_equal(block[:len(ids)].view(np.int64), expected.view(np.int64))
            assert np.isnan(block[len(ids):]).all()
            np.testing.assert_array_equal(trace.grad_b_sample[l - 1][step, :len(ids)], delta)
            # the batch gradient is np.sum of the derived per-sample gradients, bit for bit
            np.testing.assert_array_equal(np.sum(block[:len(ids)], axis=0).view(np.int64), trace.grad_W[l - 1][step].view(np.int64))
            for slot, sample in enumerate(ids):
                for (i, j), value in np.ndenumerate(expected[slot]):
                    assert trace.grad_W_sample[l - 1][step, slot, i, j] == value
                    assert trace.values(("grad_W", l, (i, j)), "sample", step, slot, sample) == value
    # values() over many rows at once, as the workbook reads a column
    steps, slots = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 0, 0, 1])
    samples = trace.sample_ids[steps, slots]
    column = trace.values(("grad_W", 2, (1, 0)), "sample", steps, slots, samples)
    np.testing.assert_array_equal(column, trace.grad_W_sample[1][steps, slots][:, 1, 0])
    window = trace.window(1, 2)
    np.testing.assert_array_equal(np.asarray(window.grad_W_sample[0]), np.asarray(trace.grad_W_sample[0])[1:3])


@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
def test_normalisation_per_sample_gradients_are_xhat_times_delta(kind):
    from tests.test_layers import network
    trace = build(network(kind, steps=2, batch=2))
    xhat, delta = trace.norm["xhat"][1], trace.delta[1]
    np.testing.assert_array_equal(np.asarray(trace.grad_W_sample[1]), (delta * xhat)[:, :, None, :])
    np.testing.assert_array_equal(trace.grad_W_sample[1][1, 0, 0, 2], trace.values(("grad_W", 2, (0, 2)), "sample", 1, 0, 2))
    np.testing.assert_array_equal(np.asarray(trace.grad_b_sample[1]), delta)


def test_a_wide_run_keeps_no_per_sample_gradients():
    """784-32-10 in batches of 32: the size guard and the trace count no B × 784 × 32 array."""
    rng = np.random.default_rng(0)
    raw = {"steps": 2, "data": {"inputs": rng.normal(size=(64, 784)).tolist(),
                                "targets": np.eye(10)[rng.integers(0, 10, 64)].tolist()},
           "layers": [{"units": 32, "activation": "sigmoid"}, {"units": 10, "activation": "softmax"}],
           "loss": {"name": "softmax_ce"}, "optimizer": {"name": "sgd", "lr": 0.1}, "training": {"batch": 32}}
    trace = build(raw)
    kept = sum(np.asarray(array).nbytes if isinstance(array, np.ndarray) else 0 for array in trace.arrays.values())
    assert kept < 2 * 32 * 784 * 32 * 8        # the per-sample ∂E/∂W1 of two steps alone would take this
    assert Trace.bytes_needed(trace.scenario, 2, 32) == kept + trace.sample_ids.nbytes
    assert trace.grad_W_sample[0][1, 31].shape == (784, 32)


def test_derived_gradients_that_overflow_are_inf_without_a_warning():
    """x·δ = 1e308 · 5e307 overflows: the engine recorded numpy's warning while it ran; reading the
    derived per-sample gradient later is silent (pytest turns warnings into errors) and gives inf."""
    trace = build({"steps": 1, "data": {"inputs": [[1e308]], "targets": [[0.0]]},
                   "layers": [{"units": 1, "activation": "identity", "init": "explicit", "weights": [[0.5]], "bias": [0.0]}],
                   "optimizer": {"lr": 0.1}})
    assert (0, "overflow") in trace.warnings
    assert np.isposinf(trace.grad_W_sample[0][0, 0, 0, 0]) and np.isposinf(np.asarray(trace.grad_W_sample[0])).all()
    assert np.isposinf(trace.values(("grad_W", 1, (0, 0)), "sample", 0, 0, 0))
