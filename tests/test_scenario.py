"""Bad input: one line naming the file, the key and the problem, exit code 2, no traceback."""
import pytest

from tracer import scenario as scenario_module
from tests.conftest import write_toml

GOOD = """
name = "t"
steps = 2
[data]
inputs = [[1.0, 2.0], [3.0, 4.0]]
targets = [[1.0], [0.0]]
[[layers]]
units = 2
activation = "sigmoid"
[[layers]]
units = 1
activation = "identity"
[optimizer]
lr = 0.1
"""

CASES = [
    ("unknown activation", ('activation = "sigmoid"', 'activation = "sigmod"'),
     ["layers[0].activation", "unknown activation 'sigmod'", "did you mean 'sigmoid'"]),
    ("unknown init", ('units = 2\n', 'units = 2\ninit = "xavier"\n'), ["layers[0].init", "unknown init 'xavier'"]),
    ("unknown loss", ('[optimizer]', '[loss]\nname = "hinge"\n[optimizer]'), ["loss.name", "unknown name 'hinge'"]),
    ("unknown optimizer", ('lr = 0.1', 'lr = 0.1\nname = "adamw"'), ["optimizer.name", "unknown name 'adamw'"]),
    ("typo key", ('units = 2\n', 'unitz = 2\nunits = 2\n'), ["layers[0].unitz", "unknown key", "did you mean 'units'"]),
    ("typo top key", ('steps = 2', 'steps = 2\nsead = 3'), ["sead", "did you mean 'seed'"]),
    ("missing key", ('steps = 2\n', ''), ["steps", "missing required key"]),
    ("missing lr", ('lr = 0.1', ''), ["optimizer.lr", "missing required key"]),
    ("width mismatch", ('units = 1\nactivation = "identity"', 'units = 2\nactivation = "identity"'),
     ["layers[1].units", "2 units", "1 target"]),
    ("ragged", ('[[1.0, 2.0], [3.0, 4.0]]', '[[1.0, 2.0], [3.0]]'), ["data.inputs", "ragged rows"]),
    ("non-numeric", ('[[1.0, 2.0], [3.0, 4.0]]', '[[1.0, 2.0], [3.0, "x"]]'), ["data.inputs", "non-numeric value 'x'"]),
    ("nan", ('[[1.0, 2.0], [3.0, 4.0]]', '[[1.0, nan], [3.0, 4.0]]'), ["data.inputs", "NaN or infinite"]),
    ("inf", ('targets = [[1.0], [0.0]]', 'targets = [[inf], [0.0]]'), ["data.targets", "NaN or infinite"]),
    ("zero lr", ('lr = 0.1', 'lr = 0'), ["optimizer.lr", "must be positive"]),
    ("negative lr", ('lr = 0.1', 'lr = -0.1'), ["optimizer.lr", "must be positive"]),
    ("zero steps", ('steps = 2', 'steps = 0'), ["steps", "must be at least 1"]),
    ("softmax hidden", ('activation = "sigmoid"', 'activation = "softmax"'), ["layers[0].activation", "output layer only"]),
    ("explicit shape", ('units = 2\nactivation = "sigmoid"', 'units = 2\nactivation = "sigmoid"\ninit = "explicit"\nweights = [[1.0, 2.0]]'),
     ["layers[0].weights", "shape 1×2", "(2, 2)"]),
    ("malformed", ('steps = 2', 'steps = = 2'), ["malformed TOML"]),
    ("slope on sigmoid", ('activation = "sigmoid"', 'activation = "sigmoid"\nslope = 0.1'), ["layers[0].slope", "does not apply"]),
    ("batch too large", ('lr = 0.1', 'lr = 0.1\n[training]\nbatch = 5'), ["training.batch", "larger than the 2 samples"]),
    ("bce needs sigmoid", ('lr = 0.1', 'lr = 0.1\n[loss]\nname = "bce"'), ["layers[1].activation", "needs a sigmoid output"]),
]


@pytest.mark.parametrize("label,edit,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(tmp_path, invoke, label, edit, expected):
    old, new = edit
    assert old in GOOD
    path = write_toml(tmp_path, GOOD.replace(old, new, 1))
    result = invoke("run", path, "-o", tmp_path / "out.xlsx")
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert str(path) in message
    for fragment in expected:
        assert fragment in message
    assert not (tmp_path / "out.xlsx").exists()


def test_good_scenario_loads(tmp_path):
    loaded = scenario_module.load(write_toml(tmp_path, GOOD))
    assert loaded.widths == [2, 2, 1] and loaded.optimizer_params == {"lr": 0.1, "weight_decay": 0.0, "schedule": "constant"}


def test_unknown_template_or_missing_file(invoke):
    result = invoke("run", "leaky-relu-explotion")
    assert result.exit_code == 2
    assert "did you mean 'leaky-relu-explosion'" in result.output


def test_unreadable_file(tmp_path, invoke):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00bad")
    result = invoke("run", path)
    assert result.exit_code == 2 and "cannot read the file" in result.output


def test_data_file_with_nan(tmp_path, invoke):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,nan,1\n", encoding="utf-8")
    text = GOOD.replace('inputs = [[1.0, 2.0], [3.0, 4.0]]\ntargets = [[1.0], [0.0]]',
                        'file = "d.csv"\ninput_columns = ["a", "b"]\ntarget_columns = ["y"]')
    result = invoke("run", write_toml(tmp_path, text), "--trace", tmp_path / "t.csv")
    assert result.exit_code == 2 and "line 3: NaN or infinite value" in result.output


def test_data_file_loads(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,4,1\n", encoding="utf-8")
    text = GOOD.replace('inputs = [[1.0, 2.0], [3.0, 4.0]]\ntargets = [[1.0], [0.0]]',
                        'file = "d.csv"\ninput_columns = ["b", "a"]\ntarget_columns = ["y"]')
    loaded = scenario_module.load(write_toml(tmp_path, text))
    assert loaded.inputs.tolist() == [[2.0, 1.0], [4.0, 3.0]] and loaded.targets.tolist() == [[0.0], [1.0]]


def test_set_override_and_its_errors(tmp_path, invoke):
    path = write_toml(tmp_path, GOOD)
    loaded = scenario_module.load(path, overrides=["optimizer.lr=0.5", "layers.0.activation=tanh"])
    assert loaded.optimizer_params["lr"] == 0.5 and loaded.layers[0].activation == "tanh"
    assert 'activation = "tanh"' in loaded.text
    result = invoke("run", path, "--set", "layers.7.units=3")
    assert result.exit_code == 2 and "not an index below 2" in result.output
    result = invoke("run", path, "--set", "optimizer.lrr=3")
    assert result.exit_code == 2 and "did you mean 'lr'" in result.output


def test_dump_toml_round_trips(tmp_path):
    loaded = scenario_module.load(write_toml(tmp_path, GOOD))
    again = scenario_module.loads(scenario_module.dump_toml(loaded.raw))
    assert again.raw == loaded.raw


def test_constant_input_column_cannot_be_normalised(tmp_path, invoke):
    text = GOOD.replace("inputs = [[1.0, 2.0], [3.0, 4.0]]", "inputs = [[1.0, 2.0], [1.0, 4.0]]\nnormalize = \"standard\"")
    result = invoke("run", write_toml(tmp_path, text), "--trace", tmp_path / "t.csv")
    assert result.exit_code == 2 and "input column 0 is constant" in result.output


def test_residual_needs_equal_widths_and_a_hidden_layer(tmp_path, invoke):
    text = GOOD.replace('units = 2\nactivation = "sigmoid"', 'units = 3\nactivation = "sigmoid"\nresidual = true')
    result = invoke("run", write_toml(tmp_path, text), "--trace", tmp_path / "t.csv")
    assert result.exit_code == 2 and "needs as many units as the layer below (2)" in result.output
    text = GOOD.replace('units = 1\nactivation = "identity"', 'units = 1\nactivation = "identity"\nresidual = true')
    result = invoke("run", write_toml(tmp_path, text), "--trace", tmp_path / "t.csv")
    assert result.exit_code == 2 and "not the output layer" in result.output


BATCHNORM = GOOD.replace('[[layers]]\nunits = 1', '[[layers]]\nkind = "batchnorm"\n[[layers]]\nunits = 1', 1)
THREE_ROWS = ('[[1.0, 2.0], [3.0, 4.0]]\ntargets = [[1.0], [0.0]]', '[[1.0, 2.0], [3.0, 4.0], [0.5, 1.0]]\ntargets = [[1.0], [0.0], [1.0]]')


@pytest.mark.parametrize("edits,detail", [
    ([('lr = 0.1', 'lr = 0.1\n[training]\nbatch = 1')], "batches of 1 sample"),
    ([('[[1.0, 2.0], [3.0, 4.0]]\ntargets = [[1.0], [0.0]]', '[[1.0, 2.0]]\ntargets = [[1.0]]')], "batches of 1 sample"),
    ([THREE_ROWS, ('lr = 0.1', 'lr = 0.1\n[training]\nbatch = 2')], "the last batch of each epoch has 1 sample (3 samples in batches of 2)"),
], ids=["batch 1", "one sample", "last batch of 1"])
def test_batchnorm_refuses_a_batch_of_one_sample(tmp_path, invoke, edits, detail):
    """PyTorch: 'Expected more than 1 value per channel when training'; x̂ would be 0 for every input."""
    text = BATCHNORM
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    result = invoke("run", write_toml(tmp_path, text), "-o", tmp_path / "out.xlsx")
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("Error:")
    assert "training.batch" in line and "layers[1]" in line and "more than 1 sample" in line and detail in line, line
    assert not (tmp_path / "out.xlsx").exists()


def test_batchnorm_with_batches_of_two_or_more_loads(tmp_path):
    text = BATCHNORM.replace(*THREE_ROWS).replace('lr = 0.1', 'lr = 0.1\n[training]\nbatch = 2')
    scenario_module.load(write_toml(tmp_path, text.replace("batch = 2", "batch = 3")))
    scenario_module.load(write_toml(tmp_path, BATCHNORM.replace('lr = 0.1', 'lr = 0.1\n[training]\nbatch = 2')))


@pytest.mark.parametrize("edits,key,fragments", [
    ([('units = 1\nactivation = "identity"', 'units = 1\nactivation = "softmax"\n[loss]\nname = "softmax_ce"')],
     "layers[1].units", ["softmax of a single unit is the constant 1", "sigmoid", "bce"]),
    ([('units = 1\nactivation = "identity"', 'units = 2\nactivation = "softmax"'),
      ('targets = [[1.0], [0.0]]', 'targets = [[1.0, 0.0], [0.0, 1.0]]')],
     "loss.name", ["softmax output needs loss softmax_ce", "half_sse"]),
    ([('units = 1\nactivation = "identity"', 'units = 1\nactivation = "sigmoid"\n[loss]\nname = "bce"'),
      ('targets = [[1.0], [0.0]]', 'targets = [[1.0], [1.5]]')],
     "data.targets", ["row 1", "1.5", "outside [0, 1]", "bce"]),
    ([('units = 1\nactivation = "identity"', 'units = 2\nactivation = "softmax"\n[loss]\nname = "softmax_ce"'),
      ('targets = [[1.0], [0.0]]', 'targets = [[1.0, 0.0], [-0.25, 1.0]]')],
     "data.targets", ["row 1", "-0.25", "outside [0, 1]", "softmax_ce"]),
], ids=["softmax one unit", "softmax without softmax_ce", "bce target 1.5", "softmax_ce target -0.25"])
def test_losses_whose_gradient_would_be_wrong_are_refused(tmp_path, invoke, edits, key, fragments):
    text = GOOD
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    result = invoke("run", write_toml(tmp_path, text), "-o", tmp_path / "out.xlsx")
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("Error:") and f": {key}: " in line, line
    for fragment in fragments:
        assert fragment in line, line


def test_cross_entropy_targets_need_not_sum_to_one(tmp_path):
    text = GOOD.replace('units = 1\nactivation = "identity"', 'units = 3\nactivation = "softmax"\n[loss]\nname = "softmax_ce"')
    text = text.replace('targets = [[1.0], [0.0]]', 'targets = [[0.3, 0.9, 0.0], [0.0, 0.0, 0.0]]')
    assert scenario_module.load(write_toml(tmp_path, text)).loss == "softmax_ce"


@pytest.mark.parametrize("normalize,inputs", [("minmax", "[[1e308, 1.0], [-1e308, 2.0]]"), ("standard", "[[1e200, 1.0], [-1e200, 2.0]]"),
                                              ("standard", "[[1.7e308, 1.0], [1.7e308, 2.0], [1.0, 3.0]]")],
                         ids=["minmax range", "standard variance", "standard mean"])
def test_normalisation_that_overflows_is_refused(tmp_path, invoke, normalize, inputs):
    """max − min (or Σx, or Σ(x − μ)²) beyond the largest double: numpy turns finite data into 0 or NaN,
    the spreadsheet into #NUM!; refused before anything runs."""
    text = GOOD.replace("inputs = [[1.0, 2.0], [3.0, 4.0]]", f'inputs = {inputs}\nnormalize = "{normalize}"')
    if inputs.count("[") == 4:
        text = text.replace("targets = [[1.0], [0.0]]", "targets = [[1.0], [0.0], [1.0]]")
    result = invoke("run", write_toml(tmp_path, text), "-o", tmp_path / "out.xlsx")
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and ": data.normalize: input column 0" in line and "overflow" in line, line
