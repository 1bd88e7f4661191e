"""The matrix layout (tracer/workbook/matrix.py): parameters as blocks, u by MMULT, batch gradients
by SUMPRODUCT, for nets too wide for the column layout; and the wide-784-32-10 template."""
import math
from pathlib import Path

import numpy as np
import pytest

from tracer import datasets, engine, scenario as scenario_module, templates, verify, xlsxread
from tracer.engine import batch_schedule
from tracer.errors import LimitError
from tracer.workbook import layout as column_layout, matrix, writer

WIDE = "wide-784-32-10"
STEPS = 40   # at most, per template: the agreement test's workbooks stay small

# every template both layouts can show, and variants of the parameter blocks: Adam with a step
# schedule and weight decay, clipping (norm and value) with a frozen bias and bce, Nesterov momentum
# on mini-batches whose last batch is short
BOTH = [(name, ()) for name in templates.names()
        if name not in templates.LARGE and not matrix.unsupported(scenario_module.load(name))] + [
    ("xor", ('optimizer.name="adam"', 'optimizer.schedule="step"', "optimizer.gamma=0.5", "optimizer.step_size=2",
             "optimizer.weight_decay=0.01")),
    ("xor", ("training.clip_norm=1.0", "training.clip_value=0.5", "layers.0.train_bias=false", 'loss.name="bce"')),
    ("deep-sigmoid", ('optimizer.name="momentum"', "optimizer.nesterov=true", "training.batch=3")),
]


def _load(name, overrides=(), steps=None):
    loaded = scenario_module.load(name, overrides=list(overrides))
    return scenario_module.load(name, overrides=list(overrides), steps=steps or min(loaded.steps, STEPS))


def _matrix(trace):
    return matrix.MatrixLayout(trace.scenario, trace.sample_ids, trace.first_step)


# ------------------------------------------------------------------ choosing the layout

def test_the_column_layout_is_kept_where_it_fits_and_the_matrix_layout_takes_wide_nets():
    assert writer.check_scenario_fits(_load("xor"), None) == "column"
    wide = scenario_module.load(WIDE)
    assert writer.check_scenario_fits(wide, None) == "matrix"
    with pytest.raises(LimitError, match=r"would need 179,1\d\d columns"):   # the count with Adam
        writer.check_scenario_fits(wide, "column")
    assert writer.check_scenario_fits(_load("xor"), "matrix") == "matrix"


@pytest.mark.parametrize("name, overrides, layout, window, order", [
    (WIDE, (), None, None, "matmul"),                 # too wide for the column layout
    ("xor", (), None, None, "in_order"),
    ("xor", (), "matrix", None, "matmul"),
    ("xor", (), "matrix", (5, 7), "matmul"),
    ("xor", (), "column", None, "in_order"),
    ("xor", ("steps=300000",), None, None, "in_order"),     # too long for any workbook: its --window exports
    (WIDE, ("steps=1400",), None, None, "matmul"),         # (too many rows for one, too)
    (WIDE, (), "column", None, "in_order"),            # no layout can show it: the default order
])
def test_the_sum_order_is_that_of_the_workbooks_layout(name, overrides, layout, window, order):
    """matmul exactly when the Trace sheet is the matrix layout (MMULT and SUMPRODUCT add in the
    spreadsheet's own order), in_order for the column layout's =t₀+t₁+… formulas."""
    loaded = scenario_module.load(name, overrides=list(overrides))
    assert writer.sum_order(loaded, layout, window) == order
    if loaded.steps < 100:
        try:
            chosen = writer.check_scenario_fits(loaded, layout, window)
        except LimitError:
            return
        assert writer.SUM_ORDER_OF_LAYOUT[chosen] == order


def test_a_trace_of_the_matmul_order_is_written_in_the_matrix_layout_unless_asked():
    trace = engine.run(_load("xor", steps=2), sums="matmul")
    assert writer.build_layout(trace).name == "matrix"
    assert writer.build_layout(trace, "column").name == "column"
    assert writer.build_layout(engine.run(_load("xor", steps=2))).name == "column"


def test_layers_the_matrix_layout_cannot_show_are_refused_with_their_key():
    loaded = scenario_module.load("batchnorm-deep")
    with pytest.raises(LimitError, match="dense layers only") as refused:
        matrix.MatrixLayout(loaded, batch_schedule(loaded))
    assert refused.value.key == "layers[1].kind"


def test_matrix_limits_are_checked_before_anything_is_written():
    loaded = scenario_module.load("xor", overrides=["layers.0.units=20000"], steps=1)
    with pytest.raises(LimitError, match="matrix layout would need") as refused:
        matrix.MatrixLayout(loaded, batch_schedule(loaded))
    assert refused.value.key == "layers[0].units"
    long = scenario_module.load("xor", steps=100_000)
    with pytest.raises(LimitError, match="1,048,576") as refused:
        matrix.MatrixLayout(long, batch_schedule(long))
    assert refused.value.key == "steps"
    per_step = 2 + 4 + 1 + 2 + 3 + 1   # headers, 4 samples, Σ, headers, b and W rows of the 2-input layer, a gap
    assert f"--steps {(1_048_576 - 2 - 3) // per_step} " in str(refused.value)


@pytest.mark.parametrize("fan_in", [3, 700])
def test_formulas_have_a_fixed_length_whatever_the_fan_in(fan_in):
    loaded = _load("xor", (f"data.inputs=[[{','.join(['0.5'] * fan_in)}]]", "data.targets=[[1]]"), steps=1)
    layout = matrix.MatrixLayout(loaded, batch_schedule(loaded))
    longest = max(len(block.formula(0, 0)) for block in layout.step_blocks(0, None, first=False)
                  if block.formula is not None and block.quantity not in ("loss",))
    assert longest < 60


# ------------------------------------------------------------------ values

def test_every_formula_cell_carries_the_engines_value(tmp_path):
    """The written file read as it is (no recomputation) agrees exactly: every cached value is the engine's."""
    for name, overrides in BOTH:
        trace = engine.run(_load(name, overrides, steps=5))
        layout = writer.write(trace, tmp_path / f"{name}.xlsx", layout="matrix", force=True)
        report = verify.compare(trace, layout, tmp_path / f"{name}.xlsx")
        assert report.ok and report.worst == 0.0 and report.cells > 0, (name, report.summary())


def test_a_window_starts_from_the_engines_parameters_and_state(tmp_path):
    trace = engine.run(_load("xor", ('optimizer.name="adam"',), steps=6)).window(3, 5)
    layout = writer.write(trace, tmp_path / "window.xlsx", layout="matrix")
    sheet = xlsxread.read_values(tmp_path / "window.xlsx", ["Trace"])["Trace"]
    top = layout.parameter_row(0)
    W = trace.W[0][0]
    column = layout.parameter_columns[("theta", 1)]
    assert sheet.numbers[top, column] == W[0, 0]     # sheet row top + 1 (W[0, ·], below the biases), 0-based top
    assert verify.compare(trace, layout, tmp_path / "window.xlsx").ok


def _factory(name, overrides, folder):
    """The column and the matrix workbook of the same run (LibreOffice recomputes both in the batch)."""
    trace = engine.run(_load(name, overrides))
    paths = [folder / "column.xlsx", folder / "matrix.xlsx"]
    writer.write(trace, paths[0], layout="column")
    writer.write(trace, paths[1], layout="matrix")
    return paths


def _column_cell(trace, column, rows, block, step, i, j):
    """(row, column index) in the column layout of cell (i, j) of a matrix block of `step`."""
    q, l = block.quantity, block.layer
    if q in ("x", "t"):
        key, place = (q, 0, j), ("sample", step, i)
    elif q in ("u", "a", "slope", "delta", "dE_da"):
        key, place = (q, l, j), ("sample", step, i)
    elif q == "loss":
        key, place = ("loss",), ("sample", step, i)
    elif q in ("loss_total", "lr", "grad_norm", "clip_factor"):
        key, place = ("loss",) if q == "loss_total" else (q,), ("total", step, None)
    else:
        which, index = ("b", (j,)) if i == 0 else ("W", (i - 1, j))
        name = {"theta": which, "grad": f"grad_{which}", "update": f"update_{which}"}.get(q, f"{q}_{which}")
        key = (name, l, index)
        place = ("final", step, None) if step == trace.steps else ("total", step, None)
    return rows[place], column.cell(key)


@pytest.mark.libreoffice(workbooks=_factory)
@pytest.mark.parametrize("name, overrides", BOTH)
def test_the_matrix_layout_agrees_with_the_column_layout(recomputed, name, overrides):
    """Both layouts recomputed by LibreOffice: every cell of the matrix workbook equals the column
    workbook's cell of the same quantity to verify's tolerance (the same cancellation floor), error
    cells fall on the same cells, and each workbook agrees with the engine."""
    column_path, matrix_path = recomputed
    trace = engine.run(_load(name, overrides))
    column, wide = writer.build_layout(trace, "column"), _matrix(trace)
    assert verify.compare(trace, column, column_path).ok
    report = verify.compare(trace, wide, matrix_path)
    assert report.ok, report.summary()
    sheets = [xlsxread.read_values(path, ["Trace"])["Trace"] for path in (column_path, matrix_path)]
    rows = {(r.kind, r.step, r.slot): r.number for r in column.rows()}
    from openpyxl.utils import column_index_from_string
    compared = errors = 0
    blocks = [(step, b) for step in range(trace.steps) for b in wide.step_blocks(step, trace)]
    blocks += [(trace.steps, b) for b in wide.final_block(trace)]
    for step, block in blocks:
        floor = verify.FLOOR * max(block.scale, matrix._max(block.values))
        for i in range(1 if block.blank_first_row else 0, block.height):
            for j in range(block.width):
                number, letter = _column_cell(trace, column, rows, block, step, i, j)
                left = sheets[0].value(number, column_index_from_string(letter) - 1)
                right = sheets[1].value(block.row + i, block.column + j)
                if isinstance(left, str) or isinstance(right, str):
                    assert left == right or (str(left).startswith("#") and str(right).startswith("#")), \
                        (name, block.header, step, i, j, left, right)
                    errors += 1
                    continue
                assert abs(left - right) <= verify.TOLERANCE * max(abs(left), abs(right), floor, 1e-300), \
                    (name, block.header, step, i, j, left, right)
                compared += 1
    assert compared + errors == report.cells_by_sheet["Trace"] + sum(b.values.size for _, b in blocks if b.formula is None)
    assert report.cells_by_sheet["Steps"] == (1 + 2 * len(trace.scenario.layers)) * trace.steps   # E, ‖∇‖, log10|W|
    if name == "leaky-relu-explosion":
        assert errors > 0


# ------------------------------------------------------------------ the wide template

def test_the_wide_template_holds_the_digits_upsampled_by_nearest_neighbour():
    loaded = scenario_module.load(WIDE)
    pixels, labels = datasets.digits()
    assert loaded.widths == [784, 32, 10] and loaded.inputs.shape == (32, 784)
    for sample in (0, 7, 31):
        for r in range(28):
            for c in range(28):   # pixel (r, c) is the 8×8 pixel (⌊8r/28⌋, ⌊8c/28⌋), /16
                assert loaded.inputs[sample, 28 * r + c] == pixels[sample, 8 * math.floor(8 * r / 28) + math.floor(8 * c / 28)] / 16
        assert loaded.targets[sample].tolist() == [float(k == labels[sample]) for k in range(10)]


def test_the_wide_template_trains_in_the_matrix_layout():
    trace = engine.run(scenario_module.load(WIDE))
    assert writer.build_layout(trace).name == "matrix"
    assert np.isfinite(trace.loss).all() and trace.loss[-1] < trace.loss[0]


@pytest.mark.slow
@pytest.mark.libreoffice(workbooks=lambda: engine.run(scenario_module.load(WIDE, steps=1), sums="matmul"))
def test_the_wide_template_verifies_in_libreoffice(recomputed):
    report = recomputed.report
    assert report.ok, report.summary()
    fan_in, units = 784, 32
    # θ, ∂E/∂θ, Δθ and Adam's four states of W1 and b1 (the first step's θ are constants) and of W2, b2
    assert report.cells > 6 * (fan_in + 1) * units
