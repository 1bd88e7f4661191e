"""Training procedures, each defined once with its numpy form and its Excel form side by side.

The engine calls the numpy forms, the workbook (layout and Data sheet) the Excel forms; a test
recomputes every Excel form in LibreOffice against its numpy form (tests/test_procedures.py).

  batch reduction   g = Σ_s g_s (sum) or Σ_s g_s / B (mean)
                    numpy reduce_samples(per_sample, reduction)
                    Excel excel_reduce(cells, reduction, count)      SUM(cells) or SUM(cells)/count
  lr schedule       constant lr;  step lr·γ^⌊t/step_size⌋;  exponential lr·γ^t
                    numpy learning_rate(hyper, step)
                    Excel excel_learning_rate(schedule, step_cell)    on the defined names learning_rate,
                                                                      schedule_gamma, schedule_step_size
  clipping          clip_norm: ‖g‖ = √(Σ g²) over the trained parameters, c = min(1, clip_norm/(‖g‖ + 1e-6)), g·c
                    clip_value: g ← min(clip_value, max(−clip_value, g)), after clip_norm (as PyTorch)
                    numpy clip(grads_W, grads_b, train_bias, clip_norm, clip_value), clip_norm_factor, clamp
                    Excel excel_grad_norm(cells), excel_clip_factor(norm_cell), excel_clipped(gradient, factor_cell, by_value)
  normalisation     standard x̂ = (x − μ)/σ (population σ);  minmax x̂ = (x − min)/(max − min), per input column
                    numpy normalization_stats(raw, normalize), normalize_columns(raw, normalize)
                    Excel excel_normalization_stats(normalize, span, n, first_cell), excel_normalized(normalize, cell, first, second)

Where numpy and a spreadsheet part ways at the ends of the double range, the Excel forms take the
engine's side (IFERROR on an underflowing power) or show an error where the engine is non-finite.
"""
import math

import numpy as np

from tracer.maths.ieee import propagate_nonfinite

# ---------------------------------------------------------------- batch reduction

REDUCTIONS = ("sum", "mean")


def reduce_samples(per_sample, reduction):
    """Batch total of per-sample values along axis 0: Σ_s, or Σ_s / B for `mean` (np.add.reduce:
    np.sum's own computation, without its Python wrapper)."""
    total = np.add.reduce(per_sample, axis=0)
    return total / per_sample.shape[0] if reduction == "mean" else total


def excel_reduce(cells, reduction, count):
    """Formula body of the batch total of `cells` (a range): SUM(cells), or SUM(cells)/count for `mean`."""
    total = f"SUM({cells})"
    return f"{total}/{count}" if reduction == "mean" else total


# ---------------------------------------------------------------- learning-rate schedule

SCHEDULES = ("constant", "step", "exponential")


def learning_rate(hyper, step):
    """lr of `step` under the schedule: step decay lr·γ^⌊t/step_size⌋, exponential lr·γ^t.
    A γ^k (or lr·γ^k) beyond the double range is inf, as a spreadsheet's #NUM!: the run then
    becomes non-finite like any other overflow."""
    schedule = hyper.get("schedule", "constant")
    if schedule == "step":
        return hyper["lr"] * _power(hyper["gamma"], step // hyper["step_size"])
    if schedule == "exponential":
        return hyper["lr"] * _power(hyper["gamma"], step)
    return hyper["lr"]


def _power(base, exponent):
    """base ** exponent for base > 0 in IEEE arithmetic: inf where it overflows (Python's float
    power raises OverflowError instead), 0 or subnormal where it underflows."""
    try:
        return base ** exponent
    except OverflowError:
        return math.inf


def excel_learning_rate(schedule, step_cell, lr="learning_rate", gamma="schedule_gamma", step_size="schedule_step_size"):
    """Formula body of the step's lr (`step_cell` holds t; lr, gamma, step_size name cells).
    γ^k below 2.2e-308 is #NUM! in a spreadsheet, 0 (or subnormal) in IEEE arithmetic: IFERROR makes
    it 0 when γ < 1; when γ > 1 the power can only overflow, and the #NUM! stays (engine: inf)."""
    if schedule == "constant":
        return lr
    power = f"{gamma}^INT({step_cell}/{step_size})" if schedule == "step" else f"{gamma}^{step_cell}"
    return f"{lr}*IF({gamma}>1,{power},IFERROR({power},0))"


# ---------------------------------------------------------------- gradient clipping

CLIP_EPS = 1e-6          # in c = min(1, clip_norm / (‖g‖ + 1e-6)), as torch.nn.utils.clip_grad_norm_
_CLIP_EPS_TEXT = "1E-6"   # the same number in a formula


def clip_norm_factor(trained, clip_norm):
    """(‖g‖, c): the L2 norm over every array of `trained` and c = min(1, clip_norm/(‖g‖ + 1e-6)).
    An overflowing norm makes c non-finite (#NUM! in a sheet)."""
    flat = np.concatenate([g.ravel() for g in trained])
    norm = np.sqrt(np.sum(flat * flat))
    return norm, propagate_nonfinite(np.minimum(1.0, clip_norm / (norm + CLIP_EPS)), norm)


def clamp(gradient, clip_value):
    """min(clip_value, max(−clip_value, g)) entry by entry (a non-finite g stays non-finite)."""
    return propagate_nonfinite(np.minimum(clip_value, np.maximum(-clip_value, gradient)), gradient)


def clip(grads_W, grads_b, train_bias, clip_norm=None, clip_value=None):
    """Gradient clipping before the update, as PyTorch does it: returns (grads_W, grads_b, ‖g‖, c).

    clip_norm:  ‖g‖ over every trained parameter (a frozen bias, train_bias false for its layer,
                receives no gradient in PyTorch and is left out, as clip_grad_norm_ leaves it out);
                every gradient is multiplied by c. ‖g‖ and c are None without clip_norm.
    clip_value: clamp, after clip_norm (clip_grad_norm_ then clip_grad_value_: ‖g‖ is the norm
                before the clamp).
    """
    gradients = [g for pair in zip(grads_W, grads_b) for g in pair]
    trained = [flag for bias in train_bias for flag in (True, bias)]
    clipped, norm, factor = clip_gradients(gradients, trained, clip_norm, clip_value)
    return clipped[0::2], clipped[1::2], norm, factor


def clip_gradients(gradients, trained, clip_norm=None, clip_value=None):
    """`clip` over any list of gradient arrays (every parameter of every layer, in the engine's
    order: layer by layer, each kind's stored parameters), `trained` flags beside them (False:
    a frozen bias, left out of ‖g‖): returns (clipped list, ‖g‖, c)."""
    norm = factor = None
    if clip_norm is not None:
        norm, factor = clip_norm_factor([g for g, flag in zip(gradients, trained) if flag], clip_norm)
        gradients = [g * factor for g in gradients]
    if clip_value is not None:
        gradients = [clamp(g, clip_value) for g in gradients]
    return list(gradients), norm, factor


def excel_grad_norm(cells):
    """Formula body of ‖g‖ = √(Σ g²) over `cells` (cell or range references): SUMSQ of at most 255
    arguments each (the spreadsheet's limit), added up when there are more."""
    squares = "+".join(f"SUMSQ({','.join(cells[i:i + 255])})" for i in range(0, len(cells), 255))
    return f"SQRT({squares})"


def excel_clip_factor(norm_cell, clip_norm="clip_norm"):
    """Formula body of c = min(1, clip_norm / (‖g‖ + 1e-6))."""
    return f"MIN(1,{clip_norm}/({norm_cell}+{_CLIP_EPS_TEXT}))"


def excel_clipped(gradient, factor_cell=None, clip_value=None):
    """The gradient as the update sees it: (g·c) with a clip factor cell, then clamped to
    ±clip_value (a cell or name) when given."""
    if factor_cell:
        gradient = f"({gradient}*{factor_cell})"
    if clip_value is not None:
        gradient = f"MIN({clip_value},MAX(-{clip_value},{gradient}))"
    return gradient


# ---------------------------------------------------------------- input normalisation

NORMALIZATIONS = ("none", "standard", "minmax")
STATISTICS = {"standard": ("mean μ", "std σ (population)"), "minmax": ("min", "max")}   # the Data sheet's labels


def normalization_stats(raw_inputs, normalize):
    """Per input column: (mean, population std) for standard, (min, max) for minmax."""
    n = raw_inputs.shape[0]
    if normalize == "standard":
        with np.errstate(all="ignore"):   # overflow gives inf, as in the Data sheet's formulas
            mean = np.sum(raw_inputs, axis=0) / n
            return mean, np.sqrt(np.sum((raw_inputs - mean) ** 2, axis=0) / n)
    return raw_inputs.min(axis=0), raw_inputs.max(axis=0)


def normalize_columns(raw_inputs, normalize):
    """(x̂, first, spread) per input column: x̂ = (x − first)/spread with first = μ, spread = σ
    (standard) or first = min, spread = max − min (minmax). No checks: a constant column gives
    spread 0 and statistics beyond the largest double give inf or NaN (the scenario refuses both)."""
    with np.errstate(all="ignore"):
        first, second = normalization_stats(raw_inputs, normalize)
        spread = second if normalize == "standard" else second - first
        return (raw_inputs - first) / spread, first, spread


def excel_normalization_stats(normalize, span, n, first_cell):
    """Formula bodies of the two statistics of a column whose raw values are the range `span`
    (n values); `first_cell` holds the first statistic (the mean, which the σ formula reads)."""
    if normalize == "standard":
        deviation = f"{span}-{first_cell}"
        return f"SUM({span})/{n}", f"SQRT(SUMPRODUCT({deviation},{deviation})/{n})"
    return f"MIN({span})", f"MAX({span})"


def excel_normalized(normalize, cell, first, second):
    """Formula body of x̂ from the raw `cell` and the cells of the two statistics."""
    if normalize == "standard":
        return f"({cell}-{first})/{second}"
    return f"({cell}-{first})/({second}-{first})"
