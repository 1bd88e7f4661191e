"""The network at one step as an SVG picture, written by hand (no Graphviz needed).

Columns of circles, the inputs on the left and the output layer on the right; in each unit its
activation a (its input x on the left) for one sample, and below it u; an edge per weight W[i,j]
from unit i to unit j, its width growing with log10|W| and its colour its sign (blue positive, red
negative), labelled with its value when the net has few edges. A unit whose slope f'(u) is exactly
0 has a red ring (no gradient passes it), one with |f'(u)| below the `saturated` threshold an orange
ring; a non-finite value is drawn as inf/NaN in red. Wide layers show their first and last units
with "⋮" between. Layers whose parameters are not a fan_in × units matrix (normalisation, recurrent)
are joined unit to unit by grey edges and named by their kind.
"""
import html
import math

import numpy as np

UNITS_SHOWN = 10        # units drawn per layer at most: the first and last halves
EDGE_LABELS = 24        # label the edges with their weights up to this many edges
RADIUS, COLUMN, ROW = 22, 230, 62


class Diagram:
    """An SVG picture that a notebook shows (`_repr_svg_`) and `save` writes."""

    def __init__(self, text):
        self.text = text

    def _repr_svg_(self):
        return self.text

    def save(self, path, force=False):
        """Write the SVG to `path` (checked and written as every output: complete or not at all)."""
        from tracer import output
        output.check_targets({"path": path}, force)
        with output.atomic_path(path) as staged:
            staged.write_text(self.text, encoding="utf-8")

    def __repr__(self):
        return f"<Diagram: SVG, {len(self.text):,} characters>"


def shown_units(n):
    """The unit indices drawn of a layer of n units, with None where the rest are left out."""
    if n <= UNITS_SHOWN:
        return list(range(n))
    half = UNITS_SHOWN // 2
    return list(range(half)) + [None] + list(range(n - half + 1, n))


def _value(value):
    value = float(value)
    if not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "NaN"
    return f"{value:.3g}"


def _layer_values(trace, l, step, slot):
    """(a, u, slope) of layer l (0 = the inputs: x) for batch slot `slot` at `step`, each an array of
    its units or None where the layer does not record them per unit."""
    if l == 0:
        sample = trace.samples(step)[slot]
        return trace.scenario.inputs[sample].reshape(-1), None, None
    found = []
    for name in ("a", "u", "slope"):
        store = getattr(trace, name, None)
        array = None if store is None or store[l - 1] is None else np.asarray(store[l - 1][step, slot], dtype=float)
        found.append(array if array is not None and array.shape == (trace.scenario.widths[l],) else None)
    return tuple(found)


def _positions(widths):
    """(x, y) of every drawn unit: {(layer, index or None): (x, y)}, and the picture's size."""
    tallest = max(len(shown_units(n)) for n in widths)
    height = tallest * ROW + 80
    places = {}
    for l, n in enumerate(widths):
        units = shown_units(n)
        top = (height - len(units) * ROW) / 2 + ROW / 2 + 10
        for k, unit in enumerate(units):
            places[(l, unit if unit is not None else f"gap{l}")] = (80 + l * COLUMN, top + k * ROW)
    return places, (len(widths) - 1) * COLUMN + 200, height


def _edge(x1, y1, x2, y2, weight, label, largest, along=0.3):
    if not math.isfinite(weight):
        colour, width = "#d00", 2.5
    else:
        colour = "#2060c0" if weight >= 0 else "#c03030"
        width = 0.4 + 2.6 * (math.log10(1 + abs(weight)) / math.log10(1 + largest) if largest > 0 else 0)
    line = (f'<line x1="{x1 + RADIUS:.1f}" y1="{y1:.1f}" x2="{x2 - RADIUS:.1f}" y2="{y2:.1f}" '
            f'stroke="{colour}" stroke-width="{width:.2f}" stroke-opacity="0.75"/>')
    if not label:
        return line
    mx, my = x1 + RADIUS + (x2 - x1 - 2 * RADIUS) * along, y1 + (y2 - y1) * along
    return line + (f'<text x="{mx:.1f}" y="{my + 3:.1f}" font-size="9" fill="{colour}" text-anchor="middle" '
                   f'stroke="#fff" stroke-width="3" paint-order="stroke">{_value(weight)}</text>')


def _edges(trace, places, step):
    """The SVG of every edge between drawn units."""
    widths, parts = trace.scenario.widths, []
    for l in range(1, len(widths)):
        W = np.asarray(trace.W[l - 1][step], dtype=float)
        lower, upper = [u for u in shown_units(widths[l - 1]) if u is not None], [u for u in shown_units(widths[l]) if u is not None]
        if W.shape != (widths[l - 1], widths[l]):      # normalisation, recurrent: unit to unit
            for i, j in zip(lower, upper):
                (x1, y1), (x2, y2) = places[(l - 1, i)], places[(l, j)]
                parts.append(f'<line x1="{x1 + RADIUS}" y1="{y1}" x2="{x2 - RADIUS}" y2="{y2}" stroke="#999"/>')
            continue
        label = len(lower) * len(upper) <= EDGE_LABELS
        finite = np.abs(W[np.isfinite(W)])
        largest = float(finite.max()) if finite.size else 0.0
        for i in lower:
            for k, j in enumerate(upper):     # labels staggered along the edges, one place per unit above
                (x1, y1), (x2, y2) = places[(l - 1, i)], places[(l, j)]
                along = 0.2 + 0.6 * (k + 0.5) / len(upper)
                parts.append(_edge(x1, y1, x2, y2, float(W[i, j]), label, largest, along))
    return parts


def _unit(x, y, value, u, slope, saturated):
    ring, note = "#333", ""
    if slope is not None and slope == 0:
        ring, note = "#d00", "f'=0"
    elif slope is not None and abs(slope) < saturated:
        ring, note = "#e08000", "f' saturated"
    colour = "#d00" if not math.isfinite(float(value)) else "#000"
    parts = [f'<circle cx="{x}" cy="{y:.1f}" r="{RADIUS}" fill="#fff" stroke="{ring}" '
             f'stroke-width="{3 if note else 1.2}"/>',
             f'<text x="{x}" y="{y + 4:.1f}" font-size="{11 if len(_value(value)) <= 6 else 8}" '
             f'text-anchor="middle" fill="{colour}">{_value(value)}</text>']
    below = " ".join(part for part in ((f"u={_value(u)}" if u is not None else ""), note) if part)
    if below:
        parts.append(f'<text x="{x}" y="{y + RADIUS + 11:.1f}" font-size="9" text-anchor="middle" fill="{ring}">'
                     f'{html.escape(below)}</text>')
    return parts


def svg(trace, step=0, sample=0):
    """The SVG text of the network of `trace` at `step`, with the values of batch slot `sample`."""
    if not 0 <= step < trace.steps:
        from tracer.errors import InputError
        raise InputError(f"step {step} is not a step of this run (0..{trace.steps - 1})")
    s, widths = trace.scenario, trace.scenario.widths
    places, width, height = _positions(widths)
    parts = _edges(trace, places, step)
    for l, n in enumerate(widths):
        a, u, slope = _layer_values(trace, l, step, sample)
        layer = s.layers[l - 1] if l else None
        for unit in shown_units(n):
            x, y = places[(l, unit if unit is not None else f"gap{l}")]
            if unit is None:
                parts.append(f'<text x="{x}" y="{y + 6}" font-size="20" text-anchor="middle">⋮</text>')
            elif a is None:
                parts.append(f'<circle cx="{x}" cy="{y:.1f}" r="{RADIUS}" fill="#eee" stroke="#333"/>')
            else:
                parts += _unit(x, y, a[unit], None if u is None else u[unit], None if slope is None else slope[unit],
                               s.thresholds["saturated"])
        title = "x (inputs)" if l == 0 else f"layer {l}: {getattr(layer, 'kind', 'dense')}, {layer.activation}"
        parts.append(f'<text x="{80 + l * COLUMN}" y="16" font-size="11" text-anchor="middle">{html.escape(title)}</text>')
    loss = _value(trace.loss[step])
    caption = f"{s.name} at step {trace.first_step + step}, sample {int(trace.samples(step)[sample])}: loss E = {loss}"
    parts.append(f'<text x="8" y="{height - 8}" font-size="11">{html.escape(caption)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="#fff"/>' + "".join(parts) + "</svg>\n")
