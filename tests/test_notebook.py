"""How objects show themselves: short plain reprs everywhere, HTML in a notebook, and the notebook
path (examples/notebook_tour.py) runs as a script."""
import html
import re
import runpy
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tracer
from tracer import notebook
from tracer.explain import check as check_module

TOUR = Path(__file__).resolve().parent.parent / "examples" / "notebook_tour.py"


class _Balanced(HTMLParser):
    """Counts open and closed tags: the HTML a notebook receives must be well formed."""

    def __init__(self):
        super().__init__()
        self.open, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open)
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def well_formed(text):
    parser = _Balanced()
    parser.feed(text)
    parser.close()
    assert parser.open == []
    return "".join(parser.text)


@pytest.fixture(scope="module")
def explosion():
    return tracer.run("leaky-relu-explosion")


@given(st.text(max_size=400))
def test_short_keeps_at_most_the_limit_and_the_closing_bracket(text):
    shown = notebook.short(text)
    assert len(shown) <= notebook.REPR_LIMIT
    assert shown == text or (shown.endswith("…>") if text.endswith(">") else shown.endswith("…"))


def test_every_repr_is_short(explosion):
    """The objects a notebook user meets, each repr at most 200 characters (the diagnosis's default
    dataclass repr held the whole trace)."""
    objects = [explosion.scenario, explosion, tracer.diagnose_run(explosion),
               tracer.explain_gradient(explosion, "W1[0,0]", step=1), tracer.check_gradients(explosion, steps=(0,)),
               tracer.explain_gradient("rnn-exploding", "Wh1[0,0]"), tracer.load("rnn-exploding")]
    for thing in objects:
        assert len(repr(thing)) <= notebook.REPR_LIMIT, repr(thing)
        assert repr(thing).startswith("<") and repr(thing).endswith(">")


def test_diagnosis_html_lists_every_finding_and_cuts_the_table(explosion):
    diagnosis = tracer.diagnose_run(tracer.run("deep-sigmoid"))
    text = diagnosis._repr_html_()
    well_formed(text)
    items = re.findall(r"<li>(.*?)</li>", text, flags=re.S)
    assert [html.unescape(item) for item in items] == diagnosis.findings
    rows = re.findall(r"<tr>", text.split("</ul>", 1)[1])
    assert len(rows) == 1 + notebook.TABLE_ROWS + 1 < diagnosis.trace.steps    # header, shown rows, the gap
    assert f"{diagnosis.trace.steps - notebook.TABLE_ROWS} more rows" in text


def test_trace_and_scenario_html_show_their_numbers(explosion):
    text = well_formed(explosion._repr_html_())
    assert f"{explosion.loss[0]:.6g}" in text and "‖∇2‖" in text
    scenario_text = well_formed(explosion.scenario._repr_html_())
    assert "leaky_relu" in scenario_text and explosion.scenario.optimizer in scenario_text


def test_chain_html_is_mathjax_latex_with_the_text_report(explosion):
    chain = tracer.explain_gradient(explosion, "W1[0,0]", step=1)
    text = chain._repr_html_()
    well_formed(text)
    assert "\\[\\begin{aligned}" in text and "align*" not in text and "\\textcircled" not in text
    assert text.count("\\begin{aligned}") == text.count("\\end{aligned}") >= 1
    assert html.escape(tracer.render_explanation(chain), quote=True) in text


def test_gradcheck_and_hand_check_html(explosion, tmp_path):
    report = tracer.check_gradients("xor", steps=(0,))
    text = well_formed(report._repr_html_())
    assert f"{report.worst.error:.3g}" in text
    hand = tmp_path / "hand.csv"
    hand.write_text("u1[0],95\nloss,901\n", encoding="utf-8")
    trace = tracer.run("linear-regression")
    results = check_module.check(trace, check_module.read_hand(hand, trace))
    shown = well_formed(notebook.hand_results_html(results))
    assert "1 of 2 numbers right" in shown and results[1].kind.upper() in shown
    assert all(len(repr(r)) <= notebook.REPR_LIMIT for r in results)


def test_verify_report_repr_and_html():
    from tracer.recalc.verify import Mismatch, Report
    report = Report(cells=1234, worst=2e-13, mismatches=[Mismatch("Trace!C7", "u₀⁽¹⁾", 1.0, 2.0)],
                    cells_by_sheet={"Trace": 1234})
    assert "1,234 formula cells" in repr(report) and len(repr(report)) <= notebook.REPR_LIMIT
    assert "Trace!C7" in well_formed(report._repr_html_())


@pytest.mark.slow
def test_the_notebook_tour_runs_and_writes_its_pictures(tmp_path, monkeypatch, capsys):
    """The notebook path as a script: every repr, every HTML form and every picture."""
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(sys, "argv", [str(TOUR), str(tmp_path)])
    runpy.run_path(str(TOUR), run_name="__main__")
    written = sorted(p.name for p in tmp_path.iterdir())
    assert {"xor.html", "deep-sigmoid-flow.png", "leaky-relu-explosion-network.svg"} <= set(written)
    for picture in tmp_path.glob("*.png"):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(len(line) <= notebook.REPR_LIMIT for line in lines if line.startswith("<"))
