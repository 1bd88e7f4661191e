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
from tracer.layers.excel import ExcelColumns
from tracer.layers.normalisation import Normalisation
from tracer.layers.quantities import COMMON, Quantity

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
    couples_samples = True    # μ and σ² run over the batch
    axis = 0                  # the statistics run over the batch (per unit)

    # scenario face and numpy face: Normalisation's (normalisation.py), with axis 0

    # ------------------------------------------------------------ records face

    def records(self, layer):
        """x̂ and dx̂ per sample and unit, then u, a, slope, delta; μ, σ², m1, m2 per step and unit."""
        return (XHAT, DXHAT) + COMMON + (MEAN, VAR, M1, M2)

    # ------------------------------------------------------------ excel face

    def excel_settings(self, layer, l):
        """eps in a Settings cell bn_eps_l."""
        return [("eps", f"bn_eps_{l}", layer.eps, f"layer {l} {self.name}: eps")]

    def excel_forward(self, layer, x):
        """μ and σ² (SUMPRODUCT of the deviations, finite where the engine is) in the Σ row over the
        step's samples, then x̂ and u = γ·x̂ + β in the sample rows."""
        l, eps = x.l, x.setting("eps")
        group = f"layer {l} batchnorm"

        def column(key):
            return f"{x.ref(key, 'f')}:{x.ref(key, 'l')}"

        def variance(j):
            deviation = f"{column(x.below(j))}-{x.ref(('bn_mean', l, j))}"
            return f"SUMPRODUCT({deviation},{deviation})/{{n}}"
        return [
            ExcelColumns(group, MEAN.name, MEAN.symbol, "batch mean of the input (Σ row)",
                         total=lambda j: f"SUM({column(x.below(j))})/{{n}}"),
            ExcelColumns(group, VAR.name, VAR.symbol, "biased batch variance Σ(x − μ)²/B (Σ row)", total=variance),
            ExcelColumns(group, XHAT.name, XHAT.symbol, f"x̂ = (x − μ)/√(σ² + eps), eps = {eps}",
                         sample=lambda j: f"({x.ref(x.below(j))}-{x.ref(('bn_mean', l, j), 'p')})/"
                                          f"SQRT({x.ref(('bn_var', l, j), 'p')}+{eps})"),
            ExcelColumns(group, "u", "u", lambda j: f"u = γ·x̂ + β with γ{l}[{j}], β{l}[{j}]",
                         sample=lambda j: f"{x.ref(('W', l, (0, j)), 'p')}*{x.ref(('xhat', l, j))}+{x.ref(('b', l, (j,)), 'p')}"),
        ]

    def excel_backward(self, layer, x):
        """dx̂ = δ·γ in the sample rows, m1 = Σ dx̂ / B and m2 = Σ dx̂·x̂ / B in the Σ row."""
        l = x.l
        group = f"layer {l} batchnorm backward"

        def column(key):
            return f"{x.ref(key, 'f')}:{x.ref(key, 'l')}"
        return [
            ExcelColumns(group, DXHAT.name, DXHAT.symbol, "dx̂ = δ·γ",
                         sample=lambda j: f"{x.ref(('delta', l, j))}*{x.ref(('W', l, (0, j)), 'p')}"),
            ExcelColumns(group, M1.name, M1.symbol, "m1 = Σ dx̂ / B (Σ row)",
                         total=lambda j: f"SUM({column(('dxhat', l, j))})/{{n}}"),
            ExcelColumns(group, M2.name, M2.symbol, "m2 = Σ dx̂·x̂ / B (Σ row)",
                         total=lambda j: f"SUMPRODUCT({column(('dxhat', l, j))},{column(('xhat', l, j))})/{{n}}"),
        ]

    def excel_error_down(self, layer, x, j):
        """∂E/∂x_j = (dx̂_j − m1_j − x̂_j·m2_j)/√(σ²_j + eps), m1, m2 and σ² of the step's Σ row."""
        l = x.l
        body = (f"({x.ref(('dxhat', l, j))}-{x.ref(('bn_m1', l, j), 'p')}-{x.ref(('xhat', l, j))}*"
                f"{x.ref(('bn_m2', l, j), 'p')})/SQRT({x.ref(('bn_var', l, j), 'p')}+{x.setting('eps')})")
        return body, f"(dx̂ − m1 − x̂·m2)/√(σ² + eps) of the batchnorm layer {l}"

    def excel_error_columns_below(self, layer):
        """The error passed down is shown in the e columns of the layer below."""
        return True

    def excel_factor(self, layer, x, i, j):
        """② of ∂E/∂γ_j = x̂_j·δ_j."""
        return ("xhat", x.l, j), f"x̂⁽{x.l}⁾{j}"
