"""The LayerKind protocol: ONE object per layer kind holding, side by side, every face of the
layer's maths (the way an activation holds its numpy, Excel and sympy forms).

  scenario  keys, defaults, validation, parameter names/shapes/initial values
  records   the quantities the kind records (Quantity declarations, quantities.py)
  numpy     forward, combine, backward, error_down, gradients; and the engine's pass faces
            forward_pass / backward_pass / sample_gradients that run them for one layer
  excel     column declarations and formula bodies of the Trace sheet (excel.py)
  chain     sympy factors of ∂E/∂W, the symbolic error passed down, the path view
  check     scalar rules for hand checks (`tracer check`)
  diagnose  producers of the first inf/NaN, the error down for the dominant path

Required faces are few: parse, initial_parameters, forward, error_down, gradients (the numpy
face), and the excel, chain, check and diagnose faces a kind shows (they raise
NotImplementedError here). Every other face has a default for a row kind (one value per sample
and unit). The recurrent kinds (tracer/layers/recurrent/) override the pass faces and own the
through-time faces once: runs_per_time, output_quantity, pre_activations (engine, records,
gradcheck); time_parameter, explain_through_time (chain); unit_values, output_slopes,
error_through_time, first_nonfinite_through_time (diagnose); check_value, check_recomputes,
check_recursion (check); excel_unrolled and the excel face (the workbook layouts).

Declared capabilities (class attributes; the only questions code outside tracer/layers/ asks of a
kind besides calling its faces):
  recurrent        reads and produces sequences (B, time, width), runs through time: recurrent
                   layers come first in a net (the scenario's structure rule); its values live per
                   time step in its record (diagnose scans no per-sample u, a, δ of it)
  keeps_width      units must equal the layer below's (normalisation layers)
  min_batch        every batch needs at least this many samples
  couples_samples  a sample's forward reads the other samples of its batch (batchnorm's μ, σ²)
  weighted         u_j = Σᵢ a⁽ˡ⁻¹⁾ᵢ·W[i,j] + b[j] with W drawn by `init`: θ = W[i,j] or b[j] moves
                   unit j's u only (gradcheck), and sweep's initialisation remedies rewrite it
  normalises       x̂ = (x − μ)/√(σ² + eps) before γ, β (sweep's "normalise" remedy)
  derives_sample_gradients  the per-sample gradients follow from the input and δ (not kept)

Layers are numbered from 1 in names and keys (`l`), `layer` is the scenario's Layer object
(units, activation, kind, residual, eps, ...). Arrays have the batch on axis 0: `below` is
a⁽ˡ⁻¹⁾ (B × fan_in), `u`, `delta` are (B × units). W is stored fan_in × units for dense layers
and 1 × units (γ) for normalisation layers; b is (units,) (β for normalisation layers).

The numpy face of one row layer, per batch (forward_pass and backward_pass call them in this order):
  u, record = kind.forward(layer, below, W, b, sums)  u = the layer's pre-activation
  h = f(u);  a = kind.combine(layer, h, below)         a = h, or h + a⁽ˡ⁻¹⁾ (residual skip)
  ... δ = ∂E/∂u of the layer (from the loss or the layer above) ...
  kind.backward(layer, record, delta, W)               backward records (dx̂, m1, m2) into `record`
  e_below = kind.error_down(layer, record, delta, W, error_here, sums)   ∂E/∂a⁽ˡ⁻¹⁾ per sample
  grad_W, grad_b = kind.gradients(layer, record, below, delta)     per sample (B, *shape)
  kind.batch_gradients(layer, record, below, delta, reduction, sums)   their Σ_s (or mean)
`record` is a dict CSV quantity name -> array, holding the values of the kind's own recorded
quantities (those of `records(layer)` that are not common to every layer). `sums` is the run's
SumOrder (sums.py), the order in which a kind adds its big sums.
"""
from tracer.errors import ScenarioError
from tracer.layers.passes import LayerPass, Signal, activate, sum_over_time
from tracer.layers.quantities import COMMON
from tracer.layers.sums import IN_ORDER
from tracer.maths.procedures import reduce_samples


class LayerKind:
    """One layer kind with all its faces (see the module docstring). Subclasses set the class
    attributes (name, keys, the capabilities) and implement the required faces; the optional ones
    have defaults here."""

    name = ""                 # the TOML `kind` value (a contract)
    description = ""          # one line for README/help
    keys = ()                 # the TOML keys a layer of this kind accepts (`kind` among them)
    stored_params = ("W", "b")  # its parameters in their stored form, in order (recurrent: W, b, Wh, bh);
                                # the engine, optimiser loop, clipping, records and gradcheck iterate over them
    bias_params = ("b",)      # those of stored_params that `train_bias = false` freezes (recurrent: b, bh)
    param_names = ("W", "b")  # the names of stored_params in CSV quantities and parameter names
    recurrent = False         # reads and produces sequences (B, time, width): tracer/layers/recurrent/
    keeps_width = False       # units must equal the layer below's (normalisation layers)
    min_batch = 1             # every batch needs at least this many samples
    couples_samples = False   # a sample's forward reads the other samples of its batch (batchnorm's μ, σ²)
    weighted = False          # u = Σᵢ a⁽ˡ⁻¹⁾ᵢ·W[i,j] + b[j] with W drawn by `init` (dense): what sweep's
                              # initialisation, Linear → normalisation → f and Leaky ReLU remedies rewrite
    normalises = False        # x̂ = (x − μ)/√(σ² + eps) before γ, β (batchnorm, layernorm)

    # ------------------------------------------------------------ scenario face

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

    # ------------------------------------------------------------ records face

    def records(self, layer):
        """The quantities a layer of this kind records in the CSV, in the CSV's order within its
        group: per-sample ones ("sample-unit", "sample") among the sample's rows of the layer,
        "step-unit" ones after the layer's parameter totals of the step."""
        return COMMON

    # ------------------------------------------------------------ numpy face

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

    # ------------------------------------------------------------ the engine's pass faces
    # engine.forward_layers and engine.forward_backward run every kind through these three; a row
    # kind (one value per sample and unit) keeps the defaults, a recurrent kind overrides them.

    def forward_pass(self, layer, below, params, sums=IN_ORDER, u=None, slopes=True):
        """The LayerPass of the layer's forward over the Signal `below` with its stored `params`:
        u = forward(below.rows), h = f(u), a = combine(h, below.rows), and up = Signal(a).
        `u` given: the layer's u already formed (gradcheck: K stacked copies of the batch over one
        `below`, (K·B) × units; combine then adds a⁽ˡ⁻¹⁾ to each copy). `slopes` False: no f'(u)."""
        record = {}
        if u is None:
            u, record = self.forward(layer, below.rows, *params, sums=sums)
        h, slope = activate(layer, u, slopes)
        rows = below.rows
        if h.shape[0] != rows.shape[0]:          # K copies of the batch over one input
            a = self.combine(layer, h.reshape((-1,) + rows.shape[:1] + h.shape[1:]), rows).reshape(h.shape)
        else:
            a = self.combine(layer, h, rows)
        return LayerPass(below, Signal(a, below.sequence, below.per_time), a, record, u, h, slope)

    def pre_activations(self, layer, u, record):
        """Every u of a pass (its u and record) whose sign a kinked activation reads (gradcheck's kink
        test): u."""
        return u

    def backward_pass(self, layer, state, error, params, sums=IN_ORDER, down=True):
        """The layer's backward given `error` = e⁽ˡ⁾ = ∂E/∂a⁽ˡ⁾ from the layer above (None on the output
        layer, whose state.delta the loss set): δ = f'(u)·e, the kind's backward records, and the error
        passed down, error_down (None when `down` is False: the first layer)."""
        state.e = error
        if state.delta is None:
            state.delta = state.slope * error
        self.backward(layer, state.record, state.delta, params[0])
        if not down:
            return None
        return self.error_down(layer, state.record, state.delta, params[0], error, sums=sums)

    def sample_gradients(self, layer, state, steps=None):
        """The per-sample gradients of the stored parameters (gradients over state.below.rows and δ);
        `steps` (B, time) when the layer ran on every (sample, time) row: Σ over time per sample,
        left to right from t = 0."""
        found = self.gradients(layer, state.record, state.below.rows, state.delta)
        if steps is None:
            return found
        return [sum_over_time(g.reshape(tuple(steps) + g.shape[1:])) for g in found]

    def finish_pass(self, layer, state, steps=None):
        """After the backward: a layer run on every (sample, time) row gives its rows back as
        (sample, time, unit) arrays (`steps` = (B, time)); nothing otherwise."""
        if steps is None:
            return
        for name in ("u", "h", "a", "slope", "delta", "e"):
            value = getattr(state, name)
            if value is not None:
                setattr(state, name, value.reshape(tuple(steps) + value.shape[1:]))

    # ------------------------------------------------------------ excel face
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

    def output_quantity(self, layer):
        """The recorded quantity the layer above reads from this layer: a (recurrent cells: h)."""
        return "a"

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

    # ------------------------------------------------------------ chain face
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

    # ------------------------------------------------------------ check face
    # `get` is check's accessor of one sample at one step: get(quantity, l, index) the value of u, a,
    # slope, delta, W, b as the hand calculation has it (written, or recomputed from written ones);
    # get.below(l, i) = a⁽ˡ⁻¹⁾ᵢ (xᵢ on layer 1); get.error(l, j) = e⁽ˡ⁾ⱼ recomputed;
    # get.engine(quantity, l, index) the engine's value of one of the kind's `engine_only` quantities.

    engine_only = ()          # quantities a hand check takes from the engine (statistics), read with get.engine

    def check_recomputes(self, layer, scenario, quantity, time, sample):
        """Whether a hand check recomputes the layer's `quantity` (at time step `time`, for `sample`)
        from its rule: every one, except on a layer run at every time step, whose rules per time step
        are not written (its numbers are compared; its batch sums, updates and parameters keep theirs)."""
        if self.runs_per_time(scenario):
            return time is None and not (sample is not None and quantity.startswith("grad_"))
        return True

    def check_recursion(self, layer, steps):
        """{quantity: time steps in the order of the computation} of a recursion through time that a
        hand check recomputes step by step (the Elman cell's h and δ); none by default."""
        return {}

    def check_value(self, layer, quantity, l, index, time, get):
        """The layer's own rule for `quantity` (recurrent kinds: every quantity, through time); None:
        check's rules of a row layer (check_u, check_combine, ... below)."""
        return None

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

    # ------------------------------------------------------------ diagnose face
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

    def unit_values(self, layer, trace, name, l, step, n):
        """A per-unit quantity (u, slope, a, h) of layer l at `step` for the step's first n batch slots,
        (rows, units): one row per sample (a layer run at every time step: per sample and time step)."""
        values = getattr(trace, name)[l - 1][step, :n]
        return values.reshape(-1, values.shape[-1])

    def output_slopes(self, layer, trace, l, step, n):
        """f'(u) behind the output the layer above reads, (n samples × units)."""
        return trace.slope[l - 1][step, :n]

    def error_through_time(self, layer, trace, l, step):
        """The error through time of the layer at `step` for diagnose (recurrent kinds: the norms of
        ∂E/∂h_t and their verdict); None for a layer without a recursion through time."""
        return None

    def first_nonfinite_through_time(self, layer, trace, l, step, phase):
        """The first non-finite value of the layer's values through time in computation order (phase
        "forward", "backward" or "gradient"), as (name, slot, value, operation, operands); None for a
        layer without values through time, whose per-sample values diagnose scans itself."""
        return None

    # ------------------------------------------------------------ chain face through time

    def runs_per_time(self, scenario):
        """True when the layer runs on every (sample, time) row (a row layer above the recurrent ones
        with targets per time step): its per-sample quantities are kept per (time, unit)."""
        return bool(getattr(scenario, "per_time_targets", False))

    def time_parameter(self, layer, scenario):
        """The parameter whose gradient diagnose explains as a sum over time steps: W for a layer run
        at every time step (targets per time step), None for a layer that runs once per sample."""
        return "W" if getattr(scenario, "per_time_targets", False) else None

    def explain_through_time(self, trace, which, l, index, step, slot, name, latex=False, evaluate=False,
                             update_lines=()):
        """The gradient of parameter which[index] of layer l as a sum over time steps (a TimeChain:
        tracer/layers/recurrent/chain.py) when the layer runs at every time step; None otherwise
        (`tracer chain` then writes the chain rule of one pass)."""
        if not getattr(trace.scenario, "per_time_targets", False):
            return None
        from tracer.layers.recurrent import chain
        return chain.explain_per_time(trace, which, l, index, step, slot, name, latex=latex, evaluate=evaluate,
                                      update_lines=update_lines)

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

