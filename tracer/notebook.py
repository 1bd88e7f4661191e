"""How tracer's objects show themselves: a short plain repr (at most 200 characters) for a terminal,
and HTML for a notebook (Jupyter calls `_repr_html_`).

Each class keeps a two-line `__repr__` / `_repr_html_` that calls the function here of its name:
the scenario, the trace, the diagnosis, a chain-rule explanation (its LaTeX form typeset by the
notebook's MathJax), the gradient check, the workbook check (verify) and a hand-check result.
"""
import html

import numpy as np

REPR_LIMIT = 200       # characters of a plain repr
TABLE_ROWS = 10        # rows of a table shown in a notebook before it is cut (first and last halves)


def short(text, limit=REPR_LIMIT):
    """`text` cut to `limit` characters, an ellipsis marking the cut (a repr keeps its closing '>')."""
    if len(text) <= limit:
        return text
    closing = ">" if text.endswith(">") else ""
    return text[:limit - 1 - len(closing)] + "…" + closing


def _escape(value):
    return html.escape(str(value))


def _table(header, rows, limit=TABLE_ROWS):
    """An HTML table of `rows` (sequences of cells) under `header`; more than `limit` rows keep the
    first and last limit/2 with one row saying how many were left out."""
    shown = list(rows)
    if len(shown) > limit:
        half = limit // 2
        gap = [f"… {len(shown) - 2 * half} more rows …"] + [""] * (len(header) - 1)
        shown = shown[:half] + [gap] + shown[-half:]
    head = "".join(f"<th>{_escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{_escape(cell)}</td>" for cell in row) + "</tr>" for row in shown)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(pairs):
    """A two-column table of (name, value) pairs, no header."""
    body = "".join(f"<tr><th style='text-align:left'>{_escape(k)}</th><td style='text-align:left'>{_escape(v)}</td></tr>"
                   for k, v in pairs)
    return f"<table>{body}</table>"


def _number(value, digits=6):
    return f"{value:.{digits}g}" if isinstance(value, (float, np.floating)) else str(value)


# ---------------------------------------------------------------- scenario

def scenario_repr(scenario):
    """<Scenario 'xor': 2 inputs -> 2 sigmoid, 1 sigmoid; half_sse loss, sgd lr=..., ...>"""
    from tracer import layers as layer_kinds
    described = ", ".join(layer_kinds.of(layer).describe(layer) for layer in scenario.layers)
    inputs = f"{scenario.widths[0]} inputs" + (f" × {scenario.time_steps} time steps" if scenario.time_steps else "")
    batch = "full" if scenario.batch is None else scenario.batch
    return short(f"<Scenario {scenario.name!r}: {inputs} -> {described}; {scenario.loss} loss, "
                 f"{scenario.optimizer} lr={scenario.optimizer_params.get('lr')}, {scenario.steps} steps, "
                 f"{scenario.inputs.shape[0]} samples, batch {batch}>")


def scenario_html(scenario):
    """The scenario's settings and one row per layer (kind, units, activation, initialisation)."""
    optimiser = ", ".join(f"{k}={v}" for k, v in scenario.optimizer_params.items())
    settings = [("description", scenario.description or ""),
                ("data", f"{scenario.inputs.shape[0]} samples × {scenario.widths[0]} inputs"
                         + (f" × {scenario.time_steps} time steps" if scenario.time_steps else "")
                         + (f", normalised ({scenario.normalize})" if scenario.normalize != "none" else "")),
                ("loss", f"{scenario.loss} ({scenario.reduction} over the batch)"),
                ("optimizer", f"{scenario.optimizer} ({optimiser})"),
                ("training", f"{scenario.steps} steps, batch {'full' if scenario.batch is None else scenario.batch}, "
                             f"seed {scenario.seed}"
                             + (f", clip_norm {scenario.clip_norm}" if scenario.clip_norm is not None else "")
                             + (f", clip_value {scenario.clip_value}" if scenario.clip_value is not None else ""))]
    rows = [(l, getattr(layer, "kind", "dense"), layer.units, layer.activation, getattr(layer, "init", ""))
            for l, layer in enumerate(scenario.layers, start=1)]
    return (f"<div><strong>Scenario {_escape(scenario.name)}</strong>{_pairs(settings)}"
            f"{_table(('layer', 'kind', 'units', 'activation', 'init'), rows)}</div>")


# ---------------------------------------------------------------- trace

def trace_repr(trace):
    """<Trace 'xor': 2-2-1 network, steps 0..299, loss 0.52 -> 0.0012, finite>"""
    s = trace.scenario
    span = f"steps {trace.first_step}..{trace.first_step + trace.steps - 1}"
    bad = trace.first_nonfinite_step()
    state = "finite" if bad is None else f"non-finite from step {trace.first_step + bad}"
    loss = f"loss {trace.loss[0]:.6g} -> {trace.loss[-1]:.6g}" if trace.steps else "no steps"
    return short(f"<Trace {s.name!r}: {'-'.join(map(str, s.widths))} network, {span}, {loss}, {state}>")


def trace_html(trace):
    """The summary line, then the loss and each layer's gradient norm ‖∇⁽ˡ⁾‖ per step (cut to the
    first and last steps)."""
    layers = range(1, trace.layers + 1)
    norms = [trace.gradient_norm(l) for l in layers]
    rows = [(trace.first_step + step, _number(trace.loss[step]), *(_number(n[step], 3) for n in norms))
            for step in range(trace.steps)]
    header = ("step", "loss E", *(f"‖∇{l}‖" for l in layers))
    return f"<div><code>{_escape(trace_repr(trace))}</code>{_table(header, rows)}</div>"


# ---------------------------------------------------------------- diagnosis

def diagnosis_repr(diagnosis):
    """<Diagnosis 'name': outcome at step k, n findings: the first one…>"""
    findings = diagnosis.findings
    kind, step = diagnosis.outcome
    outcome = f"{kind} at step {step}" if kind else "no outcome"
    first = f": {findings[0]}" if findings else ""
    return short(f"<Diagnosis {diagnosis.trace.scenario.name!r}: {outcome}, {len(findings)} findings{first}>")


def diagnosis_html(diagnosis):
    """The findings as a list, then per step each layer's gradient norm and flag (cut to the first
    and last steps)."""
    items = "".join(f"<li>{_escape(text)}</li>" for text in diagnosis.findings)
    trace = diagnosis.trace
    layers = range(1, trace.layers + 1)
    rows = [(trace.first_step + step, *(f"{_number(diagnosis.norms[step, l - 1], 3)} {flags.get(l, '')}".strip()
                                        for l in layers))
            for step, flags in enumerate(diagnosis.flags)]
    header = ("step", *(f"‖∇{l}‖ (flag)" for l in layers))
    return (f"<div><strong>Diagnosis of {_escape(trace.scenario.name)}</strong><ul>{items}</ul>"
            f"{_table(header, rows)}</div>")


# ---------------------------------------------------------------- chain rule

def chain_repr(chain):
    """<Chain ∂E/∂W1[0,0] at step 0, sample 0: product ... = engine ...>"""
    product = getattr(chain, "product", getattr(chain, "total", float("nan")))
    return short(f"<Chain ∂E/∂{chain.name} at step {chain.step}, sample {chain.sample}: "
                 f"product {product:.6g}, engine {chain.engine:.6g}, batch gradient {chain.batch:.6g}>")


def chain_html(latex, text):
    """A chain-rule explanation given as its LaTeX and its plain text report (tracer.explain.chain.render):
    the LaTeX for the notebook's MathJax (display math as \\[ \\], the circled labels as characters,
    which MathJax's text mode has), the text folded below it."""
    lines = [line for line in latex.splitlines() if not line.startswith("%")]
    latex = "\n".join(lines)
    for digit, circled in (("2", "②"), ("4", "④"), ("5", "⑤")):
        latex = latex.replace(f"\\textcircled{{{digit}}}", circled)
    latex = latex.replace("\\begin{align*}", "\\[\\begin{aligned}").replace("\\end{align*}", "\\end{aligned}\\]")
    paragraphs = "".join(f"<p>{html.escape(block, quote=False)}</p>" for block in latex.split("\n\n") if block.strip())
    return (f"<div>{paragraphs}<details><summary>as text</summary><pre>{_escape(text)}</pre></details></div>")


# ---------------------------------------------------------------- checks

def gradcheck_repr(report):
    """<GradientCheck: n gradients, largest relative error e at step t, name; k skipped>"""
    worst = report.worst
    largest = "none" if worst is None else f"largest relative error {worst.error:.3g} ({worst.name} at step {worst.step})"
    return short(f"<GradientCheck: {len(report.checks)} gradients, {largest}, {len(report.skipped)} skipped "
                 f"at a kink, {len(report.unresolved)} unresolved>")


def gradcheck_html(report):
    """The summary and the worst checks first: backprop, finite differences, relative error."""
    worst_first = sorted(report.checks, key=lambda c: -c.error if np.isfinite(c.error) else -np.inf)
    rows = [(c.step, c.name, f"{c.backprop:.10g}", f"{c.numeric:.10g}", f"{c.error:.3g}") for c in worst_first]
    return (f"<div><code>{_escape(gradcheck_repr(report))}</code>"
            f"{_table(('step', 'parameter', 'backprop', 'finite differences', 'relative error'), rows)}</div>")


def verify_repr(report):
    """<Verified in LibreOffice: n formula cells, largest relative difference d, k mismatches>"""
    return short(f"<Verified in {report.spreadsheet}: {report.cells:,} formula cells, largest relative "
                 f"difference {report.worst:.3g}, {len(report.mismatches)} mismatches>")


def verify_html(report):
    """The summary, the cells compared per sheet and the mismatches (cut)."""
    sheets = _table(("sheet", "formula cells compared"), [(k, f"{v:,}") for k, v in report.cells_by_sheet.items()])
    mismatches = _table(("cell", "header", "engine", "sheet"),
                        [(m.where, m.header, _number(m.engine, 10), m.sheet) for m in report.mismatches])
    return f"<div><code>{_escape(verify_repr(report))}</code>{sheets}{mismatches if report.mismatches else ''}</div>"


def hand_result_repr(result):
    """<HandCheck W1[0,0]@1 = 0.449: consequence, engine 0.398>"""
    verdict = "right" if result.right else result.kind
    return short(f"<HandCheck {result.entry.text} = {result.entry.written}: {verdict}, engine {result.engine:.10g}>")


def hand_results_html(results):
    """A person's numbers as a table: name, written, verdict, the engine's value and the explanation."""
    rows = [(r.entry.text, r.entry.written, "right" if r.right else r.kind.upper(), f"{r.engine:.10g}", r.explanation)
            for r in results]
    right = sum(r.right for r in results)
    return (f"<div><strong>{right} of {len(results)} numbers right</strong>"
            f"{_table(('name', 'written', 'verdict', 'engine', 'why'), rows, limit=len(rows) or 1)}</div>")
