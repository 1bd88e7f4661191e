"""The LayerKind base class, the Quantity a kind records, and shared numpy helpers.

A layer kind is ONE object that holds, side by side, every face of the layer's maths (the way an
activation in activations.py holds its numpy, Excel and sympy forms):

  scenario  keys, defaults, validation, parameter names/shapes/initial values      (l11-core)
  records   the quantities the kind records (Quantity declarations)                 (l11-core)
  numpy     forward, combine, backward, error_down, gradients                        (l11-core)
  excel     column declarations and formula bodies of the Trace sheet              (l11-workbook)
            (ExcelColumns; formulas name cells by key through an ExcelLayer `x`, see LayerKind)
  chain     sympy factors of ∂E/∂W, the symbolic error passed down, the path view    (l11-chain)
  check     scalar rules for hand checks (`tracer check`)                             (l11-chain)
  diagnose  producers of the first inf/NaN, the error down for the dominant path      (l11-chain)

Layers are numbered from 1 in names and keys (`l`), `layer` is the scenario's Layer object
(units, activation, kind, residual, eps, ...). Arrays have the batch on axis 0: `below` is
a⁽ˡ⁻¹⁾ (B × fan_in), `u`, `delta` are (B × units). W is stored fan_in × units for dense layers
and 1 × units (γ) for normalisation layers; b is (units,) (β for normalisation layers).

The numpy face of one layer, per batch (engine.forward_backward calls them in this order):
  u, record = kind.forward(layer, below, W, b, sums)  u = the layer's pre-activation
  h = f(u);  a = kind.combine(layer, h, below)         a = h, or h + a⁽ˡ⁻¹⁾ (residual skip)
  ... δ = ∂E/∂u of the layer (from the loss or the layer above) ...
  kind.backward(layer, record, delta, W)               backward records (dx̂, m1, m2) into `record`
  e_below = kind.error_down(layer, record, delta, W, error_here, sums)   ∂E/∂a⁽ˡ⁻¹⁾ per sample
  grad_W, grad_b = kind.gradients(layer, record, below, delta)     per sample (B, *shape)
  kind.batch_gradients(layer, record, below, delta, reduction, sums)   their Σ_s (or mean)
`record` is a dict CSV quantity name -> array, holding the values of the kind's own recorded
quantities (those of `records(layer)` that are not common to every layer). `sums` is the run's
SumOrder (IN_ORDER: every sum left to right, a spreadsheet's bits; MATMUL: numpy matrix products),
the order in which a kind adds its big sums (dense: u, the error passed down, the batch gradient).
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tracer.maths import activations, initialisers as inits
from tracer.errors import ScenarioError
from tracer.maths.ieee import propagate_nonfinite
from tracer.maths.procedures import reduce_samples

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


@dataclass(frozen=True)
class ExcelColumns:
    """A family of Trace sheet columns a layer kind declares for layer l (its excel face): one per
    unit j, key (quantity, l, j) and header symbol with j and l (u₀⁽¹⁾); or, with per_unit False, one
    for the layer, key (quantity, l) and header symbol⁽ˡ⁾ (a per-sample scalar: layernorm's μ); the
    functions below are then called with j = 0. With `time` t set, the family holds the units of one
    time step t of an unrolled recurrent cell: key (quantity, l, (t, j)), header u₀⁽¹⁾(t=3). The columns of one family are adjacent, in j order.
    `meaning` is a text or a function of j; `sample` / `total` are functions of j giving the formula
    body in the sample rows / the Σ rows (None: blank there)."""

    group: str
    quantity: str
    symbol: str
    meaning: object
    sample: object = None
    total: object = None
    per_unit: bool = True
    time: int | None = None   # a family of time step t (recurrent cells): key (quantity, l, (t, j)),
                              # header u₀⁽¹⁾(t=3); the functions above are still functions of j


@dataclass(frozen=True)
class ExcelLayer:
    """What a kind's excel face is given about layer l of the Trace sheet (built by the layout)."""

    l: int
    units: int
    fan_in: int             # the width of the layer below
    ref: Callable           # (key, place="r") -> the cell of the column of `key` in row {place}
    setting: Callable       # parameter -> the defined name of the layer's Settings cell (excel_settings)
    unit: Callable          # (symbol, layer, j) -> the symbol in header notation: u₀⁽¹⁾
    steps: int = 0          # time steps T of a sequence scenario (0: the data has no time axis)
    below_key: Callable = None   # i -> the key of the layer's input i, when the layer below is not read as a⁽ˡ⁻¹⁾ᵢ
    above: Callable = None  # (j, t) -> (formula body, text) of the error ∂E/∂a⁽ˡ⁾ⱼ the layer above passes
                            # down (at time step t; None where nothing arrives); kinds with their own error columns
    activation_params: dict = None   # the defined names of the layer's activation parameters (Settings cells)
    span: Callable = None   # (first key, last key, place="r") -> the range of adjacent cells from the one to the
                            # other, where the layout has them adjacent (the matrix layout: a row's units, W's
                            # column j or row i in the parameter block); None (the column layout): kinds write
                            # their sums term by term, left to right. With it they write the range form
                            # (MMULT, SUMPRODUCT), of a fixed length whatever the fan-in

    def below(self, i):
        """The key of a⁽ˡ⁻¹⁾ᵢ, the layer's input i: the network's input x for layer 1 (a recurrent layer
        below is read at its last time step, h⁽ˡ⁻¹⁾ᵢ at t = T−1: `below_key`)."""
        if self.below_key is not None:
            return self.below_key(i)
        return ("x", 0, i) if self.l == 1 else ("a", self.l - 1, i)


# The quantities every layer has (the engine computes them around the kind's forward/backward).
U = Quantity("u", "u", "the layer's pre-activation (weighted sum, or γ·x̂ + β)", "sample-unit", True)
A = Quantity("a", "a", "the layer's output a = f(u) (+ a⁽ˡ⁻¹⁾ with a residual skip)", "sample-unit", True)
SLOPE = Quantity("slope", "f'", "the local slope f'(u)", "sample-unit", True)
DELTA = Quantity("delta", "δ", "δ = ∂E/∂u", "sample-unit", True)
H = Quantity("h", "h", "f(u) before the residual skip is added", "sample-unit", True)
E = Quantity("e", "e", "e = ∂E/∂a, the error arriving from the layer above", "sample-unit", True)
COMMON = (U, A, SLOPE, DELTA)


SUM_BLOCK_CELLS = 1 << 17   # values per block of terms sum_in_order adds at once (1 MiB: in cache)
LOOP_TERMS = 8              # up to this many terms, weighted_sum and back_sum add them one numpy call at a time


def sum_in_order(count, shape, fill, initial=-0.0):
    """((initial + t₀) + t₁) + … + t_{count−1}: `count` arrays of `shape` added one after another,
    in index order, each addition rounded once, as a spreadsheet adds =t₀+t₁+… left to right.
    `fill(out, start, stop)` writes the terms start..stop−1 into `out` (shape (stop − start, *shape)).
    initial −0.0 (the default) starts the sum at t₀ exactly (−0.0 + x = x for every double x);
    0.0 gives the bits of np.sum(terms, axis=0), which starts from 0.0 (0.0 + −0.0 = 0.0).

    The terms come in blocks of about SUM_BLOCK_CELLS values (memory bounded whatever `count`), each
    added by np.add.reduce over the leading axis of a C-contiguous (rows, n) block whose first row is
    the running total: numpy adds such rows one after another, element by element, as long as
    n ≥ 2 (a run of one value would be summed pairwise: a padding column keeps n ≥ 2). The bits
    are those of the plain loop; tests/test_layers.py checks it on every shape class, −0.0, inf, NaN."""
    size = int(np.prod(shape, dtype=np.int64))
    width = max(size, 2)
    rows = max(1, min(count, SUM_BLOCK_CELLS // width))
    if rows == count:                   # one block, no running total
        block = np.empty((count, width))
        block[:, size:] = 0.0
        fill(block[:, :size].reshape((count,) + tuple(shape)), 0, count)
        return np.add.reduce(block, axis=0, initial=float(initial))[:size].reshape(shape)
    block = np.empty((rows + 1, width))
    block[:, size:] = 0.0
    total = np.full(width, float(initial))
    for start in range(0, count, rows):
        stop = min(count, start + rows)
        block[0] = total
        fill(block[1:stop - start + 1, :size].reshape((stop - start,) + tuple(shape)), start, stop)
        np.add.reduce(block[:stop - start + 1], axis=0, initial=-0.0, out=total)
    return total[:size].reshape(shape)


def weighted_sum(a, W, b):
    """u_j = Σ_i a_i W[i,j] + b_j, summed left to right for every sample row of `a`:
    ((a₀W₀ⱼ + a₁W₁ⱼ) + …) + bⱼ, the products rounded one by one (see sum_in_order)."""
    if W.shape[0] <= LOOP_TERMS:
        total = a[:, 0:1] * W[0]
        for i in range(1, W.shape[0]):
            total = total + a[:, i:i + 1] * W[i]
        return total + b
    inputs = np.ascontiguousarray(a.T)

    def products(out, start, stop):     # out[i − start, s, j] = a[s, i]·W[i, j]
        np.multiply(inputs[start:stop, :, None], W[start:stop, None, :], out=out)
    return sum_in_order(W.shape[0], (a.shape[0], W.shape[1]), products) + b


def back_sum(delta_next, W_next):
    """Σ_k W_next[j,k] δ_k, summed left to right over k, for every sample row (see sum_in_order)."""
    if W_next.shape[1] <= LOOP_TERMS:
        total = delta_next[:, 0:1] * W_next[:, 0]
        for k in range(1, W_next.shape[1]):
            total = total + delta_next[:, k:k + 1] * W_next[:, k]
        return total
    deltas, weights = np.ascontiguousarray(delta_next.T), W_next.T

    def products(out, start, stop):     # out[k − start, s, j] = δ[s, k]·W_next[j, k]
        np.multiply(deltas[start:stop, :, None], weights[start:stop, None, :], out=out)
    return sum_in_order(W_next.shape[1], (delta_next.shape[0], W_next.shape[0]), products)


def sample_product_sum(below, delta):
    """G[i,j] = Σ_s below[s,i]·delta[s,j], the products added in sample order from 0.0, the bits of
    np.add.reduce(below[:, :, None] * delta[:, None, :], axis=0), without holding the
    B × fan_in × units products at once when they are many (sum_in_order, over blocks of samples)."""
    samples, fan_in = below.shape
    units = delta.shape[1]
    if fan_in * units < 2 or samples * fan_in * units <= SUM_BLOCK_CELLS:
        return np.add.reduce(below[:, :, None] * delta[:, None, :], axis=0)

    def products(out, start, stop):     # out[s − start, j, i] = δ_sj·a_si (transposed: long rows)
        np.multiply(delta[start:stop, :, None], below[start:stop, None, :], out=out)
    return sum_in_order(samples, (units, fan_in), products, initial=0.0).T.copy()


class SumOrder:
    """The order in which the engine adds the terms of the big sums of a dense layer: the weighted
    sum u = Σᵢ aᵢ·W[i,j] + bⱼ, the error passed down Σₖ W[j,k]·δₖ, and the batch gradient
    Σ_s a_si·δ_sj. One object per order (SUM_ORDERS); the engine hands the run's to the layer kinds'
    numpy faces (forward, error_down, batch_gradients: the `sums` argument)."""

    name = ""

    def weighted_sum(self, a, W, b):
        """u = a @ W + b for every sample row of `a` (B × fan_in), W fan_in × units."""
        raise NotImplementedError

    def back_sum(self, delta, W):
        """e[s,j] = Σₖ W[j,k]·δ[s,k] for every sample row of δ (B × units)."""
        raise NotImplementedError

    def sample_product_sum(self, below, delta):
        """G[i,j] = Σ_s below[s,i]·δ[s,j] over the samples (the batch gradient's Σ)."""
        raise NotImplementedError

    def __repr__(self):
        return f"<sum order {self.name}>"


class InOrder(SumOrder):
    """Every sum adds its terms one after another, left to right (u over i, the error over k, the
    batch gradient over the samples from 0.0), each addition rounded once: the exact bits of a
    spreadsheet's `=t₀+t₁+…` formula, so that the engine and the spreadsheet take the same branch
    (a ReLU at u exactly 0). numpy multiplies and np.add.reduce over blocks (sum_in_order)."""

    name = "in_order"

    def weighted_sum(self, a, W, b):
        return weighted_sum(a, W, b)

    def back_sum(self, delta, W):
        return back_sum(delta, W)

    def sample_product_sum(self, below, delta):
        return sample_product_sum(below, delta)


class Matmul(SumOrder):
    """Every sum is a numpy matrix product (`@`, BLAS): u = a @ W + b, e = δ @ Wᵀ, G = aᵀ @ δ. BLAS
    adds the terms in its own blocked order (with fused multiply-adds), so the results differ from
    the in-order sums in the last bits (a relative difference of a few 1e-16 per term's size), and
    are 10–30× faster on a 784-32-10 net. For workbooks whose sums are not in order anyway: a
    spreadsheet's MMULT and SUMPRODUCT (the matrix layout) add in the client's own order
    (LibreOffice: compensated Kahan–Neumaier summation), so the in-order bits buy no agreement there.
    BLAS multiplies every term (0·inf and 0·NaN are NaN, as in the in-order sums: a non-finite
    input makes the sums that read it non-finite; tests/test_layers.py checks it)."""

    name = "matmul"

    def weighted_sum(self, a, W, b):
        return a @ W + b

    def back_sum(self, delta, W):
        return delta @ W.T

    def sample_product_sum(self, below, delta):
        return below.T @ delta


IN_ORDER, MATMUL = InOrder(), Matmul()
SUM_ORDERS = {order.name: order for order in (IN_ORDER, MATMUL)}


def sum_order(name):
    """The SumOrder named `name` ("in_order", "matmul"; a SumOrder is returned as it is);
    ValueError naming the known orders."""
    if isinstance(name, SumOrder):
        return name
    try:
        return SUM_ORDERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sum order {name!r} (known: {', '.join(SUM_ORDERS)})") from None


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


class LayerKind:
    """One layer kind with all its faces. Subclasses set the class attributes and override the
    scenario/records/numpy methods; the excel, chain, check and diagnose faces are declared with
    their contract in each kind's module (one method each, filled in by the owner of the face)."""

    name = ""                 # the TOML `kind` value (a contract)
    description = ""          # one line for README/help
    keys = ()                 # the TOML keys a layer of this kind accepts (`kind` among them)
    stored_params = ("W", "b")  # its parameters in their stored form, in order (recurrent: W, b, Wh, bh);
                                # the engine, optimiser loop, clipping, records and gradcheck iterate over them
    bias_params = ("b",)      # those of stored_params that `train_bias = false` freezes (recurrent: b, bh)
    param_names = ("W", "b")  # the names of stored_params in CSV quantities and parameter names
    recurrent = False         # reads and produces sequences (B, time, width): see tracer/layers/rnn.py
    keeps_width = False       # units must equal the layer below's (normalisation layers)
    min_batch = 1             # every batch needs at least this many samples
    couples_samples = False   # a sample's forward reads the other samples of its batch (batchnorm's μ, σ²)
    weighted = False          # u = Σᵢ a⁽ˡ⁻¹⁾ᵢ·W[i,j] + b[j] with W drawn by `init` (dense): what sweep's
                              # initialisation, Linear → normalisation → f and Leaky ReLU remedies rewrite
    normalises = False        # x̂ = (x − μ)/√(σ² + eps) before γ, β (batchnorm, layernorm)

    # ------------------------------------------------------------ scenario face (l11-core)

    def parse(self, v, raw, key, fan_in, is_output):
        """Validate one [[layers]] table `raw` (at TOML path `key`, e.g. "layers[1]") of this kind
        with the scenario's validator `v`, for a layer below of `fan_in` units; return the Layer.
        Raises ScenarioError (via v) naming the key for any problem, in one line."""
        raise NotImplementedError

    def refuse_key(self, v, key, name, kinds_with_it):
        """Refuse a [[layers]] key (known to other kinds `kinds_with_it`) that this kind does not take."""
        raise ScenarioError(v.source, f"{key}.{name}", f"'{name}' does not apply to a {self.name} layer "
                            f"(its keys: {', '.join(self.keys)})")

    def check_batches(self, v, index, n_samples, batch):
        """Refuse (ScenarioError on training.batch) a batch schedule this kind cannot train on:
        every batch (the last of an epoch too) needs `min_batch` samples. `batch` None = full."""
        if self.min_batch <= 1:
            return
        size = n_samples if batch is None else batch
        if size >= self.min_batch and (n_samples % size == 0 or n_samples % size >= self.min_batch):
            return
        detail = (f"batches of {size} sample{'s' if size > 1 else ''} ({n_samples} sample{'s' if n_samples > 1 else ''}, batch {size})"
                  if size < self.min_batch
                  else f"the last batch of each epoch has {n_samples % size} sample{'s' if n_samples % size > 1 else ''} "
                       f"({n_samples} samples in batches of {size})")
        v.fail("training", "batch", f"{self.name} (layers[{index}]) needs more than {self.min_batch - 1} sample "
               f"in every batch, as in PyTorch; here {detail}")

    def skips(self, layer):
        """True when the layer adds its input to its output, a = f(u) + a⁽ˡ⁻¹⁾ (dense's residual skip)."""
        return False

    def param_shapes(self, fan_in, units):
        """The shapes of the stored parameters, in the order of stored_params (W-like, b-like): dense
        (fan_in, units), (units,); normalisation layers (1, units) for γ and (units,) for β."""
        return (fan_in, units), (units,)

    def initial_parameters(self, layer, fan_in, rng):
        """The parameters before the first step, (W, b) as float arrays of `param_shapes`; draws from
        the seeded generator `rng` in a fixed order (dense) or not at all (γ = 1, β = 0)."""
        raise NotImplementedError

    def param_name(self, which, l, index):
        """The name of one parameter (a contract): which one of stored_params ("W", "b"; "Wh", "bh"),
        index (i, j) or (j,): W{l}[i,j], b{l}[j], Wh{l}[i,j], bh{l}[j]."""
        if len(index) == 2:
            return f"{which}{l}[{index[0]},{index[1]}]"
        return f"{which}{l}[{index[0]}]"

    def param_quantity(self, quantity):
        """The CSV quantity name of a parameter-shaped quantity (W, grad_W, update_W, m_W, b, ...)
        on a layer of this kind: W → gamma, grad_b → grad_beta on normalisation layers."""
        if self.param_names == self.stored_params:
            return quantity
        w, b = self.param_names
        if quantity in ("W", "b"):
            return w if quantity == "W" else b
        return quantity[:-2] + ("_" + w if quantity.endswith("_W") else "_" + b)

    def describe(self, layer):
        """The layer in a few words (Scenario's repr): "batchnorm 3 relu"."""
        return f"{self.name} {layer.units} {layer.activation}"

    # ------------------------------------------------------------ records face (l11-core)

    def records(self, layer):
        """The quantities a layer of this kind records in the CSV, in the CSV's order within its
        group: per-sample ones ("sample-unit", "sample") among the sample's rows of the layer,
        "step-unit" ones after the layer's parameter totals of the step."""
        return COMMON

    # ------------------------------------------------------------ numpy face (l11-core)

    def forward(self, layer, below, W, b, sums=IN_ORDER):
        """u (B × units) from the layer below's output `below` (B × fan_in) and the parameters;
        returns (u, record) with `record` the kind's own forward quantities {CSV name: array}.
        `sums` the run's SumOrder: how a kind's big sums (Σ over fan-in or batch) are added."""
        raise NotImplementedError

    def combine(self, layer, h, below):
        """The layer's output a from h = f(u): a = h (the default)."""
        return h

    def backward(self, layer, record, delta, W):
        """Add the kind's backward quantities to `record` given δ = ∂E/∂u (B × units); none by default."""

    def error_down(self, layer, record, delta, W, error_here, sums=IN_ORDER):
        """∂E/∂a⁽ˡ⁻¹⁾ (B × fan_in), the error passed to the layer below, from this layer's δ and W and
        `error_here` = e⁽ˡ⁾ = ∂E/∂a⁽ˡ⁾ (None on the output layer); `sums` the run's SumOrder."""
        raise NotImplementedError

    def gradients(self, layer, record, below, delta):
        """Per-sample parameter gradients (grad_W (B, *W.shape), grad_b (B, units)) relative to the
        sample's loss; the batch total is taken by the reduction."""
        raise NotImplementedError

    def batch_gradients(self, layer, record, below, delta, reduction, sums=IN_ORDER):
        """The batch gradients (grad_W, grad_b): Σ_s (or Σ_s / B for `mean`) of `gradients`, with
        the bits of procedures.reduce_samples (np.sum over the samples, in sample order) whatever
        `sums`; a kind may override it to add the products without holding every sample's, in the
        run's SumOrder `sums` (Dense)."""
        grad_W, grad_b = self.gradients(layer, record, below, delta)
        return reduce_samples(grad_W, reduction), reduce_samples(grad_b, reduction)

    # Per-sample gradients are factor ② times δ: a kind whose `gradients` read only the layer below's
    # output, δ and the kind's own per-sample records sets derives_sample_gradients, and the Trace
    # derives them on demand (Trace.values, trace.grad_W_sample[l][step, slot]) instead of keeping
    # (T, B, *W.shape) arrays; the engine then never builds them. Otherwise they are recorded.
    derives_sample_gradients = False

    def gradient_factor(self, layer, l, i, j):
        """The key of factor ② of the per-sample ∂E/∂W_l[i,j] = ② · δⱼ, a recorded quantity (i, j
        ints or index arrays): ("x", 0, i) or ("a", l − 1, i) (dense), ("xhat", l, j) (normalisation).
        ∂E/∂b_l[j] = δⱼ. Needed when derives_sample_gradients."""
        raise NotImplementedError

    # ------------------------------------------------------------ excel face (l11-workbook)
    # The Trace sheet's columns of a layer and their formula bodies. Formulas name other columns BY
    # KEY, never by letter: `x` (an ExcelLayer) gives x.ref(key, place) — the cell of the
    # column of `key` in row {place}: "r" this sample row, "p" the step's Σ row, "f"/"l" the step's
    # first/last sample row — and the workbook's layout assigns the letters once every column is
    # declared. Keys: (quantity, l, j) per unit, (quantity, l, (i, j)) for W-shaped ones.

    def excel_settings(self, layer, l):
        """Settings cells the layer's formulas read: (parameter, defined name, value, label) each
        (batchnorm: ("eps", "bn_eps_2", 1e-5, "layer 2 batchnorm: eps")); x.setting(parameter) names it."""
        return ()

    def excel_unrolled(self, layer):
        """True when the kind declares ALL its Trace columns itself, unrolled through time (recurrent
        cells): excel_forward gives every forward column (f(u) included) and excel_backward every
        backward one (the error through time and the deltas included); the layout adds none."""
        return False

    def excel_parameters(self, layer, fan_in, units):
        """(which, shape, is_bias) of each parameter array in sheet order (stored_params: W then b;
        recurrent cells W, b, Wh, bh). A bias (bias_params) is frozen when train_bias is false."""
        names, biases = getattr(self, "stored_params", ("W", "b")), getattr(self, "bias_params", ("b",))
        return tuple((name, shape, name in biases) for name, shape in zip(names, self.param_shapes(fan_in, units)))

    def excel_gradient(self, layer, x, which, index):
        """(formula body, text) of the per-sample ∂E/∂θ of parameter `which` at `index` (the default
        reads excel_grad_W / excel_grad_b)."""
        return self.excel_grad_W(layer, x, *index) if which == "W" else self.excel_grad_b(layer, x, *index)

    def excel_output(self, layer, l, i, steps):
        """The key of the value the layer above reads as its input i: a⁽ˡ⁾ᵢ (recurrent cells: h at t = T−1)."""
        return ("a", l, i)

    def excel_forward(self, layer, x):
        """The columns of the forward pass up to u, in sheet order (ExcelColumns each): dense u;
        batchnorm μ, σ², x̂, u. The activation's column f(u) follows them (the layout writes it)."""
        raise NotImplementedError

    def excel_combine(self, layer, x):
        """Columns after f(u) that make the layer's output a (residual: a = h + a⁽ˡ⁻¹⁾); none by default."""
        return ()

    def excel_backward(self, layer, x):
        """The kind's own backward columns after δ (normalisation: dx̂, m1, m2); none by default."""
        return ()

    def excel_error_down(self, layer, x, j):
        """(formula body, text) of the error this layer passes down, ∂E/∂a⁽ˡ⁻¹⁾_j (dense: Σₖ W·δ (+ e);
        normalisation: (dx̂ − m1 − x̂·m2)/√(σ² + eps)). The text says it in math notation."""
        raise NotImplementedError

    def excel_error_columns(self, layer):
        """True when the layer's own error e = ∂E/∂a gets columns (it is read twice: residual)."""
        return False

    def excel_error_columns_below(self, layer):
        """True when the layer below gets columns for the error this layer passes down (instead of
        the error being written inside δ's formula): normalisation layers."""
        return False

    def excel_factor(self, layer, x, i, j):
        """(key, text) of factor ② of ∂E/∂W[i,j] = ② · δⱼ, a column of the sheet: a⁽ˡ⁻¹⁾ᵢ (dense) or
        x̂ⱼ (normalisation). The ChainRule sheet shows it."""
        raise NotImplementedError

    def excel_grad_W(self, layer, x, i, j):
        """(formula body, text) of the per-sample ∂E/∂W[i,j] = ② · δⱼ."""
        key, text = self.excel_factor(layer, x, i, j)
        return f"{x.ref(key)}*{x.ref(('delta', x.l, j))}", f"{text}·δ⁽{x.l}⁾{j}"

    def excel_grad_b(self, layer, x, j):
        """(formula body, text) of the per-sample ∂E/∂b[j] = δⱼ."""
        return x.ref(("delta", x.l, j)), f"δ⁽{x.l}⁾{j}"

    # ------------------------------------------------------------ chain face (l11-chain)
    # `names` is a chain.Names: sympy symbols written one way in Unicode or LaTeX (unit(symbol, l, j),
    # weight(l, i, j), error(l, j), layer_scalar(symbol, l), plain(text, latex)).

    def chain_input(self, layer, l, i, j, names, trace, step, slot):
        """Factor ② of ∂E/∂W_l[i,j] = ② · δ⁽ˡ⁾ⱼ, as (sympy symbol, meaning, value at `step` for the
        sample in batch slot `slot`): a⁽ˡ⁻¹⁾ᵢ, or xᵢ on layer 1 (dense); x̂ⱼ (normalisation)."""
        raise NotImplementedError

    def chain_error_down(self, layer, l, j, names):
        """(meaning, sympy expression) of the error layer l passes down, ∂E/∂a⁽ˡ⁻¹⁾ⱼ = e⁽ˡ⁻¹⁾ⱼ:
        Σₖ W_l[j,k]·δ⁽ˡ⁾ₖ (+ e⁽ˡ⁾ⱼ with a residual skip) or (dx̂ − m1 − x̂·m2)/√(σ² + ε)."""
        raise NotImplementedError

    def dominant_path(self, layer):
        """True when the error passes through this layer as Σₖ W·δ only (plain dense), so that the
        gradient is a sum over paths of products of slopes and weights (`tracer chain`'s path view)."""
        return False

    # ------------------------------------------------------------ check face (l11-chain)
    # `get` is check's accessor of one sample at one step: get(quantity, l, index) the value of u, a,
    # slope, delta, W, b as the hand calculation has it (written, or recomputed from written ones);
    # get.below(l, i) = a⁽ˡ⁻¹⁾ᵢ (xᵢ on layer 1); get.error(l, j) = e⁽ˡ⁾ⱼ recomputed;
    # get.engine(quantity, l, index) the engine's value of one of the kind's `engine_only` quantities.

    engine_only = ()          # quantities a hand check takes from the engine (statistics), read with get.engine

    def check_u(self, layer, l, j, get):
        """u⁽ˡ⁾ⱼ recomputed from supplied values."""
        raise NotImplementedError

    def check_combine(self, layer, l, j, h, get):
        """a⁽ˡ⁾ⱼ from h = f(u⁽ˡ⁾ⱼ): h (the default)."""
        return h

    def check_error_down(self, layer, l, j, get):
        """∂E/∂a⁽ˡ⁻¹⁾ⱼ passed down by layer l, recomputed from supplied values."""
        raise NotImplementedError

    def check_grad_W(self, layer, l, i, j, get):
        """The per-sample ∂E/∂W_l[i,j] recomputed from supplied values (δⱼ times factor ②)."""
        raise NotImplementedError

    # ------------------------------------------------------------ diagnose face (l11-chain)
    # Names in diagnose's plain style: u2[0], a1[3], W2[0,1], δ2[1], x[0].

    def activated(self, layer):
        """The recorded quantity that holds f(u): "a" (the default) or "h" (before a skip is added);
        diagnose, check and the workbook's slope and saturation formulas read it."""
        return "a"

    def diagnose_u(self, layer, l, trace, step, slot, j, below, below_name):
        """(operation, [(name, value) of finite operands]) that produced a non-finite u⁽ˡ⁾ⱼ, given the
        layer below's output `below` (B × fan_in) named `below_name` (x or a<l-1>)."""
        raise NotImplementedError

    def diagnose_combine(self, layer, l, trace, step, slot, j, below, below_name):
        """(operation, operands) that produced a non-finite a⁽ˡ⁾ⱼ from a finite f(u) (kinds whose
        `activated` is not "a")."""
        raise NotImplementedError

    def diagnose_input(self, layer, l, trace, step, slot, i, j):
        """(name, value) of factor ② of ∂E/∂W_l[i,j] (a1[0], x[0], x̂2[1])."""
        raise NotImplementedError

    def diagnose_error_down(self, layer, l, trace, step, slot, j):
        """(operation, operands) that produced a non-finite error passed down by layer l, e⁽ˡ⁻¹⁾ⱼ."""
        return "the error from the layer above (a sum of finite terms) overflows", []

    def diagnose_links(self, layer, l, trace, step, slot=None):
        """(magnitude, weight), two fan_in × units arrays for the dominant path: how strongly the error
        passed down to unit i of the layer below follows δ⁽ˡ⁾ₖ, |∂e⁽ˡ⁻¹⁾ᵢ/∂δ⁽ˡ⁾ₖ| through the
        layer's direct path (statistics held fixed), and the parameter shown on that edge. `slot` None:
        over the step's samples (per-sample statistics averaged)."""
        raise NotImplementedError


def trace_value(trace, name, l, index, step, slot=None):
    """The engine's value of a kind's own recorded quantity `name` (xhat, bn_var, ...) on layer l at
    `step`: per sample (`slot` given) or per step; `index` a unit, an array of units, or None for a
    per-sample scalar of the layer (ln_var)."""
    sample = 0 if slot is None else trace.samples(step)[slot]
    key = (name, l) if index is None else (name, l, index)
    return trace.values(key, "sample" if slot is not None else "total", step, 0 if slot is None else slot, sample)


# ---------------------------------------------------------------- the scenario's layer, and parsing helpers

@dataclass
class Layer:
    """One non-input layer: `units` units with activation f and parameters W (fan_in × units), b
    (γ, β for normalisation layers, stored as a 1 × units W and a b)."""

    units: int
    activation: str
    activation_params: dict
    init: str
    init_params: dict
    weights: np.ndarray | None
    bias_init: str
    bias_params: dict
    bias: np.ndarray | None
    train_bias: bool
    residual: bool = False        # a = f(u) + a⁽ˡ⁻¹⁾ (a skip connection; equal widths, hidden layers)
    kind: str = "dense"           # a name in tracer.layers.LAYERS
    eps: float = 1e-5             # normalisation layers only
    recurrent_weights: np.ndarray | None = None   # recurrent layers: explicit Wh (units × gates·units)
    recurrent_bias: np.ndarray | None = None      # recurrent layers: bh (gates·units), default 0
    groups: int = 1               # groupnorm layers only: the groups of units normalised together


ACTIVATION_PARAM_KEYS = ("slope", "alpha")
INIT_PARAM_KEYS = ("low", "high", "mean", "std", "value")


def parse_activation(v, raw, key, units, is_output, default):
    """The layer's activation name and its parameters {slope/alpha: value}, validated: a
    non-elementwise activation (softmax) only on the output layer and over more than one unit;
    parameters only those the activation has."""
    activation = v.choice(raw, "activation", key, activations.ACTIVATIONS, default=default)
    definition = activations.get(activation)
    if not definition.elementwise and not is_output:
        raise ScenarioError(v.source, f"{key}.activation", f"{activation} is allowed on the output layer only")
    if activation == "softmax" and units == 1:   # softmax over one unit is the constant 1
        raise ScenarioError(v.source, f"{key}.units", "softmax of a single unit is the constant 1 (nothing to learn); "
                            "for one output use activation = \"sigmoid\" with loss bce")
    for name in ACTIVATION_PARAM_KEYS:
        if name in raw and name not in definition.params:
            raise ScenarioError(v.source, f"{key}.{name}", f"'{name}' does not apply to activation {activation}")
    return activation, {name: v.number(raw, name, key, default=d) for name, d in definition.params.items()}


def parse_init(v, raw, key, prefix, default):
    """An initialiser name ({prefix}init) and its parameters ({prefix}low, ...), validated."""
    name = v.choice(raw, f"{prefix}init", key, inits.INITS, default=default)
    defaults = inits.INITS[name][0]
    for param in INIT_PARAM_KEYS:
        if f"{prefix}{param}" in raw and param not in defaults:
            raise ScenarioError(v.source, f"{key}.{prefix}{param}", f"'{prefix}{param}' does not apply to {prefix}init {name}")
    params = {p: v.number(raw, f"{prefix}{p}", key, default=d) for p, d in defaults.items()}
    if name == "uniform" and params["low"] >= params["high"]:
        raise ScenarioError(v.source, f"{key}.{prefix}high", "must be greater than low")
    if name == "uniform" and not np.isfinite(params["high"] - params["low"]):
        raise ScenarioError(v.source, f"{key}.{prefix}high", "high − low must be below 1.8e308 (it overflows)")
    if name == "normal" and params["std"] < 0:
        raise ScenarioError(v.source, f"{key}.{prefix}std", "must not be negative")
    return name, params



def parse_bias(v, raw, key, read_bias):
    """The bias: explicit values `bias = [...]` (read and shape-checked by `read_bias()`), or an
    initialiser ({bias_}init, default constant), never both. Returns (values or None, init name, params)."""
    if "bias" in raw:
        bias = read_bias()
        if "bias_init" in raw and raw["bias_init"] != "explicit":
            raise ScenarioError(v.source, f"{key}.bias_init", "give either bias values or bias_init, not both")
        return bias, "explicit", {}
    name, params = parse_init(v, raw, key, "bias_", default="constant")
    if name == "explicit":
        raise ScenarioError(v.source, f"{key}.bias", "bias_init = \"explicit\" needs bias = [...]")
    return None, name, params

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

    # ------------------------------------------------------------ chain, check, diagnose faces (l11-chain)
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
