"""The network picture: SVG that parses, with the values of the trace at the chosen step."""
import xml.etree.ElementTree as ElementTree

import numpy as np

import tracer
from tracer import diagram

SVG = "{http://www.w3.org/2000/svg}"


def texts(svg):
    return [element.text for element in ElementTree.fromstring(svg).iter(f"{SVG}text")]


def test_units_show_their_activations_and_edges_their_weights():
    trace = tracer.run("sigmoid-vanishing")
    svg = diagram.svg(trace, step=0)
    shown = texts(svg)
    x = trace.scenario.inputs[trace.samples(0)[0]]
    assert all(f"{v:.3g}" in shown for v in x)
    assert all(f"{w:.3g}" in shown for w in trace.W[1][0].ravel())          # 3 × 1 edges, labelled
    lines = list(ElementTree.fromstring(svg).iter(f"{SVG}line"))
    assert len(lines) == 5 * 3 + 3 * 1
    # σ(u) rounds to 1 for u in the hundreds: every hidden slope is exactly 0, marked in red
    assert (trace.slope[0][0, 0] == 0).all()
    assert sum(text == "u=758 f'=0" or (text or "").endswith("f'=0") for text in shown) == 3


def test_wide_layers_are_cut_and_non_finite_values_named():
    trace = tracer.run("digits-64-32-10")
    shown = texts(diagram.svg(trace, 0))
    assert shown.count("⋮") == 2                 # 64 inputs and 32 hidden units cut; 10 outputs whole
    explosion = tracer.run("leaky-relu-explosion")
    assert not np.isfinite(explosion.a[1][4]).all() and "inf" in texts(diagram.svg(explosion, 4))


def test_graph_command_writes_svg(tmp_path, invoke):
    target = tmp_path / "net.svg"
    result = invoke("graph", "xor", "--step", 5, "-o", target)
    assert result.exit_code == 0, result.output
    ElementTree.fromstring(target.read_text(encoding="utf-8"))
    assert invoke("graph", "xor", "--step", 300, "-o", tmp_path / "x.svg").exit_code == 2
