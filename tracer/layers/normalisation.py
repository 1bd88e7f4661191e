"""The normalisation maths, x̂ = (x − μ)/√(σ² + eps) and its backward pass, and the Normalisation
kind that batchnorm (statistics over the batch, axis 0) and layernorm (over a sample's units,
axis 1) share: u = γ·x̂ + β, then the layer's own activation."""
import numpy as np

from tracer.errors import ScenarioError
from tracer.layers.parsing import Layer, parse_activation
from tracer.layers.protocol import LayerKind, trace_value
from tracer.layers.sums import IN_ORDER
from tracer.maths.ieee import propagate_nonfinite


def normalise(x, axis, eps):
    """μ = Σ x / n, σ² = Σ (x − μ)² / n (biased), x̂ = (x − μ)/√(σ² + eps), over `axis`
    (0: over the batch, batchnorm; 1: over the units of a sample, layernorm). Returns (μ, σ², x̂)
    with the reduced axis dropped from μ and σ². σ² = inf gives x̂ = x/√inf = 0 in IEEE arithmetic,
    an error in a spreadsheet (whose x̂ reads σ²): x̂ is made non-finite where σ² is."""
    n = x.shape[axis]
    mean = np.sum(x, axis=axis, keepdims=True) / n
    centred = x - mean
    var = np.sum(centred * centred, axis=axis, keepdims=True) / n
    xhat = propagate_nonfinite(centred / np.sqrt(var + eps), np.broadcast_to(var, x.shape))
    return np.squeeze(mean, axis), np.squeeze(var, axis), xhat


def normalise_backward(delta, gamma, xhat, var, axis, eps):
    """The backward pass through x̂ = (x − μ)/√(σ² + eps), u = γ·x̂ + β, with δ = ∂E/∂u:
    dx̂ = δ·γ, m1 = Σ dx̂ / n, m2 = Σ dx̂·x̂ / n (over `axis`), ∂E/∂x = (dx̂ − m1 − x̂·m2)/√(σ² + eps).
    `var` has `axis` dropped. Returns (dx̂, m1, m2, ∂E/∂x), m1 and m2 with `axis` dropped."""
    n = delta.shape[axis]
    dxhat = delta * gamma
    m1 = np.sum(dxhat, axis=axis, keepdims=True) / n
    m2 = np.sum(dxhat * xhat, axis=axis, keepdims=True) / n
    dx = (dxhat - m1 - xhat * m2) / np.sqrt(np.expand_dims(var, axis) + eps)
    return dxhat, np.squeeze(m1, axis), np.squeeze(m2, axis), dx


class Normalisation(LayerKind):
    """A normalisation layer (batchnorm, layernorm): x̂ = (x − μ)/√(σ² + eps) with μ and σ² (biased)
    over `axis` of x = a⁽ˡ⁻¹⁾ (0: per unit over the batch; 1: per sample over the units), then
    u = γ·x̂ + β and the layer's own activation. γ starts at 1, β at 0; the width of the layer below
    is kept. Backward, with δ = ∂E/∂u per sample: dx̂ = δ·γ, m1 = Σ dx̂ / n, m2 = Σ dx̂·x̂ / n over
    `axis`, ∂E/∂x = (dx̂ − m1 − x̂·m2)/√(σ² + eps); ∂E/∂γ = δ·x̂, ∂E/∂β = δ per sample.
    The record keys: mean, var, xhat (forward), dxhat, m1, m2 (backward), dx (∂E/∂x)."""

    keys = ("kind", "units", "activation", "slope", "alpha", "eps", "train_bias")
    param_names = ("gamma", "beta")
    keeps_width = True
    normalises = True
    axis = 0

    def parse(self, v, raw, key, fan_in, is_output):
        """units (default and only value: the layer below's), activation (default identity) and its
        parameters, eps (default 1e-5, positive), train_bias (β trained, default true)."""
        units = v.integer(raw, "units", key, default=fan_in, minimum=1)
        if units != fan_in:
            raise ScenarioError(v.source, f"{key}.units", f"a {self.name} layer keeps the width of the layer below ({fan_in})")
        activation, params = parse_activation(v, raw, key, units, is_output, default="identity")
        return Layer(
            units=units, activation=activation, activation_params=params, init="constant", init_params={"value": 1.0},
            weights=None, bias_init="constant", bias_params={"value": 0.0}, bias=None,
            train_bias=v.boolean(raw, "train_bias", key, default=True), kind=self.name,
            eps=v.number(raw, "eps", key, default=1e-5, positive=True),
        )

    def param_shapes(self, fan_in, units):
        """γ stored as a 1 × units W, β as a b of `units`."""
        return (1, units), (units,)

    def initial_parameters(self, layer, fan_in, rng):
        """γ = 1, β = 0, as PyTorch; no draw from `rng`."""
        return np.ones((1, layer.units)), np.zeros(layer.units)

    def param_name(self, which, l, index):
        """gamma{l}[j] for the stored W index (0, j), beta{l}[j] for b's (j,)."""
        return f"{self.param_names[0]}{l}[{index[-1]}]" if which == "W" else f"{self.param_names[1]}{l}[{index[0]}]"

    def forward(self, layer, below, W, b, sums=IN_ORDER):
        """u = γ·x̂ + β with the statistics over `axis`; record {mean, var, xhat} (their sums: numpy's
        own, whatever `sums`)."""
        mean, var, xhat = normalise(below, self.axis, layer.eps)
        return W[0] * xhat + b, {"mean": mean, "var": var, "xhat": xhat}

    def backward(self, layer, record, delta, W):
        """record {dxhat, m1, m2} and dx = ∂E/∂x (kept for error_down)."""
        dxhat, m1, m2, dx = normalise_backward(delta, W[0], record["xhat"], record["var"], self.axis, layer.eps)
        record.update({"dxhat": dxhat, "m1": m1, "m2": m2, "dx": dx})

    def error_down(self, layer, record, delta, W, error_here, sums=IN_ORDER):
        """∂E/∂x = (dx̂ − m1 − x̂·m2)/√(σ² + eps), computed by `backward`."""
        return record["dx"]

    def gradients(self, layer, record, below, delta):
        """∂E/∂γ_j = δ_j·x̂_j (B × 1 × units), ∂E/∂β_j = δ_j, per sample."""
        return (delta * record["xhat"])[:, None, :], delta

    derives_sample_gradients = True

    def gradient_factor(self, layer, l, i, j):
        """x̂ⱼ: ∂E/∂γⱼ = x̂ⱼ·δⱼ."""
        return ("xhat", l, j)

    # ------------------------------------------------------------ chain, check, diagnose faces
    # The statistics are per unit over the batch (batchnorm: σ²ⱼ, m1ⱼ, m2ⱼ, per "step-unit") or per
    # sample over the units (layernorm: σ², m1, m2 of the sample, per "sample"): `statistic` finds
    # which from the kind's own records.

    def statistic(self, layer, key):
        """The Quantity the kind records for statistic `key` (mean, var, m1, m2)."""
        return next(q for q in self.records(layer) if q.key == key)

    def chain_input(self, layer, l, i, j, names, trace, step, slot):
        """Factor ② of ∂E/∂γⱼ: x̂ⱼ."""
        return (names.unit("x̂", l, j), f"normalised input x̂ of unit {j} ({self.name})",
                float(trace_value(trace, "xhat", l, j, step, slot)))

    def chain_error_down(self, layer, l, j, names):
        """(dx̂ⱼ − m1 − x̂ⱼ·m2)/√(σ² + ε), the statistics those of unit j (per unit) or of the sample."""
        import sympy as sp
        if self.statistic(layer, "var").per == "sample":
            m1, m2, var = (names.layer_scalar(q, l) for q in ("m1", "m2", "σ²"))
        else:
            m1, m2, var = (names.unit(q, l, j) for q in ("m1", "m2", "σ²"))
        eps = names.plain("ε", "\\varepsilon")
        expression = (names.unit("dx̂", l, j) - m1 - names.unit("x̂", l, j) * m2) / sp.sqrt(var + eps)
        return f"error from the {self.name} layer {l} above", expression

    engine_only = ("xhat", "e")   # x̂ (from the statistics) and the error passed down (its m1, m2): not hand quantities

    def check_u(self, layer, l, j, get):
        """u = γⱼ·x̂ⱼ + βⱼ, x̂ from the engine (its statistics are not hand quantities)."""
        return get("W", l, (0, j)) * get.engine("xhat", l, (j,)) + get("b", l, (j,))

    def check_error_down(self, layer, l, j, get):
        """The engine's ∂E/∂a⁽ˡ⁻¹⁾ⱼ: its m1, m2 are sums over the statistics' axis, not hand quantities."""
        return get.engine("e", l - 1, (j,))

    def check_grad_W(self, layer, l, i, j, get):
        """∂E/∂γⱼ = x̂ⱼ·δⱼ."""
        return get.engine("xhat", l, (j,)) * get("delta", l, (j,))

    def diagnose_u(self, layer, l, trace, step, slot, j, below, below_name):
        """γ·x̂ + β, from x̂."""
        return f"the {self.name} γ·x̂ + β", [self.diagnose_input(layer, l, trace, step, slot, 0, j)]

    def diagnose_input(self, layer, l, trace, step, slot, i, j):
        """x̂ⱼ."""
        return f"x̂{l}[{j}]", float(trace_value(trace, "xhat", l, j, step, slot))

    def diagnose_links(self, layer, l, trace, step, slot=None):
        """diag(|γₖ|/√(σ² + ε)): the direct path through x̂ (m1 and m2 left out), γ on the diagonal;
        a per-sample σ² is averaged over the step's samples when `slot` is None."""
        gamma = trace.W[l - 1][step, 0]
        var = self.statistic(layer, "var")
        if var.per == "step-unit":
            variance = trace_value(trace, var.name, l, np.arange(len(gamma)), step)
        elif slot is None:
            variance = np.mean([trace_value(trace, var.name, l, None, step, s) for s in range(len(trace.samples(step)))])
        else:
            variance = trace_value(trace, var.name, l, None, step, slot)
        with np.errstate(all="ignore"):
            scale = np.abs(gamma) / np.sqrt(np.nan_to_num(variance) + layer.eps)
        return np.diag(scale), np.diag(gamma)
