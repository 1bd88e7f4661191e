"""The recurrent layer kind (rnn, lstm, gru share it): the scenario, records and numpy faces run
through time, the engine's pass faces, the Excel face (excel.py) and the through-time faces the
explanations read (through_time.py: the gradient as a sum over time, hand-check rules, diagnose's
error norms). A cell (rnn.py, lstm.py, gru.py) declares its gates, its activations and its
equations: forward, backward, its step columns."""
import numpy as np

from tracer.errors import ScenarioError
from tracer.layers.parsing import Layer, parse_bias, parse_init
from tracer.layers.passes import LayerPass, Signal
from tracer.layers.protocol import LayerKind
from tracer.layers.recurrent import chain, through_time
from tracer.layers.quantities import Quantity
from tracer.layers.sums import IN_ORDER
from tracer import layers
from tracer.maths import activations, initialisers as inits

RECURRENT_KEYS = ("kind", "units", "init", "low", "high", "mean", "std", "value", "weights", "recurrent_weights",
                  "bias", "recurrent_bias", "bias_init", "bias_low", "bias_high", "bias_mean", "bias_std",
                  "bias_value", "train_bias")


class Recurrent(LayerKind):
    """A recurrent layer kind (rnn, lstm, gru): the cell's maths of its module, run through time.

    Scenario: `[data] inputs` are samples × time × features; recurrent layers come first
    (a stack reads the hidden states h_t of the layer below at every time step) and a dense layer
    must follow: the first dense layer reads the last hidden state h_{T−1} (the Pass's `a` of the
    layer and the trace's store `a` hold h_{T−1}, B × units). Keys: units (required), init (default
    xavier_uniform, drawn for W then Wh from the seeded generator) or init = "explicit" with
    weights (features × gates·units) and recurrent_weights (units × gates·units); bias values (or
    bias_init, default constant 0), recurrent_bias values (default 0); train_bias (false freezes b
    and bh, as PyTorch's bias=False). rnn also takes activation (default tanh, elementwise only)
    and its slope/alpha; lstm and gru have their fixed gate activations.

    Parameters, stored (stored_params) in the order W, b, Wh, bh, shapes (F, G·U), (G·U,),
    (U, G·U), (G·U,): names W{l}[i,j], b{l}[j], Wh{l}[i,j], bh{l}[j] everywhere; CSV quantities
    W, b, Wh, bh, grad_Wh, update_Wh, m_Wh, ... (the parameter-shaped quantities of dense layers
    with the name of the parameter). In the Trace: trace.W, trace.b, trace.Wh, trace.bh (per layer
    lists, None on layers without them) and likewise grad_Wh, update_Wh, grad_Wh_sample, ....

    Records (the kind's own quantities, Trace store `norm`, keys = CSV names): the cell's forward
    and backward quantities of the module docstring (rnn: u, h, slope, e, e_time, delta), per
    "sample-time-unit": Trace.values key (name, l, (t, j)) — time step t first, then unit j; and
    the per-time-step gradient contributions, keys grad_W_time, grad_b_time, grad_Wh_time,
    grad_bh_time, Trace.values key (name, l, (t, i, j)) or (name, l, (t, j)), written to the CSV
    as grad_W, grad_b, grad_Wh, grad_bh with their time (the per-sample sums over time are the
    usual grad_W ... with the time empty).

    Time steps are t = 0 … T−1 for sequences of T time steps (T = scenario.time_steps); the CSV's
    `time` column holds t. The templates rnn-exploding and rnn-clipped have T = 101 (h₀ … h₁₀₀: 100
    steps of recurrence, ∂h₁₀₀/∂h₀ = 1.1¹⁰⁰); rnn-vanishing, lstm-long and gru-long T = 50.
    With targets per time step the dense layers above run at every t (records.py, "Time").
    The engine runs it through the protocol's pass faces (forward_pass, backward_pass,
    sample_gradients); the numpy faces keep the protocol's signatures: forward(layer, sequence, W, b,
    Wh, bh) -> (h, record); backward(layer, record, dE_dh, W, Wh) adds the backward quantities to the
    record; gradients(layer, record, ...) -> (grad_W, grad_b, grad_Wh, grad_bh) per sample;
    error_down(layer, record, ...) -> ∂E/∂x (B, T, F).
    """

    keys = RECURRENT_KEYS
    stored_params = ("W", "b", "Wh", "bh")
    bias_params = ("b", "bh")
    param_names = ("W", "b", "Wh", "bh")
    recurrent = True
    gates = ("",)        # the gate blocks of the columns of W, Wh, b, bh, in order ("": the Elman cell's one block)
    cell = None          # the module holding forward/backward and the quantity tables
    hand_rules = False   # the cell is h = f(u) with the recursion of e and δ that a hand check recomputes
                         # and the chain writes symbolically (the Elman cell); else its gates' δ are the engine's

    def parse(self, v, raw, key, fan_in, is_output):
        if is_output:
            raise ScenarioError(v.source, f"{key}.kind", f"a {self.name} layer cannot be the output layer: "
                                "add a dense layer after it (it reads the last hidden state)")
        v.require(raw, "units", key)
        units = v.integer(raw, "units", key, minimum=1)
        activation, activation_params = self.parse_activation(v, raw, key, units)
        columns = len(self.gates) * units
        init_name, init_params = parse_init(v, raw, key, "", default="xavier_uniform")
        weights = recurrent_weights = None
        if init_name == "explicit":
            v.require(raw, "weights", f"{key} (init = \"explicit\")")
            v.require(raw, "recurrent_weights", f"{key} (init = \"explicit\")")
            weights = self._matrix(v, raw, "weights", key, (fan_in, columns), "(features, gates·units)")
            recurrent_weights = self._matrix(v, raw, "recurrent_weights", key, (units, columns), "(units, gates·units)")
        else:
            for name in ("weights", "recurrent_weights"):
                if name in raw:
                    raise ScenarioError(v.source, f"{key}.{name}", f"explicit {name.replace('_', ' ')} need init = \"explicit\"")
        bias, bias_name, bias_params = parse_bias(v, raw, key, lambda: self._vector(v, raw, "bias", key, columns))
        recurrent_bias = self._vector(v, raw, "recurrent_bias", key, columns) if "recurrent_bias" in raw else np.zeros(columns)
        return Layer(
            units=units, activation=activation, activation_params=activation_params, init=init_name,
            init_params=init_params, weights=weights, bias_init=bias_name, bias_params=bias_params, bias=bias,
            train_bias=v.boolean(raw, "train_bias", key, default=True), kind=self.name,
            recurrent_weights=recurrent_weights, recurrent_bias=recurrent_bias,
        )

    def parse_activation(self, v, raw, key, units):
        """lstm/gru: fixed gate activations; the layer's `activation` names the output's (tanh)."""
        return "tanh", {}

    def _matrix(self, v, raw, name, key, shape, meaning):
        value = v.matrix(raw, name, key)
        if value.shape != shape:
            raise ScenarioError(v.source, f"{key}.{name}", f"shape {value.shape[0]}×{value.shape[1]} does not match "
                                f"{meaning} = ({shape[0]}, {shape[1]}) of a {self.name} layer")
        return value

    def _vector(self, v, raw, name, key, columns):
        value = v.vector(raw, name, key)
        if value.shape != (columns,):
            raise ScenarioError(v.source, f"{key}.{name}", f"{value.shape[0]} values for gates·units = {columns} "
                                f"of a {self.name} layer")
        return value

    def refuse_key(self, v, key, name, kinds_with_it):
        raise ScenarioError(v.source, f"{key}.{name}", f"'{name}' does not apply to a {self.name} layer "
                            + ("(its gates have fixed activations)" if name in ("activation", "slope", "alpha")
                               else f"(its keys: {', '.join(self.keys)})"))

    def param_shapes(self, fan_in, units):
        """W (F, G·U), b (G·U,), Wh (U, G·U), bh (G·U,)."""
        columns = len(self.gates) * units
        return (fan_in, columns), (columns,), (units, columns), (columns,)

    def initial_parameters(self, layer, fan_in, rng):
        """(W, b, Wh, bh): W then Wh drawn by the layer's init (fan_in, fan_out of each matrix),
        then b by bias_init; explicit values as given; bh the recurrent_bias (default 0)."""
        shapes = self.param_shapes(fan_in, layer.units)
        if layer.init == "explicit":
            W, Wh = np.array(layer.weights, dtype=float), np.array(layer.recurrent_weights, dtype=float)
        else:
            sampler = inits.INITS[layer.init][1]
            W = np.asarray(sampler(rng, shapes[0], fan_in, shapes[0][1], layer.init_params), dtype=float)
            Wh = np.asarray(sampler(rng, shapes[2], layer.units, shapes[2][1], layer.init_params), dtype=float)
        if layer.bias_init == "explicit":
            b = np.array(layer.bias, dtype=float)
        else:
            sampler = inits.INITS[layer.bias_init][1]
            b = np.asarray(sampler(rng, shapes[1], fan_in, shapes[1][0], layer.bias_params), dtype=float)
        bh = np.array(layer.recurrent_bias if layer.recurrent_bias is not None else np.zeros(shapes[3]), dtype=float)
        return W, b, Wh, bh

    def describe(self, layer):
        return f"{self.name} {layer.units}"

    # ------------------------------------------------------------ records face

    def records(self, layer):
        """The cell's quantities per (sample, time, unit), then the per-time-step gradient contributions."""
        per_time = tuple(Quantity(name, symbol, meaning, "sample-time-unit")
                         for name, symbol, meaning in self.cell.FORWARD_QUANTITIES + self.cell.BACKWARD_QUANTITIES)
        gradients = tuple(Quantity(f"grad_{p}", f"∂E/∂{p} (time step t)", f"the time step's contribution to ∂E/∂{p}",
                                   "sample-time-param", key=f"grad_{p}_time", param=p) for p in self.stored_params)
        return per_time + gradients

    # ------------------------------------------------------------ numpy face (through time)
    # The protocol's signatures; `below` is the sequence (B, time, F), `delta` the error reaching the
    # hidden states from above, ∂E/∂h_t (B, time, U).

    def forward(self, layer, below, W, b, Wh, bh, sums=IN_ORDER):
        """(h, record): the hidden states (B, time, U) and the cell's record through time."""
        record = self.cell_forward(layer, below, W, b, Wh, bh)
        return record["h"], record

    def cell_forward(self, layer, below, W, b, Wh, bh):
        """The cell module's forward (the Elman cell adds its activation)."""
        return self.cell.forward(below, W, Wh, b, bh)

    def output(self, layer, record):
        """The hidden states h (B, time, U): what a recurrent layer above reads (h[:, -1] a dense one)."""
        return record["h"]

    def backward(self, layer, record, delta, W, Wh):
        """Backpropagation through time given delta = ∂E/∂h_t (B, time, U) from above: the backward
        quantities and gradients added to `record`."""
        record.update(self.cell.backward(record, delta, W, Wh))

    def gradients(self, layer, record, below=None, delta=None):
        """Per-sample gradients summed over time, in the order of stored_params."""
        return tuple(record[f"grad_{p}"] for p in self.stored_params)

    def error_down(self, layer, record, delta=None, W=None, error_here=None, sums=IN_ORDER):
        """∂E/∂x_t (B, time, F): the error passed to a recurrent layer below."""
        return record["dx"]

    # ------------------------------------------------------------ the engine's pass faces

    def forward_pass(self, layer, below, params, sums=IN_ORDER, u=None, slopes=True):
        """The cell through time over below.sequence; up: the hidden states as the sequence, and as
        rows the last hidden state h_{T−1} (B × U), or every h_t ((B·time) × U) with per-time targets."""
        sequence, record = self.forward(layer, below.sequence, *params)
        rows = sequence.reshape(-1, sequence.shape[-1]) if below.per_time else sequence[:, -1]
        return LayerPass(below, Signal(rows, sequence, below.per_time), sequence[:, -1], record)

    def pre_activations(self, layer, u, record):
        """u at every time step."""
        return record["u"]

    def backward_pass(self, layer, state, error, params, sums=IN_ORDER, down=True):
        """Through time, given ∂E/∂h_t from a recurrent layer above (B, time, U), or the error rows of
        a row layer above: at the last time step only (0 before it), or at every time step with
        per-time targets. Returns ∂E/∂x_t for a recurrent layer below."""
        sequence = state.up.sequence
        if error.ndim == sequence.ndim:
            dE_dh = error
        else:
            state.e = error
            if state.below.per_time:
                dE_dh = error.reshape(sequence.shape)
            else:
                dE_dh = np.zeros_like(sequence)
                dE_dh[:, -1] = error
        W, _, Wh, _ = params
        self.backward(layer, state.record, dE_dh, W, Wh)
        return self.error_down(layer, state.record) if down else None

    def sample_gradients(self, layer, state, steps=None):
        """The per-sample sums over time of the record."""
        return self.gradients(layer, state.record)

    def finish_pass(self, layer, state, steps=None):
        """Its values stay per (sample, time) in the record."""

    def activated(self, layer):
        return "h"

    def output_quantity(self, layer):
        """The hidden state h (at every time step; a dense layer above reads h at t = T−1)."""
        return "h"

    # ------------------------------------------------------------ the through-time faces

    def delta_key(self, gate, recurrent_side=False):
        """The record key of the delta that the columns of gate `gate` see: the input-side columns
        (W, b) or, `recurrent_side`, those of Wh and bh: delta (the Elman cell), delta_<gate>."""
        return f"delta_{gate}" if gate else "delta"

    def cell_activation(self, layer):
        """(name, params) of the activation a hand rule applies to u (the Elman cell's f; the gated
        cells' output tanh)."""
        return "tanh", {}

    def unit_values(self, layer, trace, name, l, step, n):
        """One row per sample and time step; u and slope of a gated cell: every gate's rows (u_i, ...)."""
        try:
            return through_time.time_values(trace, name, l)[step, :n].reshape(-1, layer.units)
        except KeyError:
            return np.concatenate([through_time.time_values(trace, f"{name}_{gate}", l)[step, :n].reshape(-1, layer.units)
                                   for gate in self.gates])

    def output_slopes(self, layer, trace, l, step, n):
        """f'(u) at the last time step (the hidden state the layer above reads); a gated cell's h_{T−1}
        is no single activation's output: ones."""
        try:
            return through_time.time_values(trace, "slope", l)[step, :n, -1]
        except KeyError:
            return np.ones((n, layer.units))

    def error_through_time(self, layer, trace, l, step):
        """{norms, verdict, cell_factors, cell_state}: ‖∂E/∂h_t‖ over the units and the step's samples,
        through_time.through_time's verdict (None: nothing to judge), the scalar Elman cell's
        Wh·f'(u_t) of the first sample (else None), lstm's ‖∂E/∂c_t‖ (else None)."""
        records = [through_time.record(trace, l, step, slot) for slot in range(len(trace.samples(step)))]
        norms = through_time.error_norms(records)
        cell = through_time.step_factors(records[0])[:, 0, 0] if through_time.scalar(records[0]) else None
        state = through_time.error_norms(records, "ec") if "ec" in records[0].values else None
        return {"norms": norms, "verdict": through_time.through_time(norms, trace.scenario.thresholds),
                "cell_factors": cell, "cell_state": state}

    def first_nonfinite_through_time(self, layer, trace, l, step, phase):
        """through_time.producer."""
        return through_time.producer(trace, l, step, phase)

    def runs_per_time(self, scenario):
        """Its values are per time step in its record, whatever the targets."""
        return False

    def time_parameter(self, layer, scenario):
        """Wh: the recurrent weight carries the error through time."""
        return "Wh"

    def explain_through_time(self, trace, which, l, index, step, slot, name, latex=False, evaluate=False,
                             update_lines=()):
        """Every parameter's gradient is a sum over time steps (chain.explain)."""
        return chain.explain(trace, which, l, index, step, slot, name, latex=latex, evaluate=evaluate,
                             update_lines=update_lines)

    # ------------------------------------------------------------ check face through time
    # `get` is check's accessor of one sample at one step (protocol.py, check face) with the time
    # step: get(quantity, l, index, time); get.error(l, j) the error the row layer above passes
    # down; get.trace, get.step, get.sample, get.slot.

    def check_recomputes(self, layer, scenario, quantity, time, sample):
        """The Elman cell: every quantity has a rule; a gated cell: the gradient's sums over time and
        contributions (from the engine's gate δ), the updates and the parameters."""
        if self.hand_rules:
            return True
        return quantity.startswith(("grad_", "update_")) or quantity in self.stored_params

    def check_recursion(self, layer, steps):
        """The Elman cell's recursion, in the order of the computation: h forward from time step 0,
        δ backward from the last."""
        return {"h": range(steps), "delta": range(steps - 1, -1, -1)} if self.hand_rules else {}

    def check_value(self, layer, quantity, l, index, time, get):
        """The rules of a recurrent layer for one sample at one training step (time step k = `time`):
          u_k[j]  = Σ_i x_k[i]·W[i,j] + b[j] + Σ_m h_{k−1}[m]·Wh[m,j] + bh[j]   (h₋₁ = 0; left to right)
          h_k = f(u_k),  slope_k = f'(u_k),  δ_k = slope_k·e_k
          e_k[j]  = g_k[j] + Σ_m Wh[j,m]·δ_{k+1}[m]   (e_{T−1} = g_{T−1}; g = ∂E/∂h_k from the layer above)
          grad W~k = x_k[i]·δ_k[j], grad Wh~k = h_{k−1}[i]·δ_k[j], grad b~k = grad bh~k = δ_k[j]
          grad θ (per sample) = Σ_k grad θ~k, left to right from k = 0;  a = h_{T−1}
        A gated cell: the contributions with the engine's gate deltas (its gates have no hand rule here)."""
        k, T = time, get.trace.scenario.inputs.shape[1]
        at = lambda name, unit, when: get(name, l, (unit,), when)  # noqa: E731
        if quantity == "a":
            return at("h", index[0], T - 1)
        if quantity.startswith("grad_") and k is None:
            per = [get(quantity, l, index, when) for when in range(T)]
            return sum(per[1:], per[0])
        if quantity.startswith("grad_"):
            which = quantity[len("grad_"):]
            m = index[-1]
            if self.hand_rules:
                delta = at("delta", m, k)
            else:
                record = through_time.record(get.trace, l, get.step, get.slot)
                delta = float(record.values["delta_x" if which in ("W", "b") else "delta_h"][k, m])
            if which == "W":
                return self._check_input(l, index[0], k, get) * delta
            if which == "Wh":
                return (at("h", index[0], k - 1) if k > 0 else 0.0) * delta
            return delta
        return self._check_unit(layer, quantity, l, index[0], k, T, get)

    def _check_unit(self, layer, quantity, l, j, k, T, get):
        """u, h, slope, δ and e of unit j at time step k (the Elman cell)."""
        at = lambda name, unit, when: get(name, l, (unit,), when)  # noqa: E731
        act, params = activations.get(layer.activation), layer.activation_params
        if quantity == "u":
            total = self._check_input(l, 0, k, get) * get("W", l, (0, j))
            for i in range(1, get.fan_in(l)):
                total = total + self._check_input(l, i, k, get) * get("W", l, (i, j))
            total = total + get("b", l, (j,))
            for m in range(layer.units):
                total = total + (at("h", m, k - 1) if k > 0 else 0.0) * get("Wh", l, (m, j))
            return total + get("bh", l, (j,))
        if quantity == "h":
            return float(act.forward(np.array([at("u", j, k)]), params)[0])
        if quantity == "slope":
            return float(act.slope(np.array([at("u", j, k)]), np.array([at("h", j, k)]), params)[0])
        if quantity == "delta":
            return at("slope", j, k) * at("e", j, k)
        if quantity == "e":
            above = self._check_from_above(l, j, k, T, get)
            if k == T - 1:
                return above
            total = at("delta", 0, k + 1) * get("Wh", l, (j, 0))
            for m in range(1, layer.units):
                total = total + at("delta", m, k + 1) * get("Wh", l, (j, m))
            return above + total
        raise ValueError(f"no rule through time for {quantity}")

    def _check_from_above(self, l, j, k, T, get):
        """g_k[j] = ∂E/∂h_k[j] from the layer above: a row layer above at the last time step only (its
        error passed down), or at every time step when it runs per time step (Σ_m δ_k[m]·W[j,m] of it
        at time k); a recurrent layer with hand rules above: Σ_m δ_k[m]·W[j,m] of its cell; a gated
        cell above: the engine's value."""
        s = get.trace.scenario
        above = s.layers[l]
        kind = layers.of(above)
        if not kind.recurrent and not kind.runs_per_time(s):
            return get.error(l, j) if k == T - 1 else 0.0
        if kind.recurrent and not kind.hand_rules:
            return self.error_from_above(get.trace, l, get.step, get.slot, k, j)
        total = get("delta", l + 1, (0,), k) * get("W", l + 1, (j, 0))
        for m in range(1, s.widths[l + 1]):
            total = total + get("delta", l + 1, (m,), k) * get("W", l + 1, (j, m))
        return total

    @staticmethod
    def _check_input(l, i, k, get):
        """x_k[i], the input of recurrent layer l at time step k: the data, or h of the layer below."""
        if l == 1:
            return float(get.trace.scenario.inputs[get.sample, k, i])
        return get("h", l - 1, (i,), k)

    def diagnose_links(self, layer, l, trace, step, slot=None):
        """(Σ_gates |W_gate|, the W of the strongest gate), fan_in × units: the error passed down to
        input i at every time step is Σ_m W[i,m]·δx_t[m], over each gate's block of columns m."""
        W = trace.W[l - 1][step]
        blocks = np.stack(np.split(W, len(self.gates), axis=1))      # (gates, fan_in, units)
        strongest = np.argmax(np.abs(blocks), axis=0)
        return np.abs(blocks).sum(axis=0), np.take_along_axis(blocks, strongest[None], axis=0)[0]

    def error_from_above(self, trace, l, step, slot, time, j):
        """The engine's g_k[j] = ∂E/∂h_k[j] arriving from above at time step k = `time` (e − e→)."""
        return float(through_time.record(trace, l, step, slot).values["above"][time, j])
