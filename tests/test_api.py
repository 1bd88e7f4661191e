"""The documented Python API at the top level of the package, next to the sub-modules' own
functions; the API tour example runs."""
import os
import subprocess
import sys
from pathlib import Path
import re

import pytest

import tracer
from tracer.explain import chain, diagnose, gradcheck
from tracer.recalc import verify
from tracer.workbook import writer

ROOT = Path(__file__).resolve().parent.parent


def test_top_level_names_are_the_sub_modules_functions():
    # the functions taking a trace are wrapped to take a scenario, a name or a path as well
    unwrapped = lambda function: getattr(function, "__wrapped__", function)  # noqa: E731
    assert unwrapped(tracer.write_workbook) is writer.write
    assert unwrapped(tracer.verify_workbook) is verify.verify and tracer.verify_workbooks is verify.verify_many
    assert unwrapped(tracer.diagnose_run) is diagnose.diagnose
    assert unwrapped(tracer.explain_gradient) is chain.explain and tracer.render_explanation is chain.render
    assert unwrapped(tracer.check_gradients) is gradcheck.check
    assert set(tracer.__all__) <= set(dir(tracer))
    # the sub-modules keep their names: tracer.recalc.verify is still the module
    assert verify.verify and tracer.recalc.verify is verify


def test_top_level_api_runs_a_template(tmp_path):
    trace = tracer.run(tracer.load("linear-regression"))
    assert trace.loss[0] == 900.0                      # (0.5·170 + 10 − 65)² as in the README
    assert tracer.check_gradients(trace, steps=(0,)).worst.error < 1e-6
    explained = tracer.explain_gradient(trace, "W1[0,0]", step=0)
    assert explained.product == explained.engine
    assert isinstance(tracer.diagnose_run(trace).findings, list)
    tracer.write_workbook(trace, tmp_path / "run.xlsx")
    assert (tmp_path / "run.xlsx").stat().st_size > 1000


def test_api_tour_example_runs(tmp_path):
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "api_tour.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "<Trace 'api-tour'" in done.stdout and "gradient check" in done.stdout
    assert (tmp_path / "api-tour.xlsx").exists() and (tmp_path / "api-tour.csv").exists()


def test_run_sums_in_the_order_of_the_workbooks_layout():
    """tracer.run, like `tracer run`, sums as numpy matrix products exactly when its workbook is in
    the matrix layout (a net too wide for the column layout, or layout="matrix"); `sums` overrides."""
    assert tracer.run(tracer.load("wide-784-32-10", steps=1)).sum_order == "matmul"
    xor = tracer.load("xor", steps=2)
    assert tracer.run(xor).sum_order == "in_order"
    assert tracer.run(xor, layout="matrix").sum_order == "matmul"
    assert tracer.run(xor, sums="matmul").sum_order == "matmul"
    assert (tracer.run(xor).loss == tracer.training.engine.run(xor, sums="in_order").loss).all()


@pytest.mark.parametrize("arguments, fragment", [({"layout": "matrx"}, "layout must be one of column, matrix, not 'matrx'"),
                                                 ({"sums": "matmul", "layout": "column"}, "not both")])
def test_run_refuses_an_unknown_layout_and_two_ways_to_choose_the_order(arguments, fragment):
    with pytest.raises(tracer.errors.InputError, match=re.escape(fragment)):
        tracer.run(tracer.load("xor", steps=1), **arguments)
