"""groupnorm: group normalisation per sample over groups of the layer's units (as
torch.nn.GroupNorm(G, units) on samples × units inputs: the units are the channels, no spatial
axis), then γ, β and the layer's own activation.

  groups    G divides the width n; group g holds the m = n/G units g·m … (g+1)·m − 1
            (G = 1: layer norm over the units; G = n: instance norm, one unit per group, so σ² = 0,
            x̂ = 0 and u = β: nothing passes down, as in PyTorch)
  forward   per sample s and group g, over the group's units j (x = a⁽ˡ⁻¹⁾):
            μ_sg = Σ_j x_sj / m,  σ²_sg = Σ_j (x_sj − μ_sg)² / m (biased),
            x̂_sj = (x_sj − μ_sg)/√(σ²_sg + eps),  u_sj = γ_j·x̂_sj + β_j
  backward  with δ = ∂E/∂u per sample:
            dx̂ = δ·γ,  m1_sg = Σ_j dx̂_sj / m,  m2_sg = Σ_j dx̂_sj·x̂_sj / m   (over the group's units)
  error     ∂E/∂x_sj = (dx̂_sj − m1_sg − x̂_sj·m2_sg)/√(σ²_sg + eps), g the group of unit j
  gradients ∂E/∂γ_j = δ_j·x̂_j,  ∂E/∂β_j = δ_j   (per sample; the batch total by the reduction)
Records: the statistics of a sample's groups are recorded per unit (gn_mean, gn_var, gn_m1, gn_m2,
CSV row j: the value of unit j's group, the same in the m rows of one group), so that every
consumer of per-unit quantities (the CSV, both workbook layouts, chain, check, diagnose) reads them
as it reads batchnorm's. γ starts at 1 and β at 0, eps defaults to 1e-5, groups to 1; the layer
keeps the width of the layer below; a batch of one sample is fine.
"""
import numpy as np

from tracer.errors import ScenarioError
from tracer.layers.base import (COMMON, IN_ORDER, ExcelColumns, Normalisation, Quantity, normalise, normalise_backward,
                               trace_value)

MEAN = Quantity("gn_mean", "μ", "μ of the unit's group, the sample's mean over the group's units", "sample-unit", key="mean")
VAR = Quantity("gn_var", "σ²", "σ² of the unit's group, the sample's biased variance over the group's units", "sample-unit",
               key="var")
XHAT = Quantity("xhat", "x̂", "x̂ = (x − μ)/√(σ² + eps), the normalised input", "sample-unit")
DXHAT = Quantity("dxhat", "dx̂", "dx̂ = δ·γ = ∂E/∂x̂", "sample-unit")
M1 = Quantity("gn_m1", "m1", "m1 = Σ_j dx̂_j / m over the unit's group", "sample-unit", key="m1")
M2 = Quantity("gn_m2", "m2", "m2 = Σ_j dx̂_j·x̂_j / m over the unit's group", "sample-unit", key="m2")


def grouped(values, groups):
    """(…, n) -> (…, G, n/G): the units of each group on the last axis."""
    return np.reshape(values, np.shape(values)[:-1] + (groups, -1))


def per_unit(statistic, size):
    """(…, G) -> (…, G·size): each group's value repeated for its `size` units."""
    return np.repeat(statistic, size, axis=-1)


class GroupNorm(Normalisation):
    name = "groupnorm"
    description = "u = γ·(x − μ)/√(σ² + eps) + β, μ and σ² per sample over each group of the layer's units"
    keys = Normalisation.keys + ("groups",)
    min_batch = 1

    # ------------------------------------------------------------ scenario face

    def parse(self, v, raw, key, fan_in, is_output):
        """Normalisation's keys, and groups (default 1) that divides the width."""
        layer = super().parse(v, raw, key, fan_in, is_output)
        layer.groups = v.integer(raw, "groups", key, default=1, minimum=1)
        if layer.units % layer.groups:
            divisors = [str(d) for d in range(1, layer.units + 1) if layer.units % d == 0]
            raise ScenarioError(v.source, f"{key}.groups", f"{layer.groups} groups do not divide the layer's {layer.units} "
                                f"units (a {self.name} layer's groups divide its width: {', '.join(divisors)})")
        return layer

    def describe(self, layer):
        """The layer in a few words: "groupnorm 8 sigmoid (2 groups)"."""
        return f"{self.name} {layer.units} {layer.activation} ({layer.groups} group{'s' if layer.groups > 1 else ''})"

    @staticmethod
    def group_units(layer, j):
        """(first, last) unit of unit j's group."""
        size = layer.units // layer.groups
        first = j // size * size
        return first, first + size - 1

    # ------------------------------------------------------------ records face

    def records(self, layer):
        """Per sample and unit: μ, σ² of the unit's group, x̂, dx̂, m1, m2 of the group; then u, a, slope, delta."""
        return (MEAN, VAR, XHAT, DXHAT, M1, M2) + COMMON

    # ------------------------------------------------------------ numpy face

    def forward(self, layer, below, W, b, sums=IN_ORDER):
        """u = γ·x̂ + β with μ, σ² per sample and group (numpy's sums whatever `sums`); record
        {mean, var (per unit: its group's), xhat}."""
        size = layer.units // layer.groups
        mean, var, xhat = normalise(grouped(below, layer.groups), -1, layer.eps)
        xhat = np.reshape(xhat, np.shape(below))
        return W[0] * xhat + b, {"mean": per_unit(mean, size), "var": per_unit(var, size), "xhat": xhat}

    def backward(self, layer, record, delta, W):
        """record {dxhat, m1, m2 (per unit: its group's)} and dx = ∂E/∂x (kept for error_down)."""
        groups, size = layer.groups, layer.units // layer.groups
        var = grouped(record["var"], groups)[..., 0]
        dxhat, m1, m2, dx = normalise_backward(grouped(delta, groups), grouped(W[0], groups), grouped(record["xhat"], groups),
                                               var, -1, layer.eps)
        record.update({"dxhat": np.reshape(dxhat, np.shape(delta)), "m1": per_unit(m1, size), "m2": per_unit(m2, size),
                       "dx": np.reshape(dx, np.shape(delta))})

    # ------------------------------------------------------------ excel face
    # Everything lives in the sample rows, one column per unit: μ, σ² of the unit's group
    # (SUM/SUMPRODUCT over the group's range of the layer below's adjacent outputs), x̂, u; backward
    # dx̂, m1, m2 (over the group's range of this layer's dx̂ and x̂). Both layouts keep a family's
    # unit cells adjacent, so a group is one range.

    def excel_settings(self, layer, l):
        """eps in a Settings cell gn_eps_l."""
        return [("eps", f"gn_eps_{l}", layer.eps, f"layer {l} {self.name}: eps")]

    def excel_forward(self, layer, x):
        """μ = SUM(group)/m and σ² = SUMPRODUCT(group − μ, group − μ)/m per unit (products, never ^),
        then x̂ = (x − μ)/√(σ² + eps) and u = γ·x̂ + β, γ and β of the step's Σ row."""
        l, eps, size = x.l, x.setting("eps"), layer.units // layer.groups
        group = f"layer {l} {self.name}"

        def inputs(j):
            first, last = self.group_units(layer, j)
            return f"{x.ref(x.below(first))}:{x.ref(x.below(last))}"

        def span(j):
            first, last = self.group_units(layer, j)
            return f"units {first}…{last}"

        def mean(j):
            return x.ref((MEAN.name, l, j))

        def deviations(j):
            return f"{inputs(j)}-{mean(j)}"
        gamma, beta = (lambda j: x.ref(("W", l, (0, j)), "p")), (lambda j: x.ref(("b", l, (j,)), "p"))
        return [
            ExcelColumns(group, MEAN.name, MEAN.symbol, lambda j: f"μ = Σ xᵢ / {size} over unit {j}'s group ({span(j)})",
                         sample=lambda j: f"SUM({inputs(j)})/{size}"),
            ExcelColumns(group, VAR.name, VAR.symbol, lambda j: f"σ² = Σ (xᵢ − μ)² / {size} over unit {j}'s group "
                         f"({span(j)}): biased", sample=lambda j: f"SUMPRODUCT({deviations(j)},{deviations(j)})/{size}"),
            ExcelColumns(group, XHAT.name, XHAT.symbol, f"x̂ = (x − μ)/√(σ² + eps), eps = {eps}",
                         sample=lambda j: f"({x.ref(x.below(j))}-{mean(j)})/SQRT({x.ref((VAR.name, l, j))}+{eps})"),
            ExcelColumns(group, "u", "u", lambda j: f"u = γ·x̂ + β with γ{l}[{j}], β{l}[{j}]",
                         sample=lambda j: f"{gamma(j)}*{x.ref((XHAT.name, l, j))}+{beta(j)}"),
        ]

    def excel_backward(self, layer, x):
        """dx̂ = δ·γ per unit, m1 = Σ dx̂ / m and m2 = Σ dx̂·x̂ / m over the unit's group."""
        l, size = x.l, layer.units // layer.groups
        group = f"layer {l} {self.name} backward"

        def units(quantity, j):
            first, last = self.group_units(layer, j)
            return f"{x.ref((quantity, l, first))}:{x.ref((quantity, l, last))}"
        return [
            ExcelColumns(group, DXHAT.name, DXHAT.symbol, "dx̂ = δ·γ",
                         sample=lambda j: f"{x.ref(('delta', l, j))}*{x.ref(('W', l, (0, j)), 'p')}"),
            ExcelColumns(group, M1.name, M1.symbol, lambda j: f"m1 = Σ dx̂ / {size} over unit {j}'s group",
                         sample=lambda j: f"SUM({units(DXHAT.name, j)})/{size}"),
            ExcelColumns(group, M2.name, M2.symbol, lambda j: f"m2 = Σ dx̂·x̂ / {size} over unit {j}'s group",
                         sample=lambda j: f"SUMPRODUCT({units(DXHAT.name, j)},{units(XHAT.name, j)})/{size}"),
        ]

    def excel_error_down(self, layer, x, j):
        """∂E/∂x_j = (dx̂_j − m1_j − x̂_j·m2_j)/√(σ²_j + eps), the statistics of unit j's group."""
        l = x.l
        body = (f"({x.ref((DXHAT.name, l, j))}-{x.ref((M1.name, l, j))}-{x.ref((XHAT.name, l, j))}*{x.ref((M2.name, l, j))})"
                f"/SQRT({x.ref((VAR.name, l, j))}+{x.setting('eps')})")
        return body, f"(dx̂ − m1 − x̂·m2)/√(σ² + eps) of the {self.name} layer {l}"

    def excel_error_columns_below(self, layer):
        """The error passed down is shown in the e columns of the layer below."""
        return True

    def excel_factor(self, layer, x, i, j):
        """② of ∂E/∂γ_j = x̂_j·δ_j."""
        return (XHAT.name, x.l, j), f"x̂⁽{x.l}⁾{j}"

    # ------------------------------------------------------------ chain, check and diagnose faces
    # Normalisation's, the statistics per unit (those of the unit's group):
    #   chain     ② = x̂ⱼ;  ∂E/∂a⁽ˡ⁻¹⁾ⱼ = (dx̂ⱼ − m1ⱼ − x̂ⱼ·m2ⱼ)/√(σ²ⱼ + ε)
    #   check     u = γⱼ·x̂ⱼ + βⱼ and ∂E/∂γⱼ = x̂ⱼ·δⱼ with x̂ and the error down from the engine
    #   diagnose  the producer of a non-finite u and the links diag(|γⱼ|/√(σ²ⱼ + ε)), below

    def chain_error_down(self, layer, l, j, names):
        """Normalisation's (dx̂ⱼ − m1ⱼ − x̂ⱼ·m2ⱼ)/√(σ²ⱼ + ε), said to be over unit j's group."""
        meaning, expression = super().chain_error_down(layer, l, j, names)
        first, last = self.group_units(layer, j)
        return f"{meaning} (m1, m2, σ² of unit {j}'s group, units {first}…{last})", expression

    def diagnose_u(self, layer, l, trace, step, slot, j, below, below_name):
        """γ·x̂ + β from a finite x̂; a non-finite x̂ from finite inputs: the statistics of unit j's
        group overflowed (μ, or σ² = Σ (x − μ)²/m), named with the group's inputs."""
        if np.isfinite(trace_value(trace, XHAT.name, l, j, step, slot)):
            return super().diagnose_u(layer, l, trace, step, slot, j, below, below_name)
        first, last = self.group_units(layer, j)
        inputs = [(f"{below_name}[{i}]", float(below[slot, i])) for i in range(first, last + 1)]
        return (f"the {self.name} statistics of unit {j}'s group (units {first}…{last}) overflowing: μ or "
                f"σ² = Σ (x − μ)²/{last - first + 1}, then x̂ = (x − μ)/√(σ² + eps)",
                [(name, value) for name, value in inputs if np.isfinite(value)])

    def diagnose_links(self, layer, l, trace, step, slot=None):
        """diag(|γⱼ|/√(σ²ⱼ + ε)): the direct path through x̂ (m1 and m2 left out), σ²ⱼ that of unit
        j's group for the sample in `slot`, or averaged over the step's samples (`slot` None)."""
        gamma = trace.W[l - 1][step, 0]
        units = np.arange(len(gamma))
        slots = range(len(trace.samples(step))) if slot is None else (slot,)
        variance = np.mean([trace_value(trace, VAR.name, l, units, step, s) for s in slots], axis=0)
        with np.errstate(all="ignore"):
            scale = np.abs(gamma) / np.sqrt(np.nan_to_num(variance) + layer.eps)
        return np.diag(scale), np.diag(gamma)
