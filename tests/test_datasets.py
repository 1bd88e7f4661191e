"""The shipped digits data set, and the template that trains on it (digits-64-32-10)."""
import tomllib

import numpy as np
import pytest

from tracer.training import datasets, engine, inputs, scenario as scenario_module, templates
from tracer.workbook import writer

TEMPLATE = "digits-64-32-10"
# The first image of UCI's optdigits.tes (the data set's own file), row by row, and its digit.
FIRST_IMAGE = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
               0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
PER_DIGIT = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]   # the data set's description


def test_digits_are_the_uci_test_set():
    pixels, labels = datasets.digits()
    assert pixels.shape == (1797, 64) and labels.shape == (1797,)
    assert pixels.min() == 0 and pixels.max() == 16 and (pixels == np.round(pixels)).all()
    assert list(np.bincount(labels)) == PER_DIGIT
    assert pixels[0].tolist() == FIRST_IMAGE and labels[0] == 0
    assert labels[:10].tolist() == list(range(10))


def test_the_csv_one_hot_columns_are_the_digit():
    rows = inputs.read_csv(templates.data_file(datasets.DIGITS_FILE))
    header = rows[0]
    assert header == [*datasets.PIXELS, "digit", *datasets.ONE_HOT]
    table = np.array(rows[1:], dtype=float)
    one_hot = table[:, [header.index(name) for name in datasets.ONE_HOT]]
    assert (one_hot == np.eye(10)[table[:, header.index("digit")].astype(int)]).all()


def test_a_scenario_can_name_the_csv_columns(tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text(
        f'steps = 1\n[data]\nfile = "{templates.data_file(datasets.DIGITS_FILE).as_posix()}"\n'
        f"input_columns = {list(datasets.PIXELS)}\ntarget_columns = {list(datasets.ONE_HOT)}\n"
        '[[layers]]\nunits = 10\nactivation = "softmax"\n[loss]\nname = "softmax_ce"\n[optimizer]\nlr = 0.1\n',
        encoding="utf-8")
    loaded = scenario_module.load(str(path))
    pixels, labels = datasets.digits()
    assert (loaded.inputs == pixels).all() and (loaded.targets.argmax(axis=1) == labels).all()


def test_the_template_holds_the_first_images_scaled_and_one_hot():
    raw = tomllib.loads(templates.read(TEMPLATE))
    pixels, labels = datasets.digits()
    x, t = np.array(raw["data"]["inputs"]), np.array(raw["data"]["targets"])
    assert (x * 16 == pixels[:len(x)]).all()
    assert (t == np.eye(10)[labels[:len(t)]]).all()
    assert len(x) == 100 and sorted(set(labels[:len(x)])) == list(range(10))


def test_the_template_trains_to_a_falling_loss():
    trace = engine.run(scenario_module.load(TEMPLATE))
    assert trace.scenario.widths == [64, 32, 10]
    assert trace.scenario.batch_size == 10 and trace.steps >= 24
    epoch = len(trace.scenario.inputs) // trace.scenario.batch_size   # steps per epoch
    first, last = trace.loss[:epoch].mean(), trace.loss[-epoch:].mean()
    assert 2.0 < trace.loss[0] < 2.7                     # about ln 10: a uniform guess over 10 digits
    assert last < 0.4 * first, (first, last)            # the same images, three epochs later
    assert (np.diff(trace.loss.reshape(-1, epoch).mean(axis=1)) < 0).all()   # every epoch lower


def test_the_large_templates_are_the_same_for_the_tests_and_the_fuzz_campaign():
    from tests.test_fuzz import fuzz
    assert fuzz.LARGE_TEMPLATES == templates.LARGE and set(templates.LARGE) <= set(templates.names())
    assert TEMPLATE in templates.LARGE and TEMPLATE not in fuzz.TEMPLATES


def test_the_template_fits_a_sheet():
    writer.check_scenario_fits(scenario_module.load(TEMPLATE))


@pytest.mark.libreoffice(workbooks=lambda: engine.run(scenario_module.load(TEMPLATE, steps=2)))
def test_the_templates_first_steps_verify_in_libreoffice(recomputed):
    """Every formula of the first 2 steps, the second reading the first's update (all 30 steps:
    `tracer verify digits-64-32-10`, timed by benchmarks/digits.py: about a minute)."""
    report = recomputed.report
    assert report.ok, report.summary()
    assert report.cells > 60_000
