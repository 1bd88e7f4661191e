"""The top-level functions take a template name, a path or a Scenario (and the trace functions a
Trace); anything else is one TypeError."""
from pathlib import Path

import pytest

import tracer

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def test_run_takes_a_name_a_path_or_a_scenario():
    by_name = tracer.run("xor")
    for reference in (TEMPLATES / "xor.toml", str(TEMPLATES / "xor.toml"), tracer.load("xor")):
        assert (tracer.run(reference).loss == by_name.loss).all()


def test_trace_functions_take_names_too():
    assert tracer.diagnose_run("xor").findings == tracer.diagnose_run(tracer.run("xor")).findings
    assert tracer.explain_gradient("xor", "W1[0,0]").engine == tracer.explain_gradient(tracer.run("xor"), "W1[0,0]").engine


@pytest.mark.parametrize("wrong", [3, None, b"xor", ["xor"]])
def test_a_wrong_type_is_one_type_error(wrong):
    with pytest.raises(TypeError, match="template name"):
        tracer.run(wrong)
    with pytest.raises(TypeError, match="tracer.Trace"):
        tracer.diagnose_run(wrong)
