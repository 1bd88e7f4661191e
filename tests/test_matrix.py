"""The matrix layout (tracer/workbook/matrix.py): parameters as blocks, u by MMULT, batch gradients
by SUMPRODUCT, for nets too wide for the column layout; and the wide-784-32-10 template."""
import math

import numpy as np
import pytest

from tracer.training import datasets, engine, scenario as scenario_module, templates
from tracer.recalc import verify, xlsxread
from tracer.training.engine import batch_schedule
from tracer.errors import LimitError
from tracer.workbook import matrix, writer
from tests.conftest import assert_refused

WIDE = "wide-784-32-10"
STEPS = 10   # at most, per template: the agreement test's workbooks stay small (every template
             # verifies at its full length in tests/test_workbook.py)

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
# residual skips (a = f(u) + a⁽ˡ⁻¹⁾, e cells), and a layernorm above one with its own eps, a
# parametrised activation, the mean reduction, Adam and clipping by norm
RESIDUAL = [("deep-sigmoid", ("layers.1.residual=true", "layers.3.residual=true")),
            ("deep-sigmoid", ("layers.1.residual=true", 'layers.2={kind="layernorm", activation="leaky_relu", slope=0.1, '
                              'eps=0.001}', 'loss.reduction="mean"', 'optimizer.name="adam"', "training.clip_norm=0.5"))]
BOTH += RESIDUAL
# fewer steps for the deep normalisation nets (12 layers) and the residual variants: smaller workbooks
SHORT = {"batchnorm-deep": 6, "layernorm-deep": 6, **{entry: 8 for entry in RESIDUAL}}


def _load(name, overrides=(), steps=None):
    loaded = scenario_module.load(name, overrides=list(overrides))
    most = SHORT.get((name, tuple(overrides)), SHORT.get(name, STEPS))
    return scenario_module.load(name, overrides=list(overrides), steps=steps or min(loaded.steps, most))


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


@pytest.mark.parametrize("name", ["rnn-vanishing", "lstm-long", "gru-long"])
def test_recurrent_layers_are_refused_with_their_key(name):
    loaded = scenario_module.load(name)
    with pytest.raises(LimitError, match="does not show recurrent layers") as refused:
        matrix.MatrixLayout(loaded, batch_schedule(loaded))
    assert refused.value.key == "layers[0].kind" and "--layout column" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_recurrent_layers_are_one_line_at_the_cli(invoke, tmp_path):
    result = invoke("run", "rnn-vanishing", "--steps", "1", "--layout", "matrix", "-o", tmp_path / "r.xlsx")
    assert_refused(result, "layers[0].kind", "recurrent layers (rnn)", "--layout column")
    assert not (tmp_path / "r.xlsx").exists()


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
        trace = engine.run(_load(name, overrides, steps=3))
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
    """The matrix workbook of the run, and the column workbook of a run with overrides (LibreOffice
    recomputes them in the batch). A template's column workbook is verified at its full length by
    tests/test_workbook.py; the test writes its first steps itself and reads the engine's values
    cached in it."""
    trace = engine.run(_load(name, overrides))
    paths = [folder / "column.xlsx"] if overrides else []
    paths.append(folder / "matrix.xlsx")
    for path in paths:
        writer.write(trace, path, layout=path.stem)
    return paths


def _column_cell(trace, column, rows, block, step, i, j, wide):
    """(row, column index) in the column layout of cell (i, j) of a matrix block of `step`."""
    q, l = block.quantity, block.layer
    if q in ("x", "t"):
        key, place = (q, 0, j), ("sample", step, i)
    elif q == "loss":
        key, place = ("loss",), ("sample", step, i)
    elif q in ("loss_total", "lr", "grad_norm", "clip_factor"):
        key, place = ("loss",) if q == "loss_total" else (q,), ("total", step, None)
    elif q in wide.blocks:
        which, index = ("b", (j,)) if i == 0 else ("W", (i - 1, j))
        name = {"theta": which, "grad": f"grad_{which}", "update": f"update_{which}"}.get(q, f"{q}_{which}")
        key = (name, l, index)
        place = ("final", step, None) if step == trace.steps else ("total", step, None)
    else:   # a layer's sample-row quantity (u, a, h, e, δ, x̂, dx̂, layernorm's μ ...), or batchnorm's μ, σ², m1, m2 in the Σ row
        key = (q, l, j) if block.per_unit else (q, l)
        place = ("total", step, None) if block.row == wide.total_row(step) else ("sample", step, i)
    return rows[place], column.cell(key)


@pytest.mark.libreoffice(workbooks=_factory)
@pytest.mark.parametrize("name, overrides", BOTH)
def test_the_matrix_layout_agrees_with_the_column_layout(recomputed, name, overrides, tmp_path):
    """The matrix workbook recomputed by LibreOffice, and the column workbook (recomputed too for a
    run with overrides; a template's as written, its cached engine values): every cell of the matrix workbook equals the column
    workbook's cell of the same quantity to verify's tolerance (the same cancellation floor), error
    cells fall on the same cells, and each workbook agrees with the engine."""
    trace = engine.run(_load(name, overrides))
    if overrides:
        column_path, matrix_path = recomputed
    else:   # the template's column workbook as written: every cell the engine's value (see _factory)
        (matrix_path,), column_path = recomputed, tmp_path / "column.xlsx"
        writer.write(trace, column_path, layout="column")
    column, wide = writer.build_layout(trace, "column"), _matrix(trace)
    if overrides:   # recomputed by LibreOffice
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
                number, letter = _column_cell(trace, column, rows, block, step, i, j, wide)
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
    shown = {block.quantity for _, block in blocks}
    kinds = {layer.kind for layer in trace.scenario.layers}
    if "batchnorm" in kinds:
        assert {"bn_mean", "bn_var", "xhat", "dxhat", "bn_m1", "bn_m2", "e"} <= shown
    if "layernorm" in kinds:
        assert {"ln_mean", "ln_var", "xhat", "dxhat", "ln_m1", "ln_m2", "e"} <= shown
    if any(layer.residual for layer in trace.scenario.layers):
        assert {"h", "e"} <= shown


# ------------------------------------------------------------------ normalisation and residual nets

OVERFLOW = "data.inputs=[[1e200,-1e200],[0,1],[1,0],[3e-160,1e-160]]"
MATRIX_NETS = {
    # batchnorm with weight decay, the mean reduction and a frozen β; mini-batches of 2 (4 samples). (Not Adam or
    # RMSprop: with batches of 2 some β gradients are rounding noise, ~1e-19, which g/(√v + ε) lifts to ~1e-13 in
    # the engine and in either layout alike, each its own noise: beyond verify's floor there, column layout too)
    "batchnorm-decay": ("batchnorm-deep", ['optimizer.weight_decay=0.01', 'loss.reduction="mean"', "layers.1.train_bias=false",
                                          "training.batch=2"], 3),
    # layernorm on the inputs, one sample per batch (its own statistics), clipping by norm and value
    "layernorm-first": ("xor", ['layers=[{kind="layernorm", activation="tanh"}, {units=3, activation="sigmoid"}, '
                                '{units=1, activation="sigmoid"}]', "training.clip_norm=0.5", "training.clip_value=0.1",
                                "training.batch=1"], 4),
    # a residual layer between two batchnorm layers, momentum
    "residual-batchnorm": ("deep-sigmoid", ['layers.1={kind="batchnorm", activation="tanh"}', "layers.2.residual=true",
                                            'layers.3={kind="batchnorm", activation="relu"}', 'optimizer.name="momentum"'], 3),
    # σ² overflows (deviations of 1e200 squared): error cells exactly where the engine is inf or NaN
    "batchnorm-overflow": ("xor", ['layers=[{kind="batchnorm", activation="tanh"}, {units=1, activation="sigmoid"}]',
                                   OVERFLOW], 3),
    "layernorm-overflow": ("xor", ['layers=[{kind="layernorm", activation="tanh"}, {units=1, activation="sigmoid"}]',
                                   OVERFLOW], 3),
}


def _matrix_net(name, folder):
    """The matrix workbook of a MATRIX_NETS run (LibreOffice recomputes it in the session's batch)."""
    template, overrides, steps = MATRIX_NETS[name]
    trace = engine.run(scenario_module.load(template, overrides=overrides, steps=steps))
    writer.write(trace, folder / "matrix.xlsx", layout="matrix")
    return folder / "matrix.xlsx"


@pytest.mark.libreoffice(workbooks=_matrix_net)
@pytest.mark.parametrize("name", list(MATRIX_NETS))
def test_normalisation_and_residual_nets_verify_in_the_matrix_layout(recomputed, name):
    """Every formula cell recomputed by LibreOffice equals the engine's value (verify's rule), and the
    recomputed Trace sheet holds an error cell exactly where a formula cell's engine value is inf or NaN."""
    template, overrides, steps = MATRIX_NETS[name]
    trace = engine.run(scenario_module.load(template, overrides=overrides, steps=steps))
    layout = _matrix(trace)
    report = verify.compare(trace, layout, recomputed)
    assert report.ok, report.summary()
    blocks = [b for step in range(trace.steps) for b in layout.step_blocks(step, trace)] + list(layout.final_block(trace))
    nonfinite = sum(int((~np.isfinite(b.values[(1 if b.blank_first_row else 0):])).sum())
                    for b in blocks if b.formula is not None)
    sheet = xlsxread.read_values(recomputed, ["Trace"])["Trace"]
    assert int((sheet.kinds == xlsxread.ERROR).sum()) == nonfinite
    if name.endswith("overflow"):
        assert nonfinite > 0 and report.errors_matched >= nonfinite
        var = "bn_var" if name.startswith("batch") else "ln_var"
        statistic = next(b for b in blocks if b.quantity == var)
        assert not np.isfinite(statistic.values).all()
    else:
        assert nonfinite == 0 and report.cells > 500


def _wide_batchnorm():
    """784-16-BN-10 on the wide template's digits, SGD on batches of 4, two steps: too wide for the column layout."""
    return engine.run(scenario_module.load(WIDE, steps=2, overrides=[
        'layers=[{units=16, activation="relu"}, {kind="batchnorm", activation="identity"}, '
        '{units=10, activation="softmax"}]', 'optimizer.name="sgd"', "optimizer.lr=0.1", "training.batch=4"]))


@pytest.mark.libreoffice(workbooks=_wide_batchnorm)
def test_a_wide_batchnorm_net_takes_the_matrix_layout_and_verifies(recomputed):
    trace, report = recomputed.trace, recomputed.report
    assert writer.build_layout(trace).name == "matrix"
    with pytest.raises(LimitError, match="columns"):
        writer.build_layout(trace, "column")
    assert report.ok, report.summary()
    assert report.cells > 2 * 3 * 784 * 16   # θ (the second step's), ∂E/∂θ and Δθ of W1 at both steps, and more


def test_normalisation_statistics_sum_over_the_batch_rows_or_the_samples_unit_cells():
    """batchnorm's μⱼ in the Σ row sums unit j of the layer below down the step's sample rows; layernorm's
    μ of a sample sums its row of the layer below; x̂ reads them; the bodies are the kinds' Excel faces."""
    for name, quantity in (("batchnorm-deep", "bn_mean"), ("layernorm-deep", "ln_mean")):
        loaded = _load(name, steps=2)
        layout = matrix.MatrixLayout(loaded, batch_schedule(loaded))
        blocks = {b.quantity: b for b in layout.step_blocks(1, None) if b.layer == 2}
        first, last, n = layout.first_sample_row(1), layout.total_row(1) - 1, layout.counts[1]
        below = [matrix.LETTERS[layout.sample_columns[("a", 1)] + j] for j in range(loaded.widths[1])]
        mean = blocks[quantity]
        if quantity == "bn_mean":
            assert mean.row == layout.total_row(1) and mean.height == 1 and mean.width == loaded.widths[2]
            assert mean.formula(0, 1) == f"SUM({below[1]}{first}:{below[1]}{last})/{n}"
        else:
            assert mean.row == first and mean.height == n and mean.width == 1 and not mean.per_unit
            assert mean.formula(0, 0) == f"SUM({below[0]}{first}:{below[-1]}{first})/{loaded.widths[1]}"
        assert blocks["xhat"].formula(0, 0).startswith(f"({below[0]}{first}-")
        assert "_eps_2" in blocks["xhat"].formula(0, 0)


def test_formulas_of_normalisation_layers_have_a_fixed_length_whatever_the_batch_and_width():
    """μ, σ², m1, m2 sum over ranges: their formulas do not grow with the batch or the layer's width."""
    longest = {}
    for units, batch in ((3, 4), (300, 40)):
        loaded = _load("xor", (f"data.inputs=[{','.join(['[' + ','.join(['0.5'] * 2) + ']'] * batch)}]",
                               f"data.targets=[{','.join(['[1]'] * batch)}]",
                               f'layers=[{{units={units}}}, {{kind="batchnorm"}}, {{kind="layernorm"}}, {{units=1}}]'),
                       steps=1)
        layout = matrix.MatrixLayout(loaded, batch_schedule(loaded))
        blocks = [b for b in layout.step_blocks(0, None, first=False) if b.formula is not None and b.layer in (2, 3)]
        longest[units] = max(len(b.formula(0, b.width - 1)) for b in blocks)
    assert longest[300] <= longest[3] + 12   # longer row numbers and column letters only


# ------------------------------------------------------------------ the companion sheets

def test_the_matrix_workbook_has_the_column_layouts_sheets_but_chainrule(invoke, tmp_path):
    """Steps (with its loss, gradient and weight charts), Diagnosis and Histograms (with its charts) read
    the matrix Trace sheet; ChainRule factors per-sample gradient cells, which this layout has not."""
    import openpyxl
    path = tmp_path / "bn.xlsx"
    result = invoke("run", "batchnorm-deep", "--steps", "2", "--layout", "matrix", "-o", path)
    assert result.exit_code == 0, result.output
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Trace", "Steps", "Diagnosis", "Histograms", "Settings", "Data", "Scenario"]
    assert len(book["Steps"]._charts) == 3 and len(book["Histograms"]._charts) >= 2
    assert book["Diagnosis"]["A3"].value == 1 and str(book["Diagnosis"]["B3"].value).startswith("=Steps!")


def _relu_matrix(folder):
    trace = engine.run(_load("he-relu-deep", steps=3))
    writer.write(trace, folder / "matrix.xlsx", layout="matrix")
    return folder / "matrix.xlsx"


@pytest.mark.gnumeric(workbooks=_relu_matrix)
def test_the_matrix_workbooks_sheets_recompute_alike_in_gnumeric(recomputed):
    """The Diagnosis sheet's one-formula count of units at their floor (MMULT of a row of ones and the
    0/1 block) and every other formula of the matrix workbook evaluate in Gnumeric as in the engine."""
    trace = engine.run(_load("he-relu-deep", steps=3))
    report = verify.compare(trace, _matrix(trace), recomputed, spreadsheet="Gnumeric")
    assert report.ok, report.summary()
    assert report.cells_by_sheet["Diagnosis"] > 0 and report.cells_by_sheet["Histograms"] > 0


def test_the_companion_sheets_formulas_do_not_grow_with_the_units():
    """A ReLU layer of 300 units: the Diagnosis sheet's count of units at their floor, its flags and ratios,
    and the Histograms' counts are each one formula over a block or a range."""
    trace = engine.run(_load("xor", ('layers=[{units=300, activation="relu"}, {units=1}]',), steps=2))
    layout = _matrix(trace)
    for table in writer.table_layouts(trace, layout, findings=[]):
        for row in table.rows():
            formulas = [cell for cell in row if isinstance(cell, str) and cell.startswith("=")]
            assert max(len(f) for f in formulas) < 400, (table.title, max(formulas, key=len))


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
