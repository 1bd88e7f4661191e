"""Math notation in Unicode and LaTeX: the LaTeX forms are ASCII and parse as LaTeX."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from tracer.maths import notation
from tests.latex_check import check_latex

# every character the reports use, and the characters LaTeX treats specially
ALPHABET = list("abcxyzWELt019 .,:;()[]/+-='!?") + list("#$%&_{}~^\\<>|") + list(
    "δσεγβμθΣΔ∂∇·−±≤≥→×‖√≈∞½…₀₁₂₉⁰¹²⁽⁾ˡᵐᴸₖᵢⱼ②④⑤\u0302–’")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_latex_text_of_any_prose_is_ascii_latex(text):
    check_latex(notation.latex_text(text))


@pytest.mark.parametrize("text, latex", [
    ("∂E/∂W1[0,0]", r"$\partial E/\partial W_{1}[0,0]$"),
    ("activation a₀⁽¹⁾ from below", r"activation $a^{(1)}_{0}$ from below"),
    ("gamma2[1] and b3[0]", r"$\gamma_{2}[1]$ and $b_{3}[0]$"),
    ("x̂ of unit 0", r"$\hat{x}$ of unit 0"),
    ("50% of a_b", r"50\% of a\_b"),
    ("②", r"\textcircled{2}"),
])
def test_latex_text_writes_names_as_the_symbols_do(text, latex):
    assert notation.latex_text(text) == latex


@pytest.mark.parametrize("symbol, latex", [("σ", r"\sigma"), ("x̂", r"\hat{x}"), ("σ²", r"{\sigma^{2}}"),
                                           ("dx̂", r"d\hat{x}"), ("m1", r"\mathrm{m1}"), ("ReLU", r"\mathrm{ReLU}"),
                                           ("tanh", r"\tanh"), ("u", "u")])
def test_latex_symbol_takes_a_layer_superscript(symbol, latex):
    assert notation.latex_symbol(symbol) == latex
    check_latex(f"${notation.latex_symbol(symbol)}^{{(2)}}_{{0}}$")


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_latex_number_reads_back(value):
    text = notation.latex_number(value)
    check_latex(f"${text}$")
    if math.isfinite(value):
        mantissa, _, exponent = text.partition(r" \cdot 10^{")
        back = float(f"{mantissa}e{exponent.rstrip('}')}") if exponent else float(mantissa)
        assert back == pytest.approx(value, rel=1e-9, abs=0)


@pytest.mark.parametrize("definitions", [[], [("e^{(2)}_{0}", "a^{(2)}_{0} - t_{0}"), ("z", "2 y")]])
def test_latex_chain_opening_is_one_block_per_part(definitions):
    blocks = notation.latex_chain_opening("W_{1}[0,0]", "∂E/∂W1[0,0] at step 0:", "x \\cdot y", definitions)
    check_latex("\n\n".join(blocks))
    assert blocks[0].startswith("% ") and "\\usepackage{amsmath}" in blocks[0]
    assert blocks[1] == r"$\partial E/\partial W_{1}[0,0]$ at step 0:"
    assert blocks[2] == "\\begin{align*}\n  \\frac{\\partial E}{\\partial W_{1}[0,0]} &= x \\cdot y\n\\end{align*}"
    if definitions:
        assert blocks[3:] == ["where", "\\begin{align*}\n  e^{(2)}_{0} &= a^{(2)}_{0} - t_{0} \\\\\n  z &= 2 y\n\\end{align*}"]
    else:
        assert len(blocks) == 3
