"""batchnorm: batch normalisation per unit over the samples of the batch (training mode, as
torch.nn.BatchNorm1d), then γ, β and the layer's own activation.

  forward   μ_j = Σ_s x_sj / B,  σ²_j = Σ_s (x_sj − μ_j)² / B (biased),
            x̂_sj = (x_sj − μ_j)/√(σ²_j + eps),  u_sj = γ_j·x̂_sj + β_j        (x = a⁽ˡ⁻¹⁾)
  backward  with δ = ∂E/∂u per sample (relative to the summed loss):
            dx̂ = δ·γ,  m1_j = Σ_s dx̂_sj / B,  m2_j = Σ_s dx̂_sj·x̂_sj / B
  error     ∂E/∂x_sj = (dx̂_sj − m1_j − x̂_sj·m2_j)/√(σ²_j + eps)
  gradients ∂E/∂γ_j = δ_j·x̂_j,  ∂E/∂β_j = δ_j   (per sample; the batch total by the reduction)
γ starts at 1 and β at 0 (no draw from the seed); the layer keeps the width of the layer below;
every batch needs 2 samples or more (σ² = 0 for one sample, so x̂ = 0 whatever the input).
"""
import numpy as np

from ..errors import ScenarioError
from .base import (COMMON, Layer, LayerKind, Quantity, normalisation_error_down, normalisation_input, normalisation_links,
                   normalisation_u, normalise, normalise_backward, parse_activation, trace_value)

XHAT = Quantity("xhat", "x̂", "x̂ = (x − μ)/√(σ² + eps), the normalised input", "sample-unit")
DXHAT = Quantity("dxhat", "dx̂", "dx̂ = δ·γ = ∂E/∂x̂", "sample-unit")
MEAN = Quantity("bn_mean", "μ", "μ, the unit's mean over the batch", "step-unit")
VAR = Quantity("bn_var", "σ²", "σ², the unit's biased variance over the batch", "step-unit")
M1 = Quantity("bn_m1", "m1", "m1 = Σ_s dx̂ / B", "step-unit")
M2 = Quantity("bn_m2", "m2", "m2 = Σ_s dx̂·x̂ / B", "step-unit")


class BatchNorm(LayerKind):
    name = "batchnorm"
    description = "u = γ·(x − μ)/√(σ² + eps) + β, μ and σ² per unit over the batch"
    keys = ("kind", "units", "activation", "slope", "alpha", "eps", "train_bias")
    param_names = ("gamma", "beta")
    keeps_width = True
    min_batch = 2
    axis = 0                  # the statistics run over the batch

    # ------------------------------------------------------------ scenario face

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

    # ------------------------------------------------------------ records face

    def records(self, layer):
        """x̂ and dx̂ per sample and unit, then u, a, slope, delta; μ, σ², m1, m2 per step and unit."""
        return (XHAT, DXHAT) + COMMON + (MEAN, VAR, M1, M2)

    # ------------------------------------------------------------ numpy face

    def forward(self, layer, below, W, b):
        """u = γ·x̂ + β with the batch statistics; record {bn_mean, bn_var, xhat}."""
        mean, var, xhat = normalise(below, self.axis, layer.eps)
        return W[0] * xhat + b, {MEAN.name: mean, VAR.name: var, XHAT.name: xhat}

    def backward(self, layer, record, delta, W):
        """record {dxhat, bn_m1, bn_m2} and the error ∂E/∂x (kept for error_down)."""
        dxhat, m1, m2, dx = normalise_backward(delta, W[0], record[XHAT.name], record[VAR.name], self.axis, layer.eps)
        record.update({DXHAT.name: dxhat, M1.name: m1, M2.name: m2, "dx": dx})

    def error_down(self, layer, record, delta, W, error_here):
        """∂E/∂x = (dx̂ − m1 − x̂·m2)/√(σ² + eps), computed by `backward`."""
        return record["dx"]

    def gradients(self, layer, record, below, delta):
        """∂E/∂γ_j = δ_j·x̂_j (B × 1 × units), ∂E/∂β_j = δ_j, per sample."""
        return (delta * record[XHAT.name])[:, None, :], delta

    # ------------------------------------------------------------ excel face (l11-workbook)

    def excel_forward_columns(self, layer, l):
        """The Trace sheet columns of layer l's forward pass before its activation, declared by key in
        order (batchnorm: μ, σ², x̂, u; dense: u), each with its header in math notation and its
        per-sample / total formula bodies, which refer to other columns BY KEY (two-pass layout)."""
        raise NotImplementedError

    def excel_backward_columns(self, layer, l):
        """The extra backward columns of layer l (normalisation: dx̂, m1, m2), declared as the forward ones."""
        raise NotImplementedError

    def excel_error_down(self, layer, l, j):
        """The formula body of the error passed down by layer l, ∂E/∂a⁽ˡ⁻¹⁾_j (dense: Σₖ W·δ (+ e);
        normalisation: (dx̂ − m1 − x̂·m2)/√(σ² + eps)), cells named by key."""
        raise NotImplementedError

    def excel_grad_W(self, layer, l, i, j):
        """The formula body of the per-sample ∂E/∂W_l[i,j] (dense: a⁽ˡ⁻¹⁾ᵢ·δⱼ; normalisation: δⱼ·x̂ⱼ)."""
        raise NotImplementedError

    def excel_settings(self, layer, l):
        """Settings cells the layer's formulas read (batchnorm: bn_eps_l), as (defined name, value, label)."""
        raise NotImplementedError

    # ------------------------------------------------------------ chain face

    def chain_input(self, layer, l, i, j, names, trace, step, slot):
        """Factor ② of ∂E/∂γⱼ: x̂ⱼ."""
        return normalisation_input(self, l, j, names, trace, step, slot)

    def chain_error_down(self, layer, l, j, names):
        """(dx̂ⱼ − m1ⱼ − x̂ⱼ·m2ⱼ)/√(σ²ⱼ + ε), the statistics of unit j over the batch."""
        return normalisation_error_down(self, l, j, names, VAR.per)

    # ------------------------------------------------------------ check face

    engine_only = (XHAT.name, MEAN.name, VAR.name, DXHAT.name, M1.name, M2.name)

    def check_u(self, layer, l, j, get):
        """u = γⱼ·x̂ⱼ + βⱼ, x̂ from the engine (batch statistics)."""
        return normalisation_u(l, j, get)

    def check_error_down(self, layer, l, j, get):
        """The engine's ∂E/∂a⁽ˡ⁻¹⁾ⱼ: its m1, m2 are sums over the batch, not hand quantities."""
        return get.engine("e", l - 1, (j,))

    def check_grad_W(self, layer, l, i, j, get):
        """∂E/∂γⱼ = x̂ⱼ·δⱼ."""
        return get.engine("xhat", l, (j,)) * get("delta", l, (j,))

    # ------------------------------------------------------------ diagnose face

    def diagnose_u(self, layer, l, trace, step, slot, j, below, below_name):
        """γ·x̂ + β, from x̂."""
        return f"the {self.name} γ·x̂ + β", [(f"x̂{l}[{j}]", float(trace_value(trace, XHAT.name, l, j, step, slot)))]

    def diagnose_input(self, layer, l, trace, step, slot, i, j):
        """x̂ⱼ."""
        return f"x̂{l}[{j}]", float(trace_value(trace, XHAT.name, l, j, step, slot))

    def diagnose_links(self, layer, l, trace, step, slot=None):
        """diag(|γ|/√(σ² + ε)) with the batch's σ²."""
        return normalisation_links(layer, l, trace, step, slot, VAR.name, VAR.per)
