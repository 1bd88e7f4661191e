"""The pictures of a run: the numbers each picture draws, and `tracer plot` writing a picture."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tracer
from tracer import plots

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def explosion():
    return tracer.run("leaky-relu-explosion")


def test_layer_norms_agree_with_the_trace_where_the_squares_do_not_overflow(explosion):
    deep = tracer.run("deep-sigmoid")
    for l in range(1, deep.layers + 1):
        assert np.allclose(plots.layer_norms(deep, l), deep.gradient_norm(l), rtol=1e-14, atol=0)
    # leaky-relu-explosion's step 3 gradient is about 4.4e169: its square overflows, its norm does not
    norm = plots.layer_norms(explosion, 1)
    assert not np.isfinite(explosion.gradient_norm(1)[3]) and 1e169 < norm[3] < 1e171
    largest = np.abs(explosion.grad_W[0][3]).max()
    assert largest <= norm[3] <= largest * math.sqrt(explosion.grad_W[0][3].size + explosion.grad_b[0][3].size)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=30))
def test_decade_counts_count_every_value_once(values):
    array = np.array([values])
    edges = np.arange(-330.0, 311.0)
    counts = plots.decade_counts(array, edges)
    assert counts[:, 0].sum() == len(values)
    assert counts[0, 0] == sum(v == 0 for v in values) and counts[-1, 0] == sum(not math.isfinite(v) for v in values)


def test_time_norms_grow_by_the_recurrent_factor_going_back():
    """rnn-exploding: h_t = x_t·W + h_(t−1)·1.1 (identity), so ‖e_t‖ = 1.1·‖e_(t+1)‖."""
    norms = plots.time_norms(tracer.run("rnn-exploding"), 1, step=0)
    assert len(norms) == 101
    assert np.allclose(norms[:-1] / norms[1:], 1.1, rtol=1e-12)


def test_every_picture_draws(explosion):
    for kind in plots.KINDS[:-1]:
        figure = plots.figure_of(explosion, kind)
        assert figure.axes
    lines = plots.gradient_flow(explosion).axes[0].get_lines()
    drawn = [line for line in lines if line.get_label().startswith("layer 1")][0]
    assert np.isnan(drawn.get_ydata()[4]) and np.isfinite(drawn.get_ydata()[3])   # stops where it overflows
    with pytest.raises(tracer.errors.InputError, match="no recurrent layer"):
        plots.through_time(explosion)
    assert plots.through_time(tracer.run("lstm-long")).axes[0].get_lines()


def test_plot_command_writes_a_png(tmp_path, invoke):
    target = tmp_path / "flow.png"
    result = invoke("plot", "deep-sigmoid", "-o", target)
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = invoke("plot", "deep-sigmoid", "-o", target)
    assert again.exit_code == 2 and "--force" in again.output
    svg = tmp_path / "time.svg"
    assert invoke("plot", "rnn-exploding", "--kind", "through-time", "-o", svg).exit_code == 0
    assert svg.read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_plot_command_refuses_what_it_cannot_draw(tmp_path, invoke):
    assert "name a .png, .svg or .pdf" in invoke("plot", "xor", "-o", tmp_path / "flow.txt").output
    refused = invoke("plot", "xor", "--kind", "through-time", "-o", tmp_path / "time.png")
    assert refused.exit_code == 2 and "no recurrent layer" in refused.output
    assert not list(tmp_path.iterdir())
