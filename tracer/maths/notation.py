"""Math notation: u₀⁽¹⁾, σ'(u₀⁽¹⁾), δ₀⁽²⁾, ∂E/∂W1[0,0] in Unicode (headers, reports) and the same in
LaTeX (u^{(1)}_{0}, W_{1}[0,0]) for `tracer chain --latex`."""
import math
import re
import unicodedata

_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUP = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def unit(symbol, layer, j):
    """`symbol` with unit j as subscript and (layer) as superscript: u₀⁽¹⁾."""
    return f"{symbol}{str(j).translate(_SUB)}⁽{str(layer).translate(_SUP)}⁾" if layer else f"{symbol}{str(j).translate(_SUB)}"


def sub(symbol, j):
    return f"{symbol}{str(j).translate(_SUB)}"


def layer(l):
    """The layer index as a superscript in parentheses: ⁽¹⁾."""
    return f"⁽{str(l).translate(_SUP)}⁾"


# ---------------------------------------------------------------- LaTeX
# The same notation written for LaTeX (amsmath), ASCII only: a unit's symbol is
# `<base>^{(layer)}_{j}` (u^{(1)}_{0}), a parameter `W_{1}[0,0]`, `\gamma_{2}[1]`.

_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "varepsilon", "η": "eta", "θ": "theta",
          "λ": "lambda", "μ": "mu", "ν": "nu", "π": "pi", "ρ": "rho", "σ": "sigma", "τ": "tau", "φ": "phi",
          "ψ": "psi", "ω": "omega", "Γ": "Gamma", "Δ": "Delta", "Θ": "Theta", "Λ": "Lambda", "Σ": "Sigma",
          "Φ": "Phi", "Ψ": "Psi", "Ω": "Omega", "∑": "Sigma", "∂": "partial", "∇": "nabla"}
_MATH = {"·": r"\cdot", "−": "-", "±": r"\pm", "≤": r"\le", "≥": r"\ge", "→": r"\to", "←": r"\leftarrow",
         "×": r"\times", "‖": r"\|", "√": r"\surd", "≈": r"\approx", "≠": r"\neq", "∞": r"\infty",
         "½": r"\frac{1}{2}", "∈": r"\in", "…": r"\ldots", "<": "<", ">": ">", "|": "|"}
_TEXT = {"#": r"\#", "$": r"\$", "%": r"\%", "&": r"\&", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\~{}",
         "^": r"\^{}", "\\": r"\textbackslash{}", "–": "--", "—": "---", "‘": "`", "’": "'", "“": "``", "”": "''",
         "\t": " ", "\n": " ", "\u0302": r"\^{}"}
_CIRCLED = {chr(0x2460 + k): str(k + 1) for k in range(20)}   # ① .. ⑳
_HAT = "\u0302"
_FUNCTIONS = {"tanh", "exp", "log", "ln", "max", "min", "sin", "cos"}
_PARAMETER = re.compile(r"(?<![A-Za-z0-9])(Wh|bh|W|b|gamma|beta)([0-9]+)\[([0-9a-z]+(?:,\s*[0-9a-z]+)?)\]")


def latex_parameter(name):
    """'W1[0,2]' -> 'W_{1}[0,2]', 'gamma2[1]' -> '\\gamma_{2}[1]', a recurrent layer's 'Wh1[0,0]' ->
    'W^{h}_{1}[0,0]', 'bh1[0]' -> 'b^{h}_{1}[0]' (math mode); other text unchanged."""
    match = _PARAMETER.fullmatch(name.strip())
    if not match:
        return name
    letter, layer, index = match.groups()
    base = "\\" + letter if letter in ("gamma", "beta") else f"{letter[0]}^{{h}}" if letter in ("Wh", "bh") else letter
    return f"{base}_{{{layer}}}[{index.replace(' ', '')}]"


def _script(char):
    """'^' or '_' and the plain character of a Unicode super-/subscript character, else None."""
    decomposition = unicodedata.decomposition(char)
    for tag, mark in (("<super>", "^"), ("<sub>", "_")):
        if decomposition.startswith(tag):
            return mark, unicodedata.normalize("NFKC", char)
    return None


def _base(char):
    """The math form of one character that can carry scripts, or None."""
    if char in _GREEK:
        return "\\" + _GREEK[char] + " "
    if char.isascii() and char.isalnum():
        return char
    return None


def _segments(text):
    """Split Unicode prose into (is_math, latex) pieces."""
    pieces, i = [], 0
    while i < len(text):
        match = _PARAMETER.match(text, i) if (i == 0 or not text[i - 1].isalnum()) else None
        if match:
            pieces.append((True, latex_parameter(match.group(0))))
            i = match.end()
            continue
        char = text[i]
        base = _base(char)
        following = text[i + 1:i + 2]
        if base is not None and following == _HAT:
            base, i = f"\\hat{{{base.strip()}}}", i + 1
        scripts = {"^": "", "_": ""}
        k = i + 1
        while k < len(text) and _script(text[k]):
            mark, plain = _script(text[k])
            scripts[mark] += plain
            k += 1
        if base is not None and (scripts["^"] or scripts["_"] or base.startswith("\\")):
            body = base.strip() + (f"^{{{scripts['^']}}}" if scripts["^"] else "") + (f"_{{{scripts['_']}}}" if scripts["_"] else "")
            pieces.append((True, body + " "))
            i = k
        elif base is not None:
            pieces.append((False, char))
            i += 1
        elif _script(char):
            mark, plain = _script(char)
            pieces.append((True, f"{{}}{mark}{{{plain}}}"))
            i += 1
        elif char in _MATH:
            pieces.append((True, _MATH[char] + " "))
            i += 1
        elif char in _CIRCLED:
            pieces.append((False, f"\\textcircled{{{_CIRCLED[char]}}}"))
            i += 1
        elif char in _TEXT:
            pieces.append((False, _TEXT[char]))
            i += 1
        elif char.isascii() and char.isprintable():
            pieces.append((False, char))
            i += 1
        else:
            pieces.append((False, f"[U+{ord(char):04X}]"))   # no LaTeX form known: visible, still ASCII
            i += 1
    return pieces


def _merge(pieces):
    """Join neighbouring pieces of one kind; a math piece absorbs the spaces or the short run of
    letters and '/' between it and the next math piece (∂E/∂W, Σₖ W)."""
    merged = []
    for is_math, body in pieces:
        if merged and merged[-1][0] == is_math:
            merged[-1] = (is_math, merged[-1][1] + body)
        else:
            merged.append((is_math, body))
    out = []
    for index, (is_math, body) in enumerate(merged):
        between = (not is_math and out and out[-1][0] and index + 1 < len(merged)
                   and re.fullmatch(r" +|[A-Za-z/']{1,3}", body))
        if between:
            out[-1] = (True, out[-1][1] + body)
        elif is_math and out and out[-1][0]:
            out[-1] = (True, out[-1][1] + body)
        else:
            out.append((is_math, body))
    return out


def latex_text(text):
    """Unicode prose ('error from above Σₖ W2[0,k]·δₖ⁽²⁾') as LaTeX text with inline math, ASCII only
    ('error from above $\\Sigma_{k} W_{2}[0,k]\\cdot \\delta^{(2)}_{k}$')."""
    return "".join(f"${body.strip()}$" if is_math else body for is_math, body in _merge(_segments(text)))


def latex_symbol(symbol):
    """A symbol's base in math mode: 'σ' -> '\\sigma', 'x̂' -> '\\hat{x}', 'σ²' -> '{\\sigma^{2}}',
    'ReLU' -> '\\mathrm{ReLU}', 'tanh' -> '\\tanh'; braced when it carries a script already, so that
    a layer superscript can follow."""
    if symbol in _FUNCTIONS:
        return "\\" + symbol
    if symbol.isascii() and symbol.isalnum() and len(symbol) > 1:
        return f"\\mathrm{{{symbol}}}"
    body = "".join(part for _, part in _segments(symbol)).strip()
    body = re.sub(r" +", " ", body)
    return f"{{{body}}}" if ("^" in body or "_" in body) else body


def latex_number(value):
    """A number for math mode: 1.83e+18 -> 1.83 \\cdot 10^{18}; inf -> \\infty; NaN -> \\mathrm{NaN}."""
    value = float(value)
    if math.isnan(value):
        return r"\mathrm{NaN}"
    if math.isinf(value):
        return r"\infty" if value > 0 else r"-\infty"
    text = f"{value:.10g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa} \\cdot 10^{{{int(exponent)}}}"
    return text


def latex_align(rows):
    """Rows `left &= right` (LaTeX, one per line) as one amsmath align* block."""
    return "\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}"


def latex_chain_opening(parameter, intro, derivative, definitions):
    """The opening blocks of `tracer chain --latex`: the comment naming what the fragment needs,
    `intro` (Unicode prose), ∂E/∂`parameter` = `derivative` as an align* block and, if there are
    `definitions` ((symbol, expression) pairs), "where" and their align* block. `parameter`,
    `derivative` and the definitions are LaTeX already."""
    blocks = ["% tracer chain --latex: a LaTeX fragment; the document needs \\usepackage{amsmath}",
              latex_text(intro),
              latex_align([f"  \\frac{{\\partial E}}{{\\partial {parameter}}} &= {derivative}"])]
    if definitions:
        blocks += ["where", latex_align(f"  {symbol} &= {expression}" for symbol, expression in definitions)]
    return blocks
