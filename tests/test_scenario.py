"""Bad input: one line naming the file, the key and the problem, exit code 2, no traceback."""
import copy
import datetime
import math
import os
import tomllib

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

from tracer.training import engine, scenario as scenario_module, templates
from tracer.errors import ScenarioError, shorten
from tracer.training.trace import Trace
from tests.conftest import assert_refused, write_toml

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


def _refusal(tmp_path, invoke, text, edits):
    """`tracer run -o` on `text` with each (old, new) edit made once: the one-line refusal (exit 2)."""
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    result = invoke("run", write_toml(tmp_path, text), "-o", tmp_path / "out.xlsx")
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("Error:"), line
    return line


@pytest.mark.parametrize("edits,detail", [
    ([('lr = 0.1', 'lr = 0.1\n[training]\nbatch = 1')], "batches of 1 sample"),
    ([('[[1.0, 2.0], [3.0, 4.0]]\ntargets = [[1.0], [0.0]]', '[[1.0, 2.0]]\ntargets = [[1.0]]')], "batches of 1 sample"),
    ([THREE_ROWS, ('lr = 0.1', 'lr = 0.1\n[training]\nbatch = 2')], "the last batch of each epoch has 1 sample (3 samples in batches of 2)"),
], ids=["batch 1", "one sample", "last batch of 1"])
def test_batchnorm_refuses_a_batch_of_one_sample(tmp_path, invoke, edits, detail):
    """PyTorch: 'Expected more than 1 value per channel when training'; x̂ would be 0 for every input."""
    line = _refusal(tmp_path, invoke, BATCHNORM, edits)
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
    line = _refusal(tmp_path, invoke, GOOD, edits)
    assert f": {key}: " in line, line
    assert not (tmp_path / "out.xlsx").exists()
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


# ---------------------------------------------------------------- values of the wrong type

NAME_KEYS = [("layers.0.activation", "layers[0].activation"), ("layers.0.init", "layers[0].init"),
             ("layers.0.bias_init", "layers[0].bias_init"), ("layers.0.kind", "layers[0].kind"),
             ("loss.name", "loss.name"), ("loss.reduction", "loss.reduction"), ("optimizer.name", "optimizer.name"),
             ("optimizer.schedule", "optimizer.schedule"), ("data.normalize", "data.normalize")]
WRONG_TYPES = {"array": "[1]", "table": "{a = 1}", "number": "3", "boolean": "true", "date": "1979-05-27",
               "nested array": "[[[1]]]"}


@pytest.mark.parametrize("path,key", NAME_KEYS, ids=[k for k, _ in NAME_KEYS])
@pytest.mark.parametrize("kind", WRONG_TYPES)
def test_a_name_of_the_wrong_type_is_refused(tmp_path, invoke, path, key, kind):
    scenario = write_toml(tmp_path, GOOD)
    result = invoke("run", scenario, "--set", f"{path}={WRONG_TYPES[kind]}", "-o", tmp_path / "o.xlsx",
                    "--trace", tmp_path / "t.csv")
    assert_refused(result, scenario, key, "must be a name (one of: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenario.toml"]


NUMBER_CASES = [
    ("steps = 2", "steps = true", "steps", "must be an integer, not true"),
    ("steps = 2", "steps = 2.0", "steps", "must be an integer, not 2.0"),
    ("steps = 2", 'steps = "2"', "steps", "must be an integer, not '2'"),
    ("steps = 2", "steps = 2\nseed = 1979-05-27", "seed", "must be an integer, not the date 1979-05-27"),
    ("lr = 0.1", "lr = true", "optimizer.lr", "must be a number, not true"),
    ("lr = 0.1", 'lr = "0.1"', "optimizer.lr", "must be a number, not '0.1'"),
    ("lr = 0.1", "lr = [0.1]", "optimizer.lr", "must be a number, not an array [0.1]"),
    ("lr = 0.1", "lr = 07:32:00", "optimizer.lr", "must be a number, not the time 07:32:00"),
    ("lr = 0.1", "lr = 1979-05-27T07:32:00Z", "optimizer.lr", "not the date-time 1979-05-27T07:32:00+00:00"),
    ("lr = 0.1", "lr = 1" + "0" * 400, "optimizer.lr", "must be a finite number"),
    ("lr = 0.1", "lr = 1" + "0" * 5000, "", "malformed TOML"),
    ("lr = 0.1", "lr = nan", "optimizer.lr", "must be a finite number, not nan"),
    ("units = 2\n", "units = 2\ntrain_bias = 1\n", "layers[0].train_bias", "must be true or false, not 1"),
    ("[[1.0, 2.0], [3.0, 4.0]]", "[[1.0, 2.0], [3.0, true]]", "data.inputs", "non-numeric value true"),
    ("[[1.0, 2.0], [3.0, 4.0]]", "[[1.0, 2.0], [3.0, [4.0]]]", "data.inputs", "non-numeric value an array [4.0]"),
    ("[[1.0, 2.0], [3.0, 4.0]]", "[[], []]", "data.inputs", "row 0 is empty"),
    ("[[1.0, 2.0], [3.0, 4.0]]", "[]", "data.inputs", "must be a non-empty list of rows"),
    ("[[1.0, 2.0], [3.0, 4.0]]", "[1.0, 2.0]", "data.inputs", "must be a non-empty list of rows"),
    ("[[1.0, 2.0], [3.0, 4.0]]", "[[1.0, 2.0], [3.0, 1" + "0" * 400 + "]]", "data.inputs", "NaN or infinite"),
    ("[optimizer]", "[training]\nbatch = true\n[optimizer]", "training.batch", "not true"),
    ('name = "t"', 'data = 3\nname = "t"', "", "malformed TOML"),
    ("units = 2\n", 'units = 2\nbias = [[1.0], [2.0]]\n', "layers[0].bias", "non-numeric value an array [1.0]"),
    ("units = 2\n", "units = 2\nhigh = 1e308\nlow = -1e308\n", "layers[0].high", "overflows"),
]


@pytest.mark.parametrize("old,new,key,problem", NUMBER_CASES, ids=[c[1][:30] for c in NUMBER_CASES])
def test_every_getter_checks_the_type_first(tmp_path, invoke, old, new, key, problem):
    assert old in GOOD
    scenario = write_toml(tmp_path, GOOD.replace(old, new, 1))
    result = invoke("run", scenario, "--trace", tmp_path / "t.csv")
    message = assert_refused(result, scenario, problem)
    assert f": {key}: " in message if key else True
    assert not (tmp_path / "t.csv").exists()


def test_a_date_with_overrides_is_refused_not_a_crash(tmp_path, invoke):
    scenario = write_toml(tmp_path, GOOD.replace("steps = 2", "steps = 2\nseed = 1979-05-27"))
    for extra in (("--steps", "3"), ("--set", "optimizer.lr=0.5")):
        result = invoke("run", scenario, *extra, "--trace", tmp_path / "t.csv")
        assert_refused(result, "seed", "the date 1979-05-27")


TOML_SCALARS = st.one_of(
    st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1), st.integers(min_value=2**63, max_value=2**80),
    st.floats(allow_nan=False), st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    st.dates(), st.times(),
    st.datetimes(timezones=st.one_of(st.none(), st.integers(-1439, 1439).map(
        lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))))),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
TOML_TABLES = st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=8), TOML_VALUES, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TOML_TABLES)
def test_dump_toml_writes_every_toml_type(document):
    text = scenario_module.dump_toml(document)
    assert tomllib.loads(text) == document


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TOML_VALUES | st.sampled_from([float("inf"), float("-inf")]))
def test_toml_value_reads_back_as_the_value(value):
    """One value as TOML (what benchmarks/fuzz.py writes into --set arguments)."""
    assert tomllib.loads(f"v = {scenario_module.toml_value(value)}")["v"] == value
    assert math.isnan(tomllib.loads(f"v = {scenario_module.toml_value(float('nan'))}")["v"])


def _key_paths(node, path=()):
    """Every key path of a parsed scenario, at any depth (list indices included)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield path + (key,)
        yield from _key_paths(value, path + (key,))


VALID = tomllib.loads(GOOD.replace("[optimizer]", '[loss]\nname = "half_sse"\n[training]\nbatch = 1\nclip_norm = 1.0'
                                   '\n[diagnosis]\nvanishing = 1e-6\n[optimizer]\nname = "adam"\nschedule = "step"'
                                   '\ngamma = 0.5\nstep_size = 2\nbetas = [0.9, 0.99]'))
BASES = [VALID] + [tomllib.loads(templates.read(name)) for name in templates.names()]
BASE_AND_PATH = st.sampled_from(BASES).flatmap(
    lambda base: st.tuples(st.just(base), st.sampled_from(sorted(_key_paths(base), key=str))))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base_and_path=BASE_AND_PATH, value=TOML_VALUES | st.text(max_size=20))
def test_any_value_at_any_key_is_a_scenario_error_or_valid(base_and_path, value):
    """Any TOML value (or a string as --set gives it) at any key of a valid scenario or template."""
    base, path = base_and_path
    raw = copy.deepcopy(base)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        loaded = scenario_module.from_dict(raw, source="fuzz.toml")
    except ScenarioError as exc:
        assert str(exc).startswith("fuzz.toml: ") and "\n" not in str(exc) and len(str(exc)) < 400
    else:
        assert tomllib.loads(loaded.text) == loaded.raw


# ---------------------------------------------------------------- sizes, files, text, messages

@pytest.mark.parametrize("steps", [100_000_000_000, 9223372036854775807, 10_000_000])
def test_a_run_too_large_for_memory_is_refused_at_load_time(tmp_path, steps):
    with pytest.raises(ScenarioError) as caught:
        scenario_module.load(write_toml(tmp_path, GOOD), steps=steps)
    assert caught.value.key == "steps" and "above tracer's cap of 2 GiB" in str(caught.value)
    fitting = int(str(caught.value).split("use at most ")[1].split(" steps")[0].replace(",", ""))
    loaded = scenario_module.load(write_toml(tmp_path, GOOD), steps=fitting)
    assert Trace.bytes_needed(loaded, fitting, loaded.batch_size) <= 2 * 2**30
    with pytest.raises(ScenarioError):
        scenario_module.load(write_toml(tmp_path, GOOD), steps=fitting + 1)


def test_a_network_too_wide_for_memory_names_the_layer(tmp_path):
    text = GOOD.replace("units = 2\nactivation = \"sigmoid\"", "units = 200000000\nactivation = \"sigmoid\"")
    with pytest.raises(ScenarioError) as caught:
        scenario_module.load(write_toml(tmp_path, text), steps=1)
    assert caught.value.key == "layers[0].units" and "one step would need" in str(caught.value)


DATA = 'file = "d.csv"\ninput_columns = ["a", "b"]\ntarget_columns = ["y"]'
INLINE = 'inputs = [[1.0, 2.0], [3.0, 4.0]]\ntargets = [[1.0], [0.0]]'


def _with_data_file(tmp_path, name="d.csv"):
    return write_toml(tmp_path, GOOD.replace(INLINE, DATA.replace("d.csv", name)))


def test_data_file_with_a_byte_order_mark(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbfa,b,y\n1,2,0\n3,4,1\n")
    loaded = scenario_module.load(_with_data_file(tmp_path))
    assert loaded.inputs.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("kind", ["not utf-8", "huge field", "directory", "fifo", "device", "too large", "missing"])
def test_data_file_problems_are_one_line(tmp_path, invoke, kind):
    target = tmp_path / "d.csv"
    name, expected = "d.csv", {
        "not utf-8": "is not UTF-8 text (byte 0xff on line 2)", "huge field": "line 2: field larger than field limit",
        "directory": "is not a regular file", "fifo": "is not a regular file", "device": "is not a regular file",
        "too large": "larger than the 64 MiB", "missing": "cannot read"}[kind]
    if kind == "not utf-8":
        target.write_bytes(b"a,b,y\n1,\xff2,0\n")
    elif kind == "huge field":
        target.write_text("a,b,y\n1," + "2" * 140_000 + ",0\n", encoding="utf-8")
    elif kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        name = "/dev/zero"
    elif kind == "too large":
        with open(target, "wb") as handle:
            handle.truncate(65 * 2**20)
    scenario = _with_data_file(tmp_path, name)
    result = invoke("run", scenario, "--trace", tmp_path / "t.csv")
    assert_refused(result, scenario, "data.file", expected)
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("char", ["\x07", "\x00", "\x1b", "\ufffe", "\uffff", "\udcff"])
def test_text_a_workbook_cannot_hold_is_refused(tmp_path, invoke, char):
    scenario = write_toml(tmp_path, GOOD)
    result = invoke("run", scenario, "--set", f"description={char}x", "-o", tmp_path / "o.xlsx", "--trace", tmp_path / "t.csv")
    assert_refused(result, scenario, "description: ", f"U+{ord(char):04X}")
    result = invoke("run", scenario, "--set", f"layers.0.activation=sig{char}", "-o", tmp_path / "o.xlsx")
    assert_refused(result, scenario, "layers[0].activation", f"U+{ord(char):04X}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenario.toml"]


@pytest.mark.parametrize("char", ["\ufffe", "\uffff"])
def test_a_comment_a_workbook_cannot_hold_names_its_line(tmp_path, invoke, char):
    scenario = write_toml(tmp_path, GOOD.replace("[optimizer]", f"# a comment {char}\n[optimizer]"))
    result = invoke("run", scenario, "-o", tmp_path / "o.xlsx")
    assert_refused(result, scenario, "line 13: ", f"U+{ord(char):04X}", "XML 1.0")
    assert not (tmp_path / "o.xlsx").exists()


def test_echoed_values_are_shortened(tmp_path, invoke):
    scenario = write_toml(tmp_path, GOOD)
    long = "x" * 100_000
    for options in ([f"layers.0.activation={long}"], [f"layers.0.{long}=1"], [f"optimizer.lr={long}"],
                    ["optimizer.name=adam", f"optimizer.betas=[{', '.join(['1'] * 20_000)}]"], [long],
                    [f"x\n{long}=1"]):
        message = assert_refused(invoke("run", scenario, *(f"--set={option}" for option in options)), scenario)
        assert len(message) < 400 and "…" in message


def test_shorten_keeps_both_ends():
    assert shorten("abc", 80) == "abc"
    text = shorten("a" * 50 + "b" * 50, 21)
    assert len(text) == 21 and text.startswith("a") and text.endswith("b") and "…" in text


@pytest.mark.parametrize("line_break", ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_shorten_escapes_every_line_break(line_break):
    """Every character str.splitlines breaks at is written as an escape: a message stays one line."""
    for value in (f"tanh{line_break}", f"a{line_break}b" * 100, [f"x{line_break}"]):
        text = shorten(value, 60)
        assert len(text.splitlines()) == 1 and line_break not in text and len(text) <= 60


@pytest.mark.parametrize("digits", [30, 3000])
def test_steps_beyond_any_memory_are_refused_in_one_short_line(tmp_path, invoke, digits):
    """The byte count of a run of 10^3000 steps is beyond a float: the message gives its order."""
    message = assert_refused(invoke("diagnose", write_toml(tmp_path, GOOD), "--steps", "9" * digits), "steps:", "PiB")
    assert len(message) < 400


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("normalize", ["standard", "minmax"])
def test_normalising_extreme_inputs_raises_no_warning(normalize):
    """Statistics beyond the largest double are refused (README), without a numpy warning."""
    raw = tomllib.loads(GOOD)
    raw["data"]["inputs"] = [[1.7976931348623157e308, 1.0], [-1.7976931348623157e308, 2.0]]
    raw["data"]["normalize"] = normalize
    with pytest.raises(scenario_module.ScenarioError, match="data.normalize.*input column 0"):
        scenario_module.from_dict(raw)
    raw["data"]["inputs"] = [[1e150, 1.0], [-1e150, 2.0]]
    loaded = scenario_module.from_dict(raw)
    assert loaded.inputs[:, 1].tolist() == ([-1.0, 1.0] if normalize == "standard" else [0.0, 1.0])
    engine.run(loaded)


@pytest.mark.libreoffice
def test_storable_unusual_text_reaches_the_scenario_sheet_whole(tmp_path, invoke, soffice):
    """What the loader lets through (tab, DEL, C1 controls, U+2028, emoji, combining and RTL text,
    lines longer than a cell holds) LibreOffice reads back from the Scenario sheet unchanged."""
    from openpyxl import load_workbook
    from tracer.recalc import libreoffice
    unusual = "tab\there DEL\x7f NEL\x85 C1\x9f LS\u2028PS\u2029 😀 e\u0301 עברית \u00a0 \ufffd \U0010fffd"
    comment = "".join(char for char in unusual if char not in "\x7f\u2028\u2029")   # TOML refuses DEL in a comment
    text = GOOD.replace('name = "t"', f'name = "t"\ndescription = {scenario_module._toml_string(unusual)}\n# {comment}'
                        f'\n# {"long " * 4000}\n# {"longer😀" * 6000}')
    scenario = write_toml(tmp_path, text)
    cases = ([], [f"name={unusual}"])
    for overrides in cases:
        out = tmp_path / f"o{len(overrides)}.xlsx"
        result = invoke("run", scenario, "-o", out, *(f"--set={o}" for o in overrides))
        assert result.exit_code == 0, result.output
    recomputed = libreoffice.convert_many([tmp_path / f"o{len(o)}.xlsx" for o in cases], "xlsx", tmp_path / "lo")
    for overrides, again in zip(cases, recomputed):
        loaded = scenario_module.load(scenario, overrides=overrides)
        assert loaded.description == unusual and loaded.name == (unusual if overrides else "t")
        sheet = load_workbook(again, read_only=True)["Scenario"]
        lines = ["".join(str(cell) for cell in row if cell is not None) for row in sheet.iter_rows(values_only=True)]
        while lines and not lines[-1]:
            lines.pop()
        assert lines == loaded.text.splitlines()
        if not overrides:   # the comment (split at NEL, as str.splitlines does) and the long line, whole
            assert "C1\x9f LSPS 😀 e\u0301 עברית \u00a0 \ufffd \U0010fffd" in "\n".join(lines)
            assert max(map(len, lines)) == 2 + 7 * 6000   # beyond a cell's 32,767 UTF-16 units
