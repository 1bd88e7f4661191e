"""The Trace sheet's layout in two passes: columns declared by key, then lettered and resolved."""
import dataclasses
import re

import pytest
from openpyxl.utils import column_index_from_string, get_column_letter

from tracer.maths import activations
from tracer.training import scenario as scenario_module, templates
from tracer.training.engine import batch_schedule
from tracer.errors import LimitError
from tracer.workbook import layout

# every variant of the column groups: batchnorm, residual, fused loss, schedule, clipping, frozen bias, optimiser state
# (wide-784-32-10 is the matrix layout's template, too wide for these columns: tests/test_matrix.py)
VARIANTS = [(name, ()) for name in templates.names() if name != "wide-784-32-10"] + [
    ("deep-sigmoid", ("layers.1.residual=true", "layers.2.residual=true")),
    ("batchnorm-deep", ("layers.2.residual=true",)),
    ("xor", ('optimizer.name="adam"', 'optimizer.schedule="step"', "optimizer.gamma=0.5", "optimizer.step_size=2")),
    ("xor", ("training.clip_norm=1.0", "training.clip_value=0.5", "layers.0.train_bias=false", 'loss.name="bce"')),
]


def trace_layout(name, overrides=(), steps=2):
    scenario = scenario_module.load(name, overrides=list(overrides), steps=steps)
    return layout.TraceLayout(scenario, batch_schedule(scenario))


@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_letters_are_contiguous_and_every_reference_is_a_column(name, overrides):
    trace = trace_layout(name, overrides)
    assert [c.letter for c in trace.columns] == [get_column_letter(i + 1) for i in range(len(trace.columns))]
    assert [c.index for c in trace.columns] == list(range(len(trace.columns)))
    assert len({c.key for c in trace.columns}) == len(trace.columns)
    assert all(trace.cell(c.key) == c.letter for c in trace.columns)
    references = 0
    for column in trace.columns:
        for template in filter(None, (column.sample, column.total, column.final, column.first)):
            assert "«" not in template, (column.key, template)
            # a Trace reference: a letter run followed by a row placeholder, outside sheet-qualified Data! cells
            for letter in re.findall(r"(?<![A-Za-z!_$])\$?([A-Z]{1,3})\{[rpqfl]\}", template):
                assert column_index_from_string(letter) <= len(trace.columns), (column.key, template)
                references += 1
    assert references > len(trace.columns)


@pytest.mark.parametrize("name, overrides", VARIANTS[:3])
def test_the_column_count_is_the_declared_columns(name, overrides, monkeypatch):
    declared = trace_layout(name, overrides).columns
    monkeypatch.setattr(layout, "MAX_COLUMNS", len(declared) - 1)
    with pytest.raises(LimitError, match=f"would need {len(declared):,} columns"):
        trace_layout(name, overrides)
    monkeypatch.setattr(layout, "MAX_COLUMNS", len(declared))
    assert len(trace_layout(name, overrides).columns) == len(declared)


def test_a_net_too_wide_is_refused_before_any_column_is_declared(monkeypatch):
    monkeypatch.setattr(layout.TraceLayout, "_place", lambda self, families: pytest.fail("pass 2 ran"))
    units = 300_000
    # 2-units-1 xor: θ, ∂E/∂θ and Δθ of 2·n + n + n + 1 parameters; u, a, f'(u), δ of n + 1 units;
    # step, sample, x₀, x₁, t₀, ∂E/∂a and E
    expected = 3 * (4 * units + 1) + 4 * (units + 1) + 7
    with pytest.raises(LimitError, match=f"would need {expected:,} columns, above the spreadsheet limit of 16384"):
        trace_layout("xor", [f"layers.0.units={units}"])


class _Extra(layout.TraceLayout):
    """The ordinary layout with one more column declared at the end."""
    extra = None

    def _families(self):
        yield from super()._families()
        yield layout.one("extra", self.extra)


def _with_extra(column):
    scenario = scenario_module.load("xor", steps=2)
    return type("Extra", (_Extra,), {"extra": column})(scenario, batch_schedule(scenario))


def test_a_reference_to_an_unknown_key_fails_clearly():
    with pytest.raises(layout.LayoutError, match=r"column z \('z',\) refers to \('u', 9, 0\), which no column declares"):
        _with_extra(layout.Declared("z", "reads a layer that does not exist", ("z",), sample=layout.ref(("u", 9, 0))))
    with pytest.raises(layout.LayoutError, match=r"refers to \('u', 9, 0\), which no column declares"):
        _with_extra(layout.Declared("z", "letters asked for directly", ("z",), total=lambda letter: letter(("u", 9, 0))))


def test_two_columns_with_one_key_fail_clearly():
    with pytest.raises(layout.LayoutError, match=r"two columns declare the key \('loss',\)"):
        _with_extra(layout.Declared("E again", "a second loss column", ("loss",)))


def test_references_resolve_to_the_letter_and_keep_the_row_placeholder():
    trace = _with_extra(layout.Declared("z", "E of this row and the Σ row", ("z",),
                                        sample=f"{layout.ref(('loss',))}-{layout.ref(('loss',), 'p')}",
                                        total=lambda letter: f"{letter(('step',))}1"))
    column, loss = trace.columns[-1], trace.cell(("loss",))
    assert (column.sample, column.total, column.letter) == (f"{loss}{{r}}-{loss}{{p}}", "A1", get_column_letter(len(trace.columns)))


def test_settings_names_of_activation_parameters_come_from_the_definition(monkeypatch):
    """A new activation parameter (`beta`) gets <activation>_<parameter>_<layer>; slope and alpha keep
    their names (a prefix map in the layout once raised KeyError for beta)."""
    leaky = activations.get("leaky_relu")
    monkeypatch.setitem(activations.ACTIVATIONS, "swish_beta", dataclasses.replace(leaky, name="swish_beta", params={"beta": 1.0},
                                                                                   setting_names={}))
    scenario = scenario_module.load("xor", steps=1)
    scenario.layers[0] = dataclasses.replace(scenario.layers[0], activation="swish_beta", activation_params={"beta": 1.5})
    scenario.layers[1] = dataclasses.replace(scenario.layers[1], activation="elu", activation_params={"alpha": 0.5})
    names = layout.settings_names(scenario)
    assert names[("swish_beta", "beta", 1)] == "swish_beta_beta_1" and names[("elu", "alpha", 2)] == "elu_alpha_2"
    assert ("swish_beta_beta_1", 1.5, "layer 1 swish_beta: beta") in layout.settings_values(scenario)
    scenario.layers[0] = dataclasses.replace(scenario.layers[0], activation="leaky_relu", activation_params={"slope": 0.1})
    assert layout.settings_names(scenario)[("leaky_relu", "slope", 1)] == "leaky_slope_1"
