"""layernorm: layer normalisation per sample over the units of the layer (as
torch.nn.LayerNorm(units, elementwise_affine=True)), then γ, β and the layer's own activation.

  forward   per sample s, over the n units j of the layer below (x = a⁽ˡ⁻¹⁾):
            μ_s = Σ_j x_sj / n,  σ²_s = Σ_j (x_sj − μ_s)² / n (biased),
            x̂_sj = (x_sj − μ_s)/√(σ²_s + eps),  u_sj = γ_j·x̂_sj + β_j
  backward  with δ = ∂E/∂u per sample:
            dx̂ = δ·γ,  m1_s = Σ_j dx̂_sj / n,  m2_s = Σ_j dx̂_sj·x̂_sj / n
  error     ∂E/∂x_sj = (dx̂_sj − m1_s − x̂_sj·m2_s)/√(σ²_s + eps)
  gradients ∂E/∂γ_j = δ_j·x̂_j,  ∂E/∂β_j = δ_j   (per sample; the batch total by the reduction)
γ starts at 1 and β at 0 (no draw from the seed); eps defaults to 1e-5; the layer keeps the width
of the layer below; a batch of one sample is fine (the statistics are the sample's own).
"""
from .base import COMMON, Normalisation, Quantity

MEAN = Quantity("ln_mean", "μ", "μ, the sample's mean over the layer's units", "sample", key="mean")
VAR = Quantity("ln_var", "σ²", "σ², the sample's biased variance over the layer's units", "sample", key="var")
XHAT = Quantity("xhat", "x̂", "x̂ = (x − μ)/√(σ² + eps), the normalised input", "sample-unit")
DXHAT = Quantity("dxhat", "dx̂", "dx̂ = δ·γ = ∂E/∂x̂", "sample-unit")
M1 = Quantity("ln_m1", "m1", "m1 = Σ_j dx̂_j / n over the sample's units", "sample", key="m1")
M2 = Quantity("ln_m2", "m2", "m2 = Σ_j dx̂_j·x̂_j / n over the sample's units", "sample", key="m2")


class LayerNorm(Normalisation):
    name = "layernorm"
    description = "u = γ·(x − μ)/√(σ² + eps) + β, μ and σ² per sample over the layer's units"
    min_batch = 1
    axis = 1                  # the statistics run over the units of each sample

    # scenario face and numpy face: Normalisation's (base.py), with axis 1

    # ------------------------------------------------------------ records face (l11-core)

    def records(self, layer):
        """Per sample: μ, σ² (CSV ln_mean, ln_var: one value, row and col empty), x̂ and dx̂ per unit,
        m1, m2 (ln_m1, ln_m2); then u, a, slope, delta."""
        return (MEAN, VAR, XHAT, DXHAT, M1, M2) + COMMON

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

    # ------------------------------------------------------------ chain, check and diagnose faces
    # Normalisation's (base.py): the statistics σ², m1, m2 are the sample's (records: per "sample"),
    #   chain     ② = x̂ⱼ;  ∂E/∂a⁽ˡ⁻¹⁾ⱼ = (dx̂ⱼ − m1⁽ˡ⁾ − x̂ⱼ·m2⁽ˡ⁾)/√(σ²⁽ˡ⁾ + ε)
    #   check     u = γⱼ·x̂ⱼ + βⱼ and ∂E/∂γⱼ = x̂ⱼ·δⱼ with x̂ and the error down from the engine
    #   diagnose  link diag(|γ|/√(σ² + ε)), σ² averaged over the step's samples
