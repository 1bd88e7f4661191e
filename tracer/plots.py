"""Pictures of a run (matplotlib, the optional extra `plot`): `trace.plot` is a Plotter.

    trace.plot()                  the loss curve and the gradient flow side by side
    trace.plot.loss()             E per step (log scale when it spans decades)
    trace.plot.gradient_flow()    ‖∇⁽ˡ⁾‖ = √(Σ(∂E/∂W⁽ˡ⁾)² + Σ(∂E/∂b⁽ˡ⁾)²) per layer and step, log scale
    trace.plot.histograms()       per layer, a heat map of how many batch gradients fall in each
                                  decade of |∂E/∂θ| at each step (what TensorBoard shows as histograms)
    trace.plot.through_time()     recurrent layers: ‖∂E/∂h_t‖ per time step t at one training step
    trace.plot.network(step)      the network with its values at a step, as SVG (tracer.diagram)

Each picture is a matplotlib Figure (built without pyplot, so no window opens): `.savefig("x.png")`
writes it, a notebook shows it. Non-finite values are left out: a line stops where the engine
overflowed, and a dotted vertical line marks the first non-finite step.
"""
import numpy as np

from tracer.errors import InputError

KINDS = ("overview", "loss", "gradient-flow", "histograms", "through-time")


def _figure(width=6.4, height=4.0, columns=1, rows=1):
    """A Figure and its axes (a list), without pyplot's global state."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install 'tracer[plot]'") from None
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, list(axes.flat)


def _steps(trace):
    return np.arange(trace.first_step, trace.first_step + trace.steps)


def layer_norms(trace, l):
    """‖∇⁽ˡ⁾‖ per step, as Trace.gradient_norm but scaled by the largest |entry| first, so that a
    gradient of 1e169 has its norm (its square would overflow): m·√(Σ(g/m)²), m = max|g|; inf or
    NaN where an entry is not finite."""
    trace_stores = [trace.grad_W, trace.grad_b, getattr(trace, "grad_Wh", None), getattr(trace, "grad_bh", None)]
    parts = [np.asarray(store[l - 1], dtype=float).reshape(trace.steps, -1)
             for store in trace_stores if store is not None and store[l - 1] is not None]
    g = np.concatenate(parts, axis=1)
    with np.errstate(all="ignore"):
        largest = np.abs(g).max(axis=1)
        scale = np.where(np.isfinite(largest) & (largest > 0), largest, 1.0)
        norms = scale * np.sqrt(((g / scale[:, None]) ** 2).sum(axis=1))
    return np.where(np.isfinite(largest), norms, np.where(np.isnan(g).any(axis=1), np.nan, np.inf))


def _integer_steps(ax):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_nonfinite(ax, trace):
    _integer_steps(ax)
    bad = trace.first_nonfinite_step()
    if bad is not None:
        ax.axvline(trace.first_step + bad, color="red", linestyle=":", linewidth=1)
        ax.annotate(f"first inf/NaN (step {trace.first_step + bad})", (trace.first_step + bad, 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", color="red", fontsize=8)


def _spans_decades(values):
    shown = np.abs(values[np.isfinite(values) & (values != 0)])
    return shown.size > 1 and shown.max() / shown.min() > 100 and (values[np.isfinite(values)] > 0).all()


def loss(trace, ax=None):
    """The batch loss E per step; log scale when it is positive and spans more than two decades."""
    if ax is None:
        _, (ax,) = _figure()
    values = np.where(np.isfinite(trace.loss), trace.loss, np.nan)
    ax.plot(_steps(trace), values, marker="." if trace.steps <= 50 else None, color="black")
    if _spans_decades(values):
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss E", title=f"{trace.scenario.name}: loss")
    _integer_steps(ax)
    _mark_nonfinite(ax, trace)
    return ax.figure


def gradient_flow(trace, ax=None):
    """‖∇⁽ˡ⁾‖ per layer and step on a log scale: a vanishing layer sits decades below the output
    layer; an exploding run climbs until the line stops at the first non-finite norm; a norm of
    exactly 0 is drawn at the bottom edge as a triangle."""
    if ax is None:
        _, (ax,) = _figure()
    steps = _steps(trace)
    colours = _layer_colours(trace.layers)
    floor = None
    norms = [layer_norms(trace, l) for l in range(1, trace.layers + 1)]
    positive = np.concatenate([n[np.isfinite(n) & (n > 0)] for n in norms])
    if positive.size:
        floor = positive.min() / 10
    for l, norm in enumerate(norms, start=1):
        kind = getattr(trace.scenario.layers[l - 1], "kind", "dense")
        shown = np.where(np.isfinite(norm) & (norm > 0), norm, np.nan)
        ax.plot(steps, shown, color=colours[l - 1], label=f"layer {l} ({kind}, {trace.scenario.layers[l - 1].activation})",
                marker="." if trace.steps <= 50 else None)
        zero = norm == 0
        if zero.any() and floor is not None:
            ax.plot(steps[zero], np.full(zero.sum(), floor), "v", color=colours[l - 1], markersize=4)
    if positive.size:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="‖∇⁽ˡ⁾‖ (batch gradient norm)", title=f"{trace.scenario.name}: gradient flow per layer")
    ax.legend(fontsize=8)
    _mark_nonfinite(ax, trace)
    return ax.figure


def _layer_colours(count):
    from matplotlib import colormaps
    cmap = colormaps["viridis"]
    return [cmap(k / max(count - 1, 1) * 0.9) for k in range(count)]


def decade_counts(values, edges):
    """How many of `values` (steps, n) fall in each decade bin of log10|v| per step, (bins + 2, steps):
    row 0 counts exact zeros, the last row the non-finite values, the rows between the decades
    [edges[k], edges[k+1])."""
    values = np.asarray(values, dtype=float).reshape(values.shape[0], -1)
    finite = np.isfinite(values)
    counts = np.zeros((len(edges) + 1, values.shape[0]), dtype=int)
    counts[0] = ((values == 0) & finite).sum(axis=1)
    counts[-1] = (~finite).sum(axis=1)
    with np.errstate(divide="ignore"):
        exponent = np.log10(np.abs(np.where(finite & (values != 0), values, np.nan)))
    for step in range(values.shape[0]):
        shown = exponent[step][np.isfinite(exponent[step])]
        counts[1:-1, step] = np.histogram(shown, bins=edges)[0]
    return counts


def histograms(trace, quantity="grad"):
    """Per layer a heat map: x the step, y the decade of |value| (exact 0 below, inf/NaN above),
    colour the number of the layer's batch gradients (quantity "grad") or parameters ("param") there."""
    stores = {"grad": ("grad_W", "grad_b"), "param": ("W", "b")}
    if quantity not in stores:
        raise InputError(f"histograms of {quantity!r}: choose grad or param")
    per_layer = []
    for l in range(trace.layers):
        parts = [np.asarray(getattr(trace, name)[l][:trace.steps], dtype=float).reshape(trace.steps, -1)
                 for name in stores[quantity]]
        per_layer.append(np.concatenate(parts, axis=1))
    everything = np.concatenate([v.ravel() for v in per_layer])
    shown = np.abs(everything[np.isfinite(everything) & (everything != 0)])
    low, high = (np.floor(np.log10(shown.min())), np.ceil(np.log10(shown.max()))) if shown.size else (-1.0, 0.0)
    edges = np.arange(low, max(high, low + 1) + 1)
    figure, axes = _figure(width=6.4, height=2.4, rows=trace.layers)
    for l, (ax, values) in enumerate(zip(axes, per_layer), start=1):
        counts = decade_counts(values, edges)
        image = ax.imshow(np.where(counts > 0, counts, np.nan), aspect="auto", origin="lower", cmap="magma_r",
                          interpolation="nearest",
                          extent=(trace.first_step - 0.5, trace.first_step + trace.steps - 0.5, -0.5, len(edges) + 0.5))
        labels = ["0"] + [f"1e{int(e)}" for e in edges[:-1]] + ["inf/NaN"]
        ticks = range(0, len(labels), max(1, len(labels) // 8))
        ax.set_yticks(list(ticks), [labels[k] for k in ticks], fontsize=7)
        ax.set(ylabel=f"layer {l}: |value|", xlabel="step" if l == trace.layers else None)
        figure.colorbar(image, ax=ax, label="count")
    axes[0].set_title(f"{trace.scenario.name}: {'batch gradients' if quantity == 'grad' else 'parameters'} per decade")
    return figure


def time_norms(trace, l, step=0, name="e"):
    """‖∂E/∂h_t‖ of recurrent layer l at `step` per time step t, over the step's samples and the
    layer's units (T,); None when layer l records no `name` through time."""
    for f, array in trace.arrays.items():
        if f.layer == l and f.group == "sample" and f.key == name and f.index.startswith("time-"):
            n = len(trace.samples(step))
            values = np.asarray(array[step, :n], dtype=float)        # (B, T, units)
            with np.errstate(over="ignore", invalid="ignore"):
                return np.sqrt((values ** 2).sum(axis=(0, 2)))
    return None


def through_time(trace, step=0):
    """Per recurrent layer, ‖∂E/∂h_t‖ per time step at training step `step` (log scale): going back
    from the last time step, the error grows (exploding) or shrinks (vanishing) by the factor Wh·f'(u)."""
    layers = [l for l in range(1, trace.layers + 1) if time_norms(trace, l, step) is not None]
    if not layers:
        raise InputError(f"{trace.scenario.name} has no recurrent layer: the error through time needs an rnn, lstm or gru")
    figure, (ax,) = _figure()
    for l in layers:
        norms = time_norms(trace, l, step)
        ax.plot(np.arange(len(norms)), np.where(np.isfinite(norms) & (norms > 0), norms, np.nan),
                label=f"layer {l} ({trace.scenario.layers[l - 1].kind}): ‖∂E/∂h_t‖")
        cell = time_norms(trace, l, step, name="ec")
        if cell is not None:
            ax.plot(np.arange(len(cell)), np.where(cell > 0, cell, np.nan), linestyle="--", label=f"layer {l}: ‖∂E/∂c_t‖")
    ax.set_yscale("log")
    ax.set(xlabel="time step t", ylabel="error norm", title=f"{trace.scenario.name}: the error through time at step {step}")
    ax.legend(fontsize=8)
    return figure


def overview(trace):
    """The loss and the gradient flow side by side."""
    figure, (left, right) = _figure(columns=2)
    loss(trace, left)
    gradient_flow(trace, right)
    return figure


class Plotter:
    """trace.plot: call it for the overview, or one of its methods for one picture."""

    def __init__(self, trace):
        self.trace = trace

    def __call__(self):
        return overview(self.trace)

    def loss(self):
        return loss(self.trace)

    def gradient_flow(self):
        return gradient_flow(self.trace)

    def histograms(self, quantity="grad"):
        return histograms(self.trace, quantity)

    def through_time(self, step=0):
        return through_time(self.trace, step)

    def network(self, step=0, sample=0):
        from tracer import diagram
        return diagram.Diagram(diagram.svg(self.trace, step, sample))

    def __repr__(self):
        return f"<Plotter of {self.trace.scenario.name!r}: call it, or .loss() .gradient_flow() .histograms() .through_time() .network()>"


def figure_of(trace, kind="overview", step=0):
    """The picture `kind` (KINDS) of `trace`, for `tracer plot --kind`."""
    makers = {"overview": overview, "loss": loss, "gradient-flow": gradient_flow, "histograms": histograms,
              "through-time": lambda t: through_time(t, step)}
    if kind not in makers:
        raise InputError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    return makers[kind](trace)
