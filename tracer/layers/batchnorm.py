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
from .base import COMMON, Normalisation, Quantity

XHAT = Quantity("xhat", "x̂", "x̂ = (x − μ)/√(σ² + eps), the normalised input", "sample-unit")
DXHAT = Quantity("dxhat", "dx̂", "dx̂ = δ·γ = ∂E/∂x̂", "sample-unit")
MEAN = Quantity("bn_mean", "μ", "μ, the unit's mean over the batch", "step-unit", key="mean")
VAR = Quantity("bn_var", "σ²", "σ², the unit's biased variance over the batch", "step-unit", key="var")
M1 = Quantity("bn_m1", "m1", "m1 = Σ_s dx̂ / B", "step-unit", key="m1")
M2 = Quantity("bn_m2", "m2", "m2 = Σ_s dx̂·x̂ / B", "step-unit", key="m2")


class BatchNorm(Normalisation):
    name = "batchnorm"
    description = "u = γ·(x − μ)/√(σ² + eps) + β, μ and σ² per unit over the batch"
    min_batch = 2
    axis = 0                  # the statistics run over the batch (per unit)

    # scenario face and numpy face: Normalisation's (base.py), with axis 0

    # ------------------------------------------------------------ records face

    def records(self, layer):
        """x̂ and dx̂ per sample and unit, then u, a, slope, delta; μ, σ², m1, m2 per step and unit."""
        return (XHAT, DXHAT) + COMMON + (MEAN, VAR, M1, M2)

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
