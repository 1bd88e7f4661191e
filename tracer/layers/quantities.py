"""What a layer kind records: the Quantity declaration (one CSV quantity of a layer), and the
quantities every layer has (u, a, slope, delta; h and e where a skip makes them differ from a and
from δ/f')."""
from dataclasses import dataclass

PER = ("sample-unit", "step-unit", "sample", "sample-time-unit", "sample-time-param")


@dataclass(frozen=True)
class Quantity:
    """One recorded quantity of a layer.

    name     the CSV quantity name (a contract: u, a, slope, delta, h, e, xhat, dxhat, bn_mean, ...)
    symbol   its name in math notation (headers): x̂, μ, σ², ...
    meaning  one line saying what it holds
    per      "sample-unit": one value per sample and unit, array (T, B, n);
             "step-unit":   one value per step and unit (a batch statistic), array (T, n);
             "sample":      one value per sample for the whole layer (layernorm's μ, σ²), array (T, B)
             "sample-time-unit":  recurrent layers: one value per sample, time step and unit,
                                  array (T, B, time, n); CSV row = unit, time = time step
             "sample-time-param": recurrent layers: a per-time-step gradient contribution shaped
                                  like the stored parameter `param` (grad_W's at each time step),
                                  array (T, B, time, *shape); CSV row (and col), time
    common   True for the quantities every layer records whether the CSV shows them or not
             (u, a, slope, delta, h, e): the engine fills them itself, not from `record`
    key      its name in the kind's `record` dict and in Trace.norm (default: the CSV name;
             batchnorm's bn_mean is "mean" there, as Trace.norm["mean"] always had it); also the
             name in Trace.values keys (the per-time gradients: grad_W_time, CSV name grad_W)
    param    "sample-time-param" only: the stored parameter (W, b, Wh, bh) whose shape it has
    """

    name: str
    symbol: str
    meaning: str
    per: str
    common: bool = False
    key: str = ""
    param: str = ""

    def __post_init__(self):
        if self.per not in PER:
            raise ValueError(f"Quantity {self.name}: per must be one of {PER}, not {self.per!r}")
        if not self.key:
            object.__setattr__(self, "key", self.name)


# The quantities every layer has (the engine computes them around the kind's forward/backward).
U = Quantity("u", "u", "the layer's pre-activation (weighted sum, or γ·x̂ + β)", "sample-unit", True)
A = Quantity("a", "a", "the layer's output a = f(u) (+ a⁽ˡ⁻¹⁾ with a residual skip)", "sample-unit", True)
SLOPE = Quantity("slope", "f'", "the local slope f'(u)", "sample-unit", True)
DELTA = Quantity("delta", "δ", "δ = ∂E/∂u", "sample-unit", True)
H = Quantity("h", "h", "f(u) before the residual skip is added", "sample-unit", True)
E = Quantity("e", "e", "e = ∂E/∂a, the error arriving from the layer above", "sample-unit", True)
COMMON = (U, A, SLOPE, DELTA)
