"""The tidy CSV: its contract columns, names and values read back against the trace arrays."""
import csv
import math

import pytest

from tracer import engine, scenario as scenario_module, templates
from tracer.trace import CSV_COLUMNS, Trace
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
                     "grad_W", "grad_b", "update_W", "update_b"):
        arrays += getattr(trace, quantity)
    for group in (trace.norm, trace.state, trace.initial_state):
        arrays += [array for per_layer in group.values() for array in per_layer]
    assert Trace.bytes_needed(loaded, steps, loaded.batch_size) == sum(a.nbytes for a in arrays if a is not None)
