"""The Excel face of the layer kinds: layernorm's columns in the Trace sheet, recomputed by LibreOffice
(never mocked) against the engine cell for cell, and where they sit in the two-pass layout."""
import numpy as np
from openpyxl.utils import column_index_from_string
import pytest

from tracer.training import engine, scenario as scenario_module
from tracer.training.engine import batch_schedule
from tracer.workbook import layout

LAYERNORM_NETS = {
    # on the inputs, one sample per batch (its own statistics), adam with clipping by norm
    "first-batch1-adam-clip": ("xor", ['layers=[{kind="layernorm", activation="tanh"}, {units=3, activation="sigmoid"}, '
                                       '{units=1, activation="sigmoid"}]', 'optimizer.name="adam"', "optimizer.lr=0.05",
                                       "training.clip_norm=0.5", "training.batch=1"], 6),
    # above a residual layer, its own eps in the Settings sheet, an activation parameter, mean reduction
    "after-residual": ("deep-sigmoid", ["layers.1.residual=true", 'layers.2={kind="layernorm", activation="leaky_relu", '
                                        'slope=0.1, eps=0.001}', 'loss.reduction="mean"'], 4),
    # batchnorm-deep with layernorm instead: five normalisation layers stacked (Linear -> LN -> sigmoid)
    "deep": ("batchnorm-deep", [f'layers.{index}.kind="layernorm"' for index in (1, 3, 5, 7, 9)], 5),
    # σ² overflows for sample 0 (deviations of 1e200 squared), sample 3's are subnormal: the engine's
    # inf/NaN must be the workbook's error cells, the tiny ones finite on both sides
    "overflow": ("xor", ['layers=[{kind="layernorm", activation="tanh"}, {units=1, activation="sigmoid"}]',
                         "data.inputs=[[1e200,-1e200],[0,1],[1,0],[3e-160,1e-160]]"], 3),
}


def layernorm_net(name):
    template, overrides, steps = LAYERNORM_NETS[name]
    return engine.run(scenario_module.load(template, overrides=overrides, steps=steps))


@pytest.mark.libreoffice(workbooks=layernorm_net)
@pytest.mark.parametrize("name", list(LAYERNORM_NETS))
def test_layernorm_workbooks_verify(recomputed, name):
    trace, report = recomputed.trace, recomputed.report
    assert report.ok, report.summary()
    if name == "overflow":
        nonfinite = int((~np.isfinite(trace.values(("ln_var", 1), "sample", np.zeros(4, int), np.arange(4), np.arange(4)))).sum())
        assert nonfinite == 1 and report.errors_matched > 0
    else:
        assert report.cells > 1000 and report.errors_matched == 0


def test_layernorm_columns_are_per_sample_in_the_sample_rows():
    """μ, σ², m1, m2 one column each for the layer (key (quantity, l)), x̂, u, dx̂ one per unit, all in the
    sample rows; the layer below gets e columns for the error passed down; eps is a Settings cell."""
    template, overrides, _ = LAYERNORM_NETS["after-residual"]
    s = scenario_module.load(template, overrides=overrides, steps=2)
    trace = layout.TraceLayout(s, batch_schedule(s))
    columns = {c.key: c for c in trace.columns}
    n = s.widths[3]
    for quantity in ("ln_mean", "ln_var", "ln_m1", "ln_m2"):
        column = columns[(quantity, 3)]
        assert column.sample and column.total is None and not any(k[:2] == (quantity, 3) and len(k) > 2 for k in columns)
    for quantity in ("xhat", "u", "dxhat", "e"):
        layer = 2 if quantity == "e" else 3
        assert [(quantity, layer, j) in columns for j in range(n + 1)] == [True] * n + [False]
    assert columns[("ln_var", 3)].sample.startswith("SUMPRODUCT(") and "^" not in columns[("ln_var", 3)].sample
    assert "ln_eps_3" in columns[("e", 2, 0)].sample
    assert ("ln_eps_3", 0.001, "layer 3 layernorm: eps") in layout.settings_values(s)
    # the range of the layer below's outputs that μ sums is exactly its a columns
    below = [trace.cell(("a", 2, j)) for j in range(n)]
    assert columns[("ln_mean", 3)].sample == f"SUM({below[0]}{{r}}:{below[-1]}{{r}})/{n}"
    first = column_index_from_string(below[0])
    assert [column_index_from_string(c) for c in below] == list(range(first, first + n))
