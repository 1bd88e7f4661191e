"""A LaTeX checker for `tracer chain --latex` where pdflatex is absent: the text must parse as LaTeX
(pylatexenc, not tolerant: balanced braces, math delimiters and environments), hold only ASCII, use
only commands that LaTeX with amsmath defines (math-only commands in math mode, text-only ones
outside it), no ^ or _ outside math, no double super-/subscript, \\left/\\right paired, no blank
line inside math. With pdflatex on the machine, `compile_latex` runs it as well."""
import re
import shutil
import subprocess

from pylatexenc import latexwalker

# commands of LaTeX + amsmath that the checks accept, by the mode they work in
MATH_ONLY = {"partial", "frac", "sqrt", "left", "right", "cdot", "hat", "mathrm", "operatorname", "infty", "pm", "le", "ge",
             "to", "leftarrow", "times", "|", "surd", "approx", "neq", "in", "ldots", "tanh", "log", "exp", "ln", "max",
             "min", "sin", "cos", "sinh", "cosh", "alpha", "beta", "gamma", "delta", "varepsilon", "epsilon", "eta",
             "theta", "lambda", "mu", "nu", "pi", "rho", "sigma", "tau", "phi", "psi", "omega", "Gamma", "Delta", "Theta",
             "Lambda", "Sigma", "Phi", "Psi", "Omega", "nabla", ",", ";", ":", "!", "quad", "qquad", "limits", "sum", "prod",
             "operatorname*", "cdots", "mathbf", "mathit", "text", "begin", "end", "\\", "{", "}"}
TEXT_ONLY = {"textcircled", "textbackslash", "#", "$", "%", "&", "_", "{", "}", "~", "^", "noindent", "par", "text",
             "begin", "end"}
MATH_ENVIRONMENTS = {"align*", "cases"}


def _scripts_ok(math):
    """False when one atom gets two superscripts or two subscripts (TeX's 'Double superscript')."""
    tokens = re.findall(r"\\[A-Za-z]+|\\.|[{}]|[^\s]", math)
    scripts = [set()]      # per brace level: the scripts attached to the last atom
    argument = [False]     # per brace level: the group is the argument of ^ or _
    pending = False        # a ^ or _ waits for its argument
    for token in tokens:
        if token in ("^", "_"):
            if token in scripts[-1]:
                return False
            scripts[-1].add(token)
            pending = True
        elif token == "{":
            scripts.append(set())
            argument.append(pending)
            pending = False
        elif token == "}":
            scripts.pop()
            if not argument.pop():
                scripts[-1] = set()      # a closed group is a new atom
        elif token == "'":
            continue
        elif pending:
            pending = False              # a one-token argument of ^ or _
        else:
            scripts[-1] = set()          # a new atom
    return True


def check_latex(text):
    """Raise AssertionError naming the first problem of `text` as a LaTeX fragment."""
    assert text.isascii(), f"non-ASCII characters: {sorted({c for c in text if not c.isascii()})}"
    bad = re.search(r"\[U\+[0-9A-F]{4}\]", text)
    assert not bad, f"a character with no LaTeX form: {bad.group(0)}"
    walker = latexwalker.LatexWalker(text, tolerant_parsing=False)
    nodes, _, _ = walker.get_latex_nodes()
    _walk(nodes, math=False)


def _walk(nodes, math, environment=None):
    for node in nodes:
        if node is None:
            continue
        if node.isNodeType(latexwalker.LatexMathNode):
            assert not math, f"math inside math: {node.latex_verbatim()[:60]}"
            _check_math(node.latex_verbatim())
            _walk(node.nodelist, True)
        elif node.isNodeType(latexwalker.LatexEnvironmentNode):
            name = node.environmentname
            assert name in MATH_ENVIRONMENTS, f"unknown environment {name}"
            assert name == "cases" or not math, f"{name} inside math"
            _check_math(node.latex_verbatim())
            _walk(node.nodelist, True, name)
        elif node.isNodeType(latexwalker.LatexMacroNode):
            allowed = MATH_ONLY if math else TEXT_ONLY
            assert node.macroname in allowed, f"\\{node.macroname} is not a known {'math' if math else 'text'}-mode command"
            if node.macroname == "\\":
                assert environment in ("align*", "cases"), "\\\\ outside an align*"
            if node.nodeargd is not None:
                _walk([a for a in node.nodeargd.argnlist if a is not None], math, environment)
        elif node.isNodeType(latexwalker.LatexSpecialsNode):
            if node.specials_chars == "&":
                assert environment in ("align*", "cases"), "& outside an align*"
        elif node.isNodeType(latexwalker.LatexGroupNode):
            _walk(node.nodelist, math, environment)
        elif node.isNodeType(latexwalker.LatexCharsNode):
            if not math:
                for char in "^_<>|":
                    assert char not in node.chars, f"{char!r} in text mode: {node.chars[:60]!r}"


def _check_math(source):
    assert "\n\n" not in source, f"a blank line inside math: {source[:60]!r}"
    assert _scripts_ok(source), f"a double super- or subscript: {source[:120]!r}"
    assert len(re.findall(r"\\left(?![a-z])", source)) == len(re.findall(r"\\right(?![a-z])", source)), \
        f"unpaired \\left/\\right: {source[:120]!r}"


def compile_latex(text, folder):
    """Compile `text` inside an article with amsmath using pdflatex; None when pdflatex is absent,
    else (ok, log tail)."""
    if shutil.which("pdflatex") is None:
        return None
    source = folder / "chain.tex"
    source.write_text("\\documentclass{article}\n\\usepackage{amsmath}\n\\begin{document}\n" + text
                      + "\n\\end{document}\n", encoding="ascii")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", source.name], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    return done.returncode == 0, done.stdout[-2000:]
