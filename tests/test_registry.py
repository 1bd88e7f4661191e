"""The public registry (tracer.layers.register): a built-in kind subclassed under a new name runs
everywhere its original does, with the same numbers — tracer.run, write_workbook, verify_workbook
(LibreOffice), explain_gradient, diagnose_run, check_gradients and a hand check.

The kinds under test are the keys of NETS: each a small net with one layer of that kind (its own
name written into the scenario). The renamed twin of every kind is registered at import, so that
the recomputation's child process (tests/conftest.py) knows it too."""
import numpy as np
import openpyxl
import pytest

import tracer
from tracer import layers
from tracer.errors import ScenarioError
from tracer.explain import chain, check, diagnose
from tracer.training import scenario as scenario_module

SEQUENCES = "[[[0.5, -0.2], [0.1, 0.4], [0.9, 0.3]], [[-0.3, 0.8], [0.2, -0.5], [0.6, 0.1]], [[0.2, 0.2], [-0.7, 0.1], [0.4, -0.6]]]"
ROWS = "[[0.5, -0.2], [0.1, 0.4], [0.9, 0.3], [-0.3, 0.8]]"
TAIL = """
[[layers]]
units = 1
activation = "identity"
[loss]
name = "half_sse"
reduction = "mean"
[optimizer]
name = "sgd"
lr = 0.1
"""


def _row_net(kind, keys=""):
    """2 inputs, a dense tanh layer of 3 units, the layer of `kind` (3 units; its own `keys`, TOML
    lines), a dense output."""
    layer = f'kind = "{kind}"\nunits = 3\nactivation = "sigmoid"' if kind.startswith("dense") else \
        f'kind = "{kind}"\nactivation = "tanh"\n{keys}'
    return f"""name = "registry-{kind}"
steps = 3
seed = 4
[data]
inputs = {ROWS}
targets = [[1.0], [0.0], [0.5], [0.2]]
[[layers]]
units = 3
activation = "tanh"
[[layers]]
{layer}
""" + TAIL


def _recurrent_net(kind, keys=""):
    """Three sequences of 3 time steps, 2 features; the recurrent layer of `kind` (2 units), a dense output."""
    return f"""name = "registry-{kind}"
steps = 3
seed = 4
[data]
inputs = {SEQUENCES}
targets = [[1.0], [0.0], [0.5]]
[[layers]]
kind = "{kind}"
units = 2
{keys}
""" + TAIL


# kind -> (net of that kind, the hand names checked: one per face the check walks[, the layer's own
# keys as TOML lines, e.g. 'groups = 3'])
NETS = {
    "dense": (_row_net, ["u2[0]#0", "a2[1]#1", "delta2[2]#0", "grad W2[0,1]#0", "update W2[1,1]", "W2[0,0]@1"]),
    "batchnorm": (_row_net, ["u2[0]#0", "delta2[2]#0", "grad gamma2[1]#1", "update beta2[0]", "gamma2[0]@1"]),
    "layernorm": (_row_net, ["u2[0]#0", "delta2[2]#0", "grad gamma2[1]#1", "update beta2[0]", "gamma2[0]@1"]),
    "groupnorm": (_row_net, ["u2[0]#0", "delta2[2]#0", "grad gamma2[1]#1", "update beta2[0]", "gamma2[0]@1"],
                  "groups = 1"),
    "rnn": (_recurrent_net, ["u1[0]~0#1", "h1[1]~2#1", "e1[1]~1#1", "delta1[0]~2#0", "grad Wh1[1,0]~2#1",
                             "grad W1[0,1]#0", "update Wh1[0,1]", "a1[1]#0"]),
    "lstm": (_recurrent_net, ["grad Wh1[1,0]~2#1", "grad W1[0,5]#0", "update Wh1[0,1]", "Wh1[0,1]@1"]),
    "gru": (_recurrent_net, ["grad Wh1[1,4]~2#1", "grad b1[5]#0", "update bh1[4]", "Wh1[0,1]@1"]),
}
RENAMED = {name: f"{name}_renamed" for name in NETS}


TWINS = [type(f"Renamed{type(layers.get(name)).__name__}", (type(layers.get(name)),), {"name": renamed})
         for name, renamed in RENAMED.items()]


@pytest.fixture(scope="module", autouse=True)
def renamed_kinds():
    """The renamed twins are registered while this module's tests run, and only then: other modules'
    messages that list the known kinds do not depend on which tests ran before them."""
    for twin in TWINS:
        layers.register(twin)
    yield
    for twin in TWINS:
        layers.unregister(twin.name)


def _scenario(name, kind=None):
    """The net of kind `name` with its layer of kind `kind` (default: `name`)."""
    make, _, *keys = NETS[name]
    return scenario_module.loads(make(kind or name, *keys))


def _pair(name):
    """(trace of the original kind, trace of its renamed twin)."""
    return tracer.run(_scenario(name)), tracer.run(_scenario(name, RENAMED[name]))


@pytest.fixture(scope="module", params=list(NETS))
def pair(request):
    return request.param, _pair(request.param)


def _same_text(name, original, renamed):
    assert renamed.replace(RENAMED[name], name) == original


def test_the_renamed_kind_is_registered_and_a_twin():
    for name, renamed in RENAMED.items():
        kind = layers.get(renamed)
        assert isinstance(kind, type(layers.get(name))) and kind is not layers.get(name)
        assert [layers.of(layer) for layer in _scenario(name, renamed).layers].count(kind) == 1


def test_register_refuses_a_nameless_kind_or_a_taken_name():
    with pytest.raises(ValueError, match="with a name"):
        layers.register(type("Nameless", (layers.LayerKind,), {}))
    with pytest.raises(ValueError, match="registered already"):
        layers.register(type("Impostor", (type(layers.get("dense")),), {"name": "rnn"}))
    with pytest.raises(ScenarioError):
        scenario_module.loads(_row_net("dense_unknown"))


def test_a_registered_kind_can_be_removed():
    kind = layers.register(type("Scratch", (type(layers.get("dense")),), {"name": "scratch"}))
    assert layers.get("scratch") is kind
    layers.unregister("scratch")
    with pytest.raises(KeyError, match="unknown layer kind"):
        layers.get("scratch")


def test_run_gives_the_same_numbers(pair):
    _, (original, renamed) = pair
    assert len(original.arrays) == len(renamed.arrays)
    for (field, a), (twin, b) in zip(original.arrays.items(), renamed.arrays.items()):
        assert field.csv == twin.csv and field.layer == twin.layer
        np.testing.assert_array_equal(a, b, err_msg=str(field))


def _formulas(path):
    book = openpyxl.load_workbook(path)
    return {(sheet.title, cell.coordinate): cell.value for sheet in book.worksheets for row in sheet.iter_rows()
            for cell in row if isinstance(cell.value, str) and cell.value.startswith("=")}


def test_write_workbook_gives_the_same_formulas(pair, tmp_path):
    name, (original, renamed) = pair
    tracer.write_workbook(original, tmp_path / "original.xlsx")
    tracer.write_workbook(renamed, tmp_path / "renamed.xlsx")
    formulas = _formulas(tmp_path / "original.xlsx")
    assert formulas and _formulas(tmp_path / "renamed.xlsx") == formulas


def _parameters(trace):
    """The first and the last parameter of every stored array of the layer of the kind under test."""
    s = trace.scenario
    l = next(l for l, layer in enumerate(s.layers, start=1) if layer.kind in set(NETS) | set(RENAMED.values()))
    kind = layers.of(s.layers[l - 1])
    shapes = kind.param_shapes(s.widths[l - 1], s.layers[l - 1].units)
    return [kind.param_name(which, l, index) for which, shape in zip(kind.stored_params, shapes)
            for index in ((0,) * len(shape), tuple(n - 1 for n in shape))]


def test_explain_gradient_gives_the_same_chain(pair):
    name, (original, renamed) = pair
    for parameter in _parameters(original):
        texts = [chain.render(tracer.explain_gradient(trace, parameter, step=1)) for trace in (original, renamed)]
        _same_text(name, *texts)


def test_diagnose_run_gives_the_same_diagnosis(pair):
    name, (original, renamed) = pair
    _same_text(name, diagnose.render(tracer.diagnose_run(original)), diagnose.render(tracer.diagnose_run(renamed)))


def test_check_gradients_gives_the_same_numbers(pair):
    _, (original, renamed) = pair
    reports = [tracer.check_gradients(trace, steps=(0, 2)) for trace in (original, renamed)]
    assert reports[0].checks and reports[0].worst.error < 1e-6
    assert [(c.name, c.backprop, c.numeric) for c in reports[0].checks] == \
        [(c.name, c.backprop, c.numeric) for c in reports[1].checks]
    assert reports[0].skipped == reports[1].skipped and reports[0].unresolved == reports[1].unresolved


def _hand(trace, names, tmp_path, slip):
    """check.check over a hand file of `names` with the engine's values, the first one off by `slip`."""
    lines = []
    for k, text in enumerate(names):
        value = check.engine_value(trace, check.parse_name(text, trace))
        lines.append(f"{text},{value + (slip if k == 0 else 0.0)!r}")
    path = tmp_path / "hand.csv"
    path.write_text("name,value\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return check.check(trace, check.read_hand(path, trace))


def test_a_hand_check_gives_the_same_verdicts(pair, tmp_path):
    name, (original, renamed) = pair
    names = NETS[name][1]
    right = [_hand(trace, names, tmp_path, 0.0) for trace in (original, renamed)]
    assert all(r.right for results in right for r in results)
    slipped = [_hand(trace, names, tmp_path, 0.25) for trace in (original, renamed)]
    assert not next(r for r in slipped[0] if r.entry.text == names[0]).right
    for a, b in zip(*slipped):
        assert (a.right, a.kind, a.engine) == (b.right, b.kind, b.engine)
        _same_text(name, a.explanation, b.explanation)


@pytest.mark.libreoffice
def test_verify_workbook_gives_the_same_report():
    """Every kind and its twin, recomputed by LibreOffice in one batch (verify_workbooks)."""
    traces = [trace for name in NETS for trace in _pair(name)]
    reports = tracer.verify_workbooks(traces)
    for name, original, renamed in zip(NETS, reports[0::2], reports[1::2]):
        assert original.ok, f"{name}: {original.summary()}"
        assert renamed.ok, f"{name} renamed: {renamed.summary()}"
        assert original.cells == renamed.cells > 0, name
        assert original.cells_by_sheet == renamed.cells_by_sheet, name

