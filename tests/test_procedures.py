"""Every procedure (batch reduction, lr schedule, clipping, input normalisation) and every loss's
output delta: the Excel form, recomputed by LibreOffice, against the numpy form, including the ends
of the double range; the sympy output delta against sympy's own differentiation."""
import math

import numpy as np
import openpyxl
from openpyxl.utils import get_column_letter
import pytest
import sympy as sp

from tracer.maths import activations, losses, procedures
from tracer.recalc import xlsxread

SHEET = "Faces"
TINY = 2.2250738585072014e-308   # below it a spreadsheet holds 0 (or #NUM! where IFERROR makes it 0)


class Cases:
    """A sheet of constants and formulas (formula bodies from the faces under test), and the numpy
    value every formula cell must show: (row, column) -> (expected, label)."""

    def __init__(self):
        self.cells, self.expected = {}, {}

    def constant(self, row, column, value):
        self.cells[(row, column)] = float(value)
        return f"{get_column_letter(column)}{row}"

    def formula(self, row, column, body, expected, label):
        self.cells[(row, column)] = "=" + body
        self.expected[(row, column)] = (float(expected), label)
        return f"{get_column_letter(column)}{row}"


def _reduction():
    cases = Cases()
    rows = [[0.1, 0.2, 0.3, 0.7], [1.5, -2.25], [1e-300, 3e-300], [1e308, 1e308, -1e308], [-7.0]]
    for row, values in enumerate(rows, start=1):
        for column, value in enumerate(values, start=1):
            cases.constant(row, column, value)
        span = f"A{row}:{get_column_letter(len(values))}{row}"
        for offset, reduction in enumerate(procedures.REDUCTIONS):
            expected = procedures.reduce_samples(np.array(values), reduction)
            cases.formula(row, 10 + offset, procedures.excel_reduce(span, reduction, len(values)), expected,
                          f"{reduction} of {values}")
    return cases


SCHEDULE_CASES = [  # (schedule, lr, gamma, step_size, steps)
    ("constant", 0.1, 0.5, 1, [0, 3]),
    ("step", 0.1, 0.5, 2, range(6)),
    ("exponential", 0.1, 0.5, 1, range(5)),
    ("exponential", 0.3, 1.5, 1, [3, 40]),
    ("exponential", 0.1, 0.01, 1, [153, 154, 160]),      # γ^t underflows: IFERROR gives 0, IEEE a subnormal or 0
    ("exponential", 0.1, 0.5, 1, [1074, 1100]),
    ("step", 0.1, 1e300, 1, [0, 1, 2, 3]),              # γ² overflows: inf in the engine, #NUM! in the sheet
    ("exponential", 1e10, 1e300, 1, [0, 1]),            # lr·γ overflows although γ does not
]


def _schedule():
    cases = Cases()
    row = 0
    for schedule, lr, gamma, step_size, steps in SCHEDULE_CASES:
        for step in steps:
            row += 1
            names = dict(lr=cases.constant(row, 2, lr), gamma=cases.constant(row, 3, gamma),
                         step_size=cases.constant(row, 4, step_size))
            t = cases.constant(row, 1, step)
            hyper = {"schedule": schedule, "lr": lr, "gamma": gamma, "step_size": step_size}
            cases.formula(row, 5, procedures.excel_learning_rate(schedule, t, **names), procedures.learning_rate(hyper, step),
                          f"{schedule} lr={lr} γ={gamma} size={step_size} t={step}")
    return cases


def _clip_case(cases, row, grads_W, grads_b, train_bias, clip_norm, clip_value, spread=1):
    """One row: the gradients as constants (every `spread`-th column), clip_norm and clip_value cells,
    then ‖g‖, c and every clipped gradient as formulas."""
    column, refs = 1, {}
    for group, grads in (("W", grads_W), ("b", grads_b)):
        for l, g in enumerate(grads):
            for index, value in enumerate(g.ravel()):
                refs[(group, l, index)] = cases.constant(row, column, value)
                column += spread
    limit_norm = cases.constant(row, column, clip_norm) if clip_norm is not None else None
    limit_value = cases.constant(row, column + 1, clip_value) if clip_value is not None else None
    column += 2
    used_W, used_b, norm, factor = procedures.clip(grads_W, grads_b, train_bias, clip_norm, clip_value)
    factor_cell = None
    if clip_norm is not None:
        trained = [ref for (group, l, _), ref in refs.items() if group == "W" or train_bias[l]]
        norm_cell = cases.formula(row, column, procedures.excel_grad_norm(trained), norm, f"‖g‖ row {row}")
        factor_cell = cases.formula(row, column + 1, procedures.excel_clip_factor(norm_cell, limit_norm), factor,
                                    f"c row {row}")
    column += 2
    for group, used in (("W", used_W), ("b", used_b)):
        for l, g in enumerate(used):
            for index, value in enumerate(g.ravel()):
                body = procedures.excel_clipped(refs[(group, l, index)], factor_cell, limit_value)
                cases.formula(row, column, body, value, f"clipped {group}{l + 1}[{index}] row {row}")
                column += 1


def _clipping():
    cases = Cases()
    a, b = np.array([[0.3, -0.4], [0.05, 1.2]]), np.array([[0.7], [-0.2]])
    _clip_case(cases, 1, [a, b], [np.array([0.5, -0.1]), np.array([2.0])], [True, False], 0.5, 0.2)
    _clip_case(cases, 2, [a, b], [np.array([0.5, -0.1]), np.array([2.0])], [True, True], 10.0, None)   # c = 1
    _clip_case(cases, 3, [a, b], [np.array([0.5, -0.1]), np.array([2.0])], [False, True], None, 0.25)  # clamp only
    _clip_case(cases, 4, [np.array([[1e200, 1.0]])], [np.array([0.5])], [True], 0.5, 0.2)   # ‖g‖ overflows: errors
    _clip_case(cases, 5, [np.array([[1e-170, -3e-170]])], [np.array([2e-170])], [True], 0.5, 1e-171)  # g² underflows to 0
    _clip_case(cases, 6, [np.full((1, 300), 0.01)], [np.array([0.02])], [True], 0.1, None, spread=2)  # > 255 SUMSQ arguments
    return cases


NORMALISATION_CASES = [  # (normalize, raw column)
    ("standard", [1.0, 2.0, 4.0, 7.0]),
    ("minmax", [1.0, 2.0, 4.0, 7.0]),
    ("standard", [-3.5, 0.25, 12.0]),
    ("minmax", [1e300, -1e300, 5e299]),                 # max − min = 2e300, still finite
    ("standard", [1e-155, 3e-155, 0.0]),                # squared deviations underflow to subnormals
    ("standard", [1e200, -1e200, 0.0]),                 # σ overflows: the statistics are errors (the scenario refuses it)
]


def _normalisation():
    cases = Cases()
    for number, (normalize, raw) in enumerate(NORMALISATION_CASES):
        column, n = 1 + 3 * number, len(raw)
        values = np.array(raw)[:, None]
        for row, value in enumerate(raw, start=1):
            cases.constant(row, column, value)
        span = f"{get_column_letter(column)}1:{get_column_letter(column)}{n}"
        first_ref, second_ref = (f"{get_column_letter(column)}${n + 2 + k}" for k in range(2))
        stats = procedures.normalization_stats(values, normalize)
        bodies = procedures.excel_normalization_stats(normalize, span, n, first_ref)
        for k, (body, value) in enumerate(zip(bodies, stats)):
            cases.formula(n + 2 + k, column, body, value[0], f"{normalize} statistic {k} of {raw}")
        result, first, spread = procedures.normalize_columns(values, normalize)
        if not (np.isfinite(first).all() and np.isfinite(spread).all()):
            continue   # the engine's x̂ = x/inf = 0 is refused by the scenario before any sheet is written
        for row in range(1, n + 1):
            body = procedures.excel_normalized(normalize, f"{get_column_letter(column)}{row}", first_ref, second_ref)
            cases.formula(row, column + 1, body, result[row - 1, 0], f"{normalize} x̂ of {raw[row - 1]}")
    return cases


OUTPUT_DELTA_CASES = [  # (y, t, slope): targets one-hot, soft, not summing to 1, and the ends of the range
    ([0.2, 0.7, 0.1], [0.0, 1.0, 0.0], [0.16, 0.21, 0.09]),
    ([0.3, 0.6, 0.9], [0.3, 0.9, 0.0], [0.5, -2.0, 1e-3]),
    ([0.25, 0.25, 0.5], [1.0, 1.0, 0.5], [1.0, 1.0, 1.0]),
    ([1e200, 0.5, -3.0], [0.0, 1.0, 0.0], [1e200, 0.25, 1.0]),       # ∂E/∂a·f' overflows for the squared errors
    ([1e-160, 2e-160, 0.5], [0.0, 0.0, 1.0], [1e-160, 3e-160, 0.5]),  # products below the smallest normal double
]


def _output_delta():
    cases = Cases()
    row = 0
    for loss in losses.LOSSES.values():
        for y, t, slope in OUTPUT_DELTA_CASES:
            row += 1
            K = len(y)
            ys = [cases.constant(row, 1 + k, v) for k, v in enumerate(y)]
            ts = [cases.constant(row, 1 + K + k, v) for k, v in enumerate(t)]
            slopes = [cases.constant(row, 1 + 2 * K + k, v) for k, v in enumerate(slope)]
            Y, T, S = np.array([y]), np.array([t]), np.array([slope])
            error = loss.output_error(Y, T)
            dE_da = [] if error is None else [
                cases.formula(row, 1 + 3 * K + k, loss.excel_error(ys[k], ts[k], K), error[0, k], f"{loss.name} ∂E/∂a{k} of {y}")
                for k in range(K)]
            delta = loss.output_delta(Y, T, S)
            for k in range(K):
                cases.formula(row, 1 + 4 * K + k, loss.excel_output_delta(ys, ts, k, dE_da, slopes[k]), delta[0, k],
                              f"{loss.name} δ{k} of y={y} t={t} f'={slope}")
    return cases


PARTS = {"reduction": _reduction, "schedule": _schedule, "clipping": _clipping,
         "normalisation": _normalisation, "output delta": _output_delta}


def _build(part):
    """The part's cases; numpy's overflow warnings are expected at the ends of the range."""
    with np.errstate(all="ignore"):
        return PARTS[part]()


def _workbook(part, folder):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = SHEET
    for (row, column), value in _build(part).cells.items():
        sheet.cell(row, column, value)
    path = folder / f"{part.replace(' ', '-')}.xlsx"
    book.save(path)
    return path


def _disagreement(expected, kind, value):
    """None when the sheet's cell agrees with the numpy value, else what it shows."""
    if not math.isfinite(expected):
        return None if kind == xlsxread.ERROR else value
    if kind != xlsxread.NUMBER:
        return f"kind {kind} ({value})"
    if abs(expected) < TINY:
        return None if abs(value) < TINY else value
    return None if abs(value - expected) <= 1e-13 * abs(expected) else value


@pytest.mark.libreoffice(workbooks=_workbook)
@pytest.mark.parametrize("part", list(PARTS))
def test_excel_form_agrees_with_the_numpy_form_in_libreoffice(recomputed, part):
    cases = _build(part)
    values = xlsxread.read_values(recomputed, [SHEET])[SHEET]
    wrong = []
    for (row, column), (expected, label) in cases.expected.items():
        kind = int(values.kinds[row - 1, column - 1])
        shown = values.texts.get((row - 1, column - 1)) if kind == xlsxread.ERROR else values.numbers[row - 1, column - 1]
        problem = _disagreement(expected, kind, shown)
        if problem is not None:
            wrong.append(f"{label}: numpy {expected!r}, LibreOffice {problem!r}")
    assert not wrong, "\n".join(wrong)


def test_every_part_reaches_the_ends_of_the_double_range():
    """The cases include a non-finite numpy value (an error cell) and a value below the smallest
    normal double, where numpy and a spreadsheet part ways."""
    for part in ("reduction", "schedule", "clipping", "normalisation", "output delta"):
        expected = [e for e, _ in _build(part).expected.values()]
        assert any(not math.isfinite(e) for e in expected) or any(0 < abs(e) < 1e-150 for e in expected), part


# ---------------------------------------------------------------- sympy output delta

US, TS = sp.symbols("u0:3", real=True), sp.symbols("t0:3", real=True)
POINT_U, POINT_T = [0.4, -2.1, 1.3], [0.05, 0.9, 0.3]


def _outputs(activation):
    if activation == "softmax":
        total = sum(sp.exp(u) for u in US)
        return [sp.exp(u) / total for u in US]
    act = activations.get(activation)
    return [act.symbolic(u, {}) for u in US]


@pytest.mark.parametrize("activation", ["identity", "sigmoid", "tanh", "softplus", "elu"])
@pytest.mark.parametrize("name", [n for n, loss in losses.LOSSES.items() if loss.records_output_error])
def test_symbolic_output_delta_is_dE_da_times_the_slope_by_sympy(name, activation):
    """δ_k = ∂E/∂a_k · f'(u_k) equals sympy's d/du_k of E(f(u)); ∂E/∂a_k equals sympy's d/da_k of E."""
    loss = losses.LOSSES[name]
    params = activations.get(activation).params
    ys = [activations.get(activation).symbolic(u, params) for u in US]
    composed = loss.symbolic(ys, TS)
    a = sp.symbols("a0:3")
    for k, u in enumerate(US):
        slope = sp.diff(ys[k], u)
        face = loss.symbolic_output_delta(ys, TS, k, slope)
        point = {**dict(zip(US, POINT_U)), **dict(zip(TS, POINT_T))}
        assert float(face.subs(point)) == pytest.approx(float(sp.diff(composed, u).subs(point)), rel=1e-13)
        assert sp.simplify(loss.symbolic_output_error(a, TS, k) - sp.diff(loss.symbolic(a, TS), a[k])) == 0


@pytest.mark.parametrize("name", [n for n, loss in losses.LOSSES.items() if not loss.records_output_error])
def test_symbolic_output_delta_of_a_fused_loss_is_sympys_derivative_through_its_output(name):
    """δ_k of bce (sigmoid) and softmax_ce (softmax) equals sympy's d/du_k of loss(f(u)), exactly."""
    loss = losses.LOSSES[name]
    ys = _outputs(loss.output_activation)
    composed = loss.symbolic(ys, TS)
    for k, u in enumerate(US):
        assert sp.simplify(loss.symbolic_output_delta(ys, TS, k) - sp.diff(composed, u)) == 0
        assert loss.symbolic_output_error(ys, TS, k) is None


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_numpy_output_delta_matches_the_symbolic_one(name):
    """The numpy face and the sympy face give the same δ at a point (the slope from the activation)."""
    loss = losses.LOSSES[name]
    activation = loss.output_activation or "tanh"
    ys = _outputs(activation)
    point = {**dict(zip(US, POINT_U)), **dict(zip(TS, POINT_T))}
    y = np.array([[float(v.subs(point)) for v in ys]])
    slope = np.array([[float(sp.diff(ys[k], US[k]).subs(point)) for k in range(3)]])
    numeric = loss.output_delta(y, np.array([POINT_T]), slope)
    for k in range(3):
        symbolic = loss.symbolic_output_delta(ys, TS, k, sp.diff(ys[k], US[k]))
        assert numeric[0, k] == pytest.approx(float(symbolic.subs(point)), rel=1e-12)


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_the_loss_says_whether_dE_da_is_recorded(name, base_raw):
    """The CSV's dE_da rows, the workbook's ∂E/∂a columns and the numpy output_error exist together."""
    from tests.conftest import build
    from tracer.workbook import writer
    loss = losses.LOSSES[name]
    base_raw["loss"] = {"name": name}
    base_raw["layers"][-1].update(units=2, activation=loss.output_activation or "identity")
    base_raw["data"]["targets"] = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    trace = build(base_raw)
    rows = [r for r in trace.rows() if r[2] == "dE_da"]
    keys = [c.key for c in writer.build_layout(trace).columns if c.key[0] == "dE_da"]
    assert bool(rows) == bool(keys) == (trace.output_error is not None) == loss.records_output_error
    y, t = trace.a[-1][0], trace.scenario.targets[trace.samples(0)]
    assert (loss.output_error(y, t) is None) == (not loss.records_output_error)
