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
from tracer.layers.excel import ExcelColumns
from tracer.layers.normalisation import Normalisation
from tracer.layers.quantities import COMMON, Quantity

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

    # scenario face and numpy face: Normalisation's (normalisation.py), with axis 1

    # ------------------------------------------------------------ records face

    def records(self, layer):
        """Per sample: μ, σ² (CSV ln_mean, ln_var: one value, row and col empty), x̂ and dx̂ per unit,
        m1, m2 (ln_m1, ln_m2); then u, a, slope, delta."""
        return (MEAN, VAR, XHAT, DXHAT, M1, M2) + COMMON

    # ------------------------------------------------------------ excel face
    # Everything lives in the sample rows (the statistics are the sample's own): μ, σ², m1, m2 one
    # column each for the layer, x̂, u, dx̂ one per unit. Sums over the units read a range of the row:
    # the layer below's outputs are adjacent columns, as are this layer's x̂ and dx̂ (one family each).

    def excel_settings(self, layer, l):
        """eps in a Settings cell ln_eps_l."""
        return [("eps", f"ln_eps_{l}", layer.eps, f"layer {l} {self.name}: eps")]

    def excel_forward(self, layer, x):
        """μ = SUM(x)/n and σ² = SUMPRODUCT(x − μ, x − μ)/n over the row's inputs (products, never ^,
        so that tiny deviations underflow to 0 as in the engine), then x̂ = (x − μ)/√(σ² + eps) and
        u = γ·x̂ + β per unit, γ and β of the step's Σ row."""
        l, n, eps = x.l, x.units, x.setting("eps")
        group = f"layer {l} {self.name}"
        inputs = f"{x.ref(x.below(0))}:{x.ref(x.below(n - 1))}"
        mean, var = x.ref((MEAN.name, l)), x.ref((VAR.name, l))
        return [
            ExcelColumns(group, MEAN.name, MEAN.symbol, f"μ = Σⱼ xⱼ / {n}: the sample's mean over the layer's inputs",
                         sample=lambda j: f"SUM({inputs})/{n}", per_unit=False),
            ExcelColumns(group, VAR.name, VAR.symbol, f"σ² = Σⱼ (xⱼ − μ)² / {n}: the sample's biased variance",
                         sample=lambda j: f"SUMPRODUCT({inputs}-{mean},{inputs}-{mean})/{n}", per_unit=False),
            ExcelColumns(group, XHAT.name, XHAT.symbol, f"x̂ = (x − μ)/√(σ² + eps), eps = {eps}",
                         sample=lambda j: f"({x.ref(x.below(j))}-{mean})/SQRT({var}+{eps})"),
            ExcelColumns(group, "u", "u", lambda j: f"u = γ·x̂ + β with γ{l}[{j}], β{l}[{j}]",
                         sample=lambda j: f"{x.ref(('W', l, (0, j)), 'p')}*{x.ref((XHAT.name, l, j))}+{x.ref(('b', l, (j,)), 'p')}"),
        ]

    def excel_backward(self, layer, x):
        """dx̂ = δ·γ per unit, m1 = Σⱼ dx̂ⱼ / n and m2 = Σⱼ dx̂ⱼ·x̂ⱼ / n per sample."""
        l, n = x.l, x.units
        group = f"layer {l} {self.name} backward"

        def units(quantity):
            return f"{x.ref((quantity, l, 0))}:{x.ref((quantity, l, n - 1))}"
        return [
            ExcelColumns(group, DXHAT.name, DXHAT.symbol, "dx̂ = δ·γ",
                         sample=lambda j: f"{x.ref(('delta', l, j))}*{x.ref(('W', l, (0, j)), 'p')}"),
            ExcelColumns(group, M1.name, M1.symbol, f"m1 = Σⱼ dx̂ⱼ / {n} over the sample's units",
                         sample=lambda j: f"SUM({units(DXHAT.name)})/{n}", per_unit=False),
            ExcelColumns(group, M2.name, M2.symbol, f"m2 = Σⱼ dx̂ⱼ·x̂ⱼ / {n} over the sample's units",
                         sample=lambda j: f"SUMPRODUCT({units(DXHAT.name)},{units(XHAT.name)})/{n}", per_unit=False),
        ]

    def excel_error_down(self, layer, x, j):
        """∂E/∂x_j = (dx̂_j − m1 − x̂_j·m2)/√(σ² + eps), every cell of the sample's row."""
        l = x.l
        body = (f"({x.ref((DXHAT.name, l, j))}-{x.ref((M1.name, l))}-{x.ref((XHAT.name, l, j))}*{x.ref((M2.name, l))})"
                f"/SQRT({x.ref((VAR.name, l))}+{x.setting('eps')})")
        return body, f"(dx̂ − m1 − x̂·m2)/√(σ² + eps) of the layernorm layer {l}"

    def excel_error_columns_below(self, layer):
        """The error passed down is shown in the e columns of the layer below."""
        return True

    def excel_factor(self, layer, x, i, j):
        """② of ∂E/∂γ_j = x̂_j·δ_j."""
        return (XHAT.name, x.l, j), f"x̂⁽{x.l}⁾{j}"

    # ------------------------------------------------------------ chain, check and diagnose faces
    # Normalisation's (normalisation.py): the statistics σ², m1, m2 are the sample's (records: per "sample"),
    #   chain     ② = x̂ⱼ;  ∂E/∂a⁽ˡ⁻¹⁾ⱼ = (dx̂ⱼ − m1⁽ˡ⁾ − x̂ⱼ·m2⁽ˡ⁾)/√(σ²⁽ˡ⁾ + ε)
    #   check     u = γⱼ·x̂ⱼ + βⱼ and ∂E/∂γⱼ = x̂ⱼ·δⱼ with x̂ and the error down from the engine
    #   diagnose  link diag(|γ|/√(σ² + ε)), σ² averaged over the step's samples
