"""The Trace: every recorded scalar of a run, its names, and the tidy CSV export.

Layers are numbered from 1 (the first hidden layer); units, rows and columns from 0.
Parameters are named W{layer}[i,j] (joining unit i below to unit j) and b{layer}[j].
Per-sample arrays have shape (steps, B, ...) with B the batch size; a short last batch
is padded with NaN and sample id -1.
"""
import numpy as np

from tracer import layers, output
from tracer.training import records
from tracer.training.records import MAX_BYTES  # noqa: F401  (the cap on a run's recorded scalars, checked at load time)

CSV_COLUMNS = ("step", "sample", "quantity", "layer", "row", "col", "value", "time")
# time: the time step of a recurrent layer's quantity (issue 12), empty for every other quantity
# the stores Trace keeps one array per layer in (attributes trace.u, trace.grad_W, ...)
LAYER_STORES = ("u", "a", "slope", "delta", "h", "error", "W", "b", "grad_W_sample", "grad_b_sample",
                "grad_W", "grad_b", "update_W", "update_b",
                # recurrent layers' recurrent weights and bias (None on other layers)
                "Wh", "bh", "grad_Wh_sample", "grad_bh_sample", "grad_Wh", "grad_bh", "update_Wh", "update_bh")
RUN_STORES = ("output_error", "sample_loss", "loss", "lr", "grad_norm", "clip_factor")


def weight_name(layer, i, j):
    return f"W{layer}[{i},{j}]"


def bias_name(layer, j):
    return f"b{layer}[{j}]"


def param_name(scenario, kind, layer, index):
    """The name of one parameter, as the layer's kind names it: W{l}[i,j] / b{l}[j]; on a
    normalisation layer its scale gamma{l}[j] / shift beta{l}[j] (stored as a 1 × units W and a b)."""
    return layers.of(scenario.layers[layer - 1]).param_name(kind, layer, index)


def param_quantity(scenario, quantity, layer):
    """CSV quantity name: W, grad_W, update_W, ... become gamma, grad_gamma, ... on normalisation layers."""
    return layers.of(scenario.layers[layer - 1]).param_quantity(quantity)


class Trace:
    """Every recorded value of a run, one array per field of the declarative table
    (records.fields: the quantity, its layer, group and shape), in `arrays` {Field: ndarray}.

    The stores read as attributes, as lists over the layers (None where a layer does not record
    the quantity): u, a, slope, delta, h, error (e = ∂E/∂a of hidden layers; the last entry
    unused), W, b ((T+1, ...): the value used at step t; [T] = final), grad_W_sample,
    grad_b_sample ((T, B, ...); for the kinds that derive them, DerivedGradient arrays computed
    from a⁽ˡ⁻¹⁾ (x̂) and δ when indexed, not kept), grad_W, grad_b (batch totals), update_W, update_b (Δθ subtracted at
    step t); likewise Wh, bh, grad_Wh_sample, grad_bh_sample, grad_Wh, grad_bh, update_Wh, update_bh
    of recurrent layers (None on other layers; trace.parameters(step) gives every stored parameter; recurrent
    layers keep their per-sample gradients); arrays of the run: output_error ((T, B, K) ∂E/∂a⁽ᴸ⁾, None for fused losses),
    sample_loss (T, B), loss, lr (T,), grad_norm, clip_factor ((T,), None without clip_norm);
    norm {key: per layer} the layer kinds' own quantities (xhat, dxhat (T, B, n); batchnorm's
    mean, var, m1, m2 (T, n)); state {(name, "W"|"b"): per layer (T, ...)} the optimiser state
    after step t, initial_state the same before the first step.
    `sum_order` names the order the engine added the dense layers' sums in ("in_order": left to
    right, a spreadsheet formula's bits; "matmul": numpy matrix products; see engine.run).
    The one accessor for a value by name is `values` (verify, check and the workbook read it).
    """

    def __init__(self, scenario, sample_ids, arrays, warnings=(), first_step=0, sum_order="in_order"):
        self.scenario = scenario
        self.sum_order = sum_order        # the engine's sum order (layers.SUM_ORDERS)
        self.sample_ids = sample_ids      # (T, B), -1 = padding
        self.arrays = arrays              # {records.Field: ndarray}, in the table's order
        self.warnings = list(warnings)
        self.first_step = first_step      # the run's step number of index 0 (windows start later)
        self._fields = {(f.name, f.layer, f.group): f for f in arrays}
        self._stores = {}
        for f in arrays:
            if f.derived:
                arrays[f] = DerivedGradient(self, f)

    # ------------------------------------------------------------ the table

    @classmethod
    def allocate(cls, scenario, sample_ids, sum_order="in_order"):
        """NaN arrays for every field (zeros for the optimiser state before the first step; derived
        fields are computed when read), for a run in `sum_order`."""
        steps, size = sample_ids.shape
        return cls(scenario, sample_ids, sum_order=sum_order, arrays={
            f: None if f.derived else
            (np.zeros if f.group == "once" else lambda shape: np.full(shape, np.nan))(f.array_shape(steps, size))
            for f in records.fields(scenario)})

    @staticmethod
    def bytes_needed(scenario, steps, size):
        """Bytes `allocate` (and the batch schedule) take for `steps` steps of `size` samples:
        8 bytes per recorded scalar, from the same table as `allocate`, without allocating."""
        return records.bytes_needed(scenario, steps, size)

    def field(self, name, layer, kind):
        """The field of quantity `name` (W/b form for parameters: W, grad_b, m_W, ...) of `layer`
        read in rows of `kind`: "sample" (the per-sample field, else the step's), "total" and
        "final" (the step's), "initial" (the optimiser state before the first step)."""
        groups = {"sample": ("sample", "total"), "total": ("total",), "final": ("total",), "initial": ("once",)}[kind]
        for group in groups:
            found = self._fields.get((name, layer, group))
            if found is not None:
                return found
        raise KeyError(f"no recorded quantity {name!r} of layer {layer} in {kind} rows")

    def values(self, key, kind, step, slot, sample):
        """The engine's values of quantity `key` = (name, layer, index) — a workbook layout column's
        key: ("u", l, j), ("grad_W", l, (i, j)), ("m_W", l, (i, j)), ("loss",), ... — in rows of
        one kind ("sample", "total", "final" or "initial"), given their step, batch slot and data row
        (ints or arrays of them; any value where unused). Also ("step",), ("sample",) and the data
        ("x", 0, i), ("t", 0, k)."""
        name = key[0]
        if name == "step":
            return (self.first_step + np.asarray(step)).astype(float)
        if name == "sample":
            return np.asarray(sample).astype(float) if kind == "sample" else np.zeros(np.shape(step))
        index = key[2] if len(key) > 2 else ()
        index = tuple(index) if isinstance(index, (tuple, list)) else (index,)
        if name in ("x", "t"):
            return (self.scenario.inputs if name == "x" else self.scenario.targets)[(sample,) + index]
        found = self.field(name, key[1] if len(key) > 1 else None, kind)
        if found.derived:
            return self._derived_values(found, index, step, slot, sample)
        array = self.arrays[found]
        if found.group == "once":
            return array[index]
        return array[((step, slot) if found.group == "sample" else (step,)) + index]

    def _derived_values(self, found, index, step, slot, sample):
        """A per-sample gradient the Trace derives, for `values`: ∂E/∂b[j] = δⱼ, ∂E/∂W[i,j] = ②·δⱼ
        with factor ② the layer kind's gradient_factor (a⁽ˡ⁻¹⁾ᵢ, xᵢ or x̂ⱼ), value by value."""
        l, j = found.layer, index[-1]
        delta = self.values(("delta", l, j), "sample", step, slot, sample)
        if found.name == "grad_b":
            return delta
        layer = self.scenario.layers[l - 1]
        factor = layers.of(layer).gradient_factor(layer, l, index[0], j)
        with np.errstate(all="ignore"):     # the engine recorded its warnings when it computed them
            return self.values(factor, "sample", step, slot, sample) * delta

    def _store(self, store):
        """The arrays of one store: a list over the layers (None where not recorded) or, for the
        run's own fields, the array (None if not recorded). Built once: the table is fixed."""
        if store not in self._stores:
            if store in RUN_STORES:
                self._stores[store] = next((a for f, a in self.arrays.items() if f.store == store), None)
            else:
                per_layer = [None] * self.layers
                for f, array in self.arrays.items():
                    if f.store == store:
                        per_layer[f.layer - 1] = array
                self._stores[store] = per_layer
        return self._stores[store]

    def _grouped(self, store, key):
        """{key(field): per layer array or None} over the fields of `store`, built once."""
        if ("grouped", store) not in self._stores:
            grouped = {}
            for f, array in self.arrays.items():
                if f.store == store:
                    grouped.setdefault(key(f), [None] * len(self.scenario.layers))[f.layer - 1] = array
            self._stores[("grouped", store)] = grouped
        return self._stores[("grouped", store)]

    @property
    def norm(self):
        """{key: per layer array or None}: the layer kinds' own quantities (xhat, dxhat, mean, ...)."""
        return self._grouped("norm", lambda f: f.key or f.name)

    @property
    def state(self):
        """{(name, "W"|"b"): per layer (T, ...)}: the optimiser state after each step."""
        return self._grouped("state", lambda f: tuple(f.name.rsplit("_", 1)))

    @property
    def initial_state(self):
        """{(name, "W"|"b"): per layer}: the optimiser state before the first step."""
        return self._grouped("initial_state", lambda f: tuple(f.name.rsplit("_", 1)))

    def window(self, first, last):
        """Steps first..last (inclusive) as a Trace whose starting parameters are the engine's at `first`."""
        if not 0 <= first <= last < self.steps:
            raise ValueError(f"window {first}:{last} is outside steps 0..{self.steps - 1}")
        cut = {}
        for f, array in self.arrays.items():
            if f.group == "once":   # the state before the window: after step first − 1
                cut[f] = self.arrays[self._fields[(f.name, f.layer, "total")]][first - 1] if first else array
            elif f.derived:         # derived again from the window's own fields
                cut[f] = None
            else:
                cut[f] = array[first:last + 1 + f.final]
        return Trace(self.scenario, self.sample_ids[first:last + 1], cut,
                     [w for w in self.warnings if first <= w[0] <= last], self.first_step + first, self.sum_order)

    def state_before(self, kind, layer, step):
        """Optimiser state of parameter kind W/b of layer (0-based) before `step`: {name: array}."""
        return {name: (self.initial_state[(name, k)][layer] if step == 0 else arrays[layer][step - 1])
                for (name, k), arrays in self.state.items() if k == kind}

    def record_state(self, kind, layer, step, state):
        for name, value in state.items():
            self.state[(name, kind)][layer][step] = value

    @property
    def steps(self):
        return self.sample_ids.shape[0]

    @property
    def layers(self):
        return len(self.scenario.layers)

    def samples(self, step):
        """The data row ids used at `step`."""
        ids = self.sample_ids[step]
        return ids[ids >= 0]

    def set_parameters(self, step, weights, biases, extra=None):
        """Record the parameters used at `step`: W and b per layer, and `extra` {name: per layer
        array or None} for the other stored parameters (Wh, bh of recurrent layers)."""
        for store, value in zip(self.W, weights):
            store[step] = value
        for store, value in zip(self.b, biases):
            store[step] = value
        for name, values in (extra or {}).items():
            for store, value in zip(self._store(name), values):
                if store is not None and value is not None:
                    store[step] = value

    def parameters(self, step):
        """{stored parameter name: per layer array (a copy) or None} at `step` (W, b, Wh, bh, ...)."""
        return {name: [None if a is None else a[step].copy() for a in self._store(name)]
                for name in records.parameter_names(self.scenario)}

    def record(self, step, result, totals):
        """Record one step: the per-sample values of the engine's Pass `result` (a dict keyed by the
        fields' keys; the layer kinds' own values in result["records"]) and the step's `totals`
        {grad_W, grad_b, update_W, update_b: per layer; loss}."""
        n = result["sample_loss"].shape[0]
        for f, array in self.arrays.items():
            if f.derived:
                continue
            if f.source == "step":
                value = totals[f.name]
            elif f.source == "pass":
                value = result["records"][f.layer - 1].get(f.key) if f.store == "norm" else result[f.key or f.name]
            else:
                continue
            if f.store in LAYER_STORES:
                value = None if value is None else value[f.layer - 1]
            if value is None:
                continue
            if f.group == "sample":
                array[step, :n] = value
            else:
                array[step] = value

    def gradient_norm(self, layer):
        """‖∇⁽ˡ⁾‖ per step: sqrt(Σ (∂E/∂W_l)² + Σ (∂E/∂b_l)²) over the batch gradients (layer from 1)."""
        with np.errstate(all="ignore"):
            squares = np.sum(self.grad_W[layer - 1].reshape(self.steps, -1) ** 2, axis=1)
            squares = squares + np.sum(self.grad_b[layer - 1].reshape(self.steps, -1) ** 2, axis=1)
            for extra in (self.grad_Wh[layer - 1], self.grad_bh[layer - 1]):   # recurrent layers
                if extra is not None:
                    squares = squares + np.sum(extra.reshape(self.steps, -1) ** 2, axis=1)
            return np.sqrt(squares)

    def first_nonfinite_step(self):
        """The first step at which any recorded value is inf or NaN, or None."""
        bad = ~np.isfinite(self.loss)
        extra = [a for a in self.grad_Wh + self.grad_bh + [w[:-1] for w in self.Wh if w is not None] if a is not None]
        for array in self.grad_W + self.grad_b + [w[:-1] for w in self.W] + extra:
            bad = bad | ~np.isfinite(array.reshape(self.steps, -1)).all(axis=1)
        hits = np.flatnonzero(bad)
        return int(hits[0]) if hits.size else None

    # ------------------------------------------------------------ CSV

    def _csv_fields(self, group, final=False):
        return [f for f in self.arrays if f.group == group and f.csv and (f.final or not final)]

    def rows(self):
        """Yield tidy rows (step, sample, quantity, layer, row, col, value, time); sample None for
        totals, time None without a time index (see records.Field.times):
        per step, each sample's rows (the "sample" fields of the table in order), then the step's
        totals ("total" fields); after the last step the final parameters."""
        sample_fields, total_fields = self._csv_fields("sample"), self._csv_fields("total")
        for step in range(self.steps):
            for slot, sample in enumerate(self.samples(step)):
                for f in sample_fields:
                    yield from _field_rows(step, int(sample), f, self.arrays[f][step, slot])
            for f in total_fields:
                yield from _field_rows(step, None, f, self.arrays[f][step])
        for f in self._csv_fields("total", final=True):
            yield from _field_rows(self.steps, None, f, self.arrays[f][self.steps])

    def write_csv(self, path, into=None):
        """Write the tidy CSV (columns: step,sample,quantity,layer,row,col,value,time), the rows of
        `rows()` in their order, values with full precision (repr), lines ending in CRLF (as the
        csv module writes them), under a temporary name beside `path`, renamed to `path` when
        complete; with `into` (a temporary beside `path` that the caller renames, see
        output.atomic_paths) write it there instead."""
        if into is None:
            with output.atomic_path(path) as temporary:
                self._write_csv_file(temporary)
            return
        try:
            self._write_csv_file(into)
        except OSError as exc:
            raise output.cannot_write(path, exc) from None

    def _write_csv_file(self, file_path):
        with open(file_path, "w", newline="", encoding="utf-8") as handle:
            handle.write(",".join(CSV_COLUMNS) + "\r\n")
            for table in self.tables():
                handle.write(_csv_text(table))

    def tables(self, steps_per_table=2048, rows_per_table=1 << 20):
        """The rows of `rows()` as column arrays, a few thousand steps at a time (memory stays
        bounded: at most `steps_per_table` steps, fewer when a step has many rows, at least one step):
        dicts of numpy arrays step, sample, layer, row, col, time (-1 where the CSV is empty),
        quantity (str), value (float) and meta (the CSV text "quantity,layer,row,col,")."""
        sample_parts, total_parts = self._parts("sample"), self._parts("total")
        per_step = sum(part[2].size for part in total_parts) + self.sample_ids.shape[1] * sum(part[2].size for part in sample_parts)
        steps_per_table = max(1, min(steps_per_table, rows_per_table // max(per_step, 1)))
        for first in range(0, self.steps, steps_per_table):
            yield _step_table(self, sample_parts, total_parts, slice(first, min(first + steps_per_table, self.steps)))
        final = [(f.csv, f.layer, *f.rows_cols(), self.arrays[f][self.steps:].reshape(1, -1), f.times())
                 for f in self._csv_fields("total", final=True)]
        yield _stack(final, np.array([self.steps]), per_sample=False)

    def to_frame(self):
        """The trace as a tidy pandas DataFrame with exactly the CSV's columns and rows
        (step,sample,quantity,layer,row,col,value,time); empty CSV fields are <NA> (nullable integers).
        Needs pandas (`pip install pandas`)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Trace.to_frame() needs pandas: pip install pandas "
                              "(or use Trace.write_csv / Trace.rows without it)") from None
        tables = list(self.tables())
        columns = {}
        for name in CSV_COLUMNS:
            joined = np.concatenate([table[name] for table in tables])
            if name in ("sample", "layer", "row", "col", "time"):
                columns[name] = pandas.array(np.where(joined < 0, 0, joined), dtype="Int64")
                columns[name][joined < 0] = pandas.NA
            elif name == "step":
                columns[name] = joined.astype(np.int64)
            else:
                columns[name] = joined
        return pandas.DataFrame(columns, columns=list(CSV_COLUMNS))

    def __repr__(self):
        from tracer import notebook
        return notebook.trace_repr(self)

    def _repr_html_(self):
        from tracer import notebook
        return notebook.trace_html(self)

    @property
    def plot(self):
        """The pictures of the run: trace.plot() (loss and gradient flow), trace.plot.loss(),
        .gradient_flow(), .histograms(), .through_time(), .network(step) (tracer.plots)."""
        from tracer import plots
        return plots.Plotter(self)

    # ------------------------------------------------------------ CSV parts (vectorised rows)

    def _parts(self, group):
        """The CSV fields of a group in their order: (quantity, layer, rows, cols, array, times), the
        array (steps, B, ...) for "sample", (steps, ...) for "total" (derived ones computed when
        sliced; _step_table slices and flattens them to (steps, B, n), (steps, n))."""
        return [(f.csv, f.layer, *f.rows_cols(), self.arrays[f], f.times()) for f in self._csv_fields(group)]


class DerivedGradient:
    """The per-sample gradient of one layer's W-like (grad_W) or b-like (grad_b) parameter, shape
    (T, B, *parameter shape), for a kind that derives it (LayerKind.derives_sample_gradients): not
    kept; indexing it computes the values of the selected steps and slots only, from the trace's
    recorded fields, by the kind's numpy `gradients` (dense: a⁽ˡ⁻¹⁾ᵢ·δⱼ with the input x on layer 1;
    normalisation: x̂ⱼ·δⱼ) — the very products the engine added into the batch gradient — and
    ∂E/∂b = δ. The first two index entries select steps and slots, the rest applies to the
    parameter's axes of the result: [t], [t, s], [t, :n], [a:b], [t, s, i, j], ... Padding slots
    of a short last batch are NaN, as recorded ones."""

    dtype = np.dtype(float)
    nbytes = 0          # nothing is kept

    def __init__(self, trace, field):
        self.trace, self.field = trace, field
        self.shape = field.array_shape(trace.steps, trace.sample_ids.shape[1])
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        if any(part is Ellipsis for part in index):
            at = next(k for k, part in enumerate(index) if part is Ellipsis)
            index = index[:at] + (slice(None),) * (self.ndim - len(index) + 1) + index[at + 1:]
        rows = index[:2] + (slice(None),) * (2 - len(index[:2]))
        values = self._derive(rows)
        return values[(slice(None),) * (values.ndim - len(self.shape) + 2) + index[2:]] if index[2:] else values

    def _derive(self, rows):
        """The values at steps and slots `rows` (an index of the (T, B) axes): shape S + parameter shape."""
        t, l = self.trace, self.field.layer
        delta = t.delta[l - 1][rows]
        if self.field.name == "grad_b":
            return np.array(delta)
        layer = t.scenario.layers[l - 1]
        kind = layers.of(layer)
        selected, units = delta.shape[:-1], delta.shape[-1]
        if l == 1:
            ids = t.sample_ids[rows]
            below = t.scenario.inputs[np.where(ids >= 0, ids, 0)]
            below[ids < 0] = np.nan
        else:
            below = t.a[l - 2][rows]
        flat = lambda array: np.reshape(array, (-1,) + array.shape[len(selected):])  # noqa: E731
        record = {q.key: flat(t.norm[q.key][l - 1][rows]) for q in kind.records(layer)   # the kind's per-sample records
                  if not q.common and q.per in ("sample-unit", "sample")}
        with np.errstate(all="ignore"):     # the engine recorded its warnings when it computed them
            grad_W, _ = kind.gradients(layer, record, flat(below), np.reshape(delta, (-1, units)))
        return grad_W.reshape(selected + self.field.shape)


def _field_rows(step, sample, field, value):
    """The CSV rows of one field's value at one step (and sample)."""
    rows, cols = field.rows_cols()
    flat = np.reshape(value, -1)
    rows = [None if r < 0 else r for r in rows.tolist()]
    cols = [None] * len(rows) if cols is None else cols.tolist()
    times = [None if t < 0 else t for t in field.times().tolist()]
    for k, (row, col) in enumerate(zip(rows, cols)):
        yield step, sample, field.csv, field.layer, row, col, flat[k], times[k]


def _store_property(store):
    return property(lambda self: self._store(store), doc=f"the {store} store (see the class docstring)")


for _name in LAYER_STORES + RUN_STORES:
    setattr(Trace, _name, _store_property(_name))


def _stack(parts, steps, per_sample, sample_ids=None):
    """Rows of `parts` for the given steps, step by step (and sample by sample when per_sample,
    for the valid slots of sample_ids), as column arrays."""
    widths = [part[2].size for part in parts]
    quantity = np.repeat(np.array([part[0] for part in parts], dtype=object), widths)
    layer = np.repeat(np.array([-1 if part[1] is None else part[1] for part in parts], dtype=np.int64), widths)
    row = np.concatenate([part[2] for part in parts]).astype(np.int64)
    col = np.concatenate([np.full(part[2].size, -1) if part[3] is None else part[3] for part in parts]).astype(np.int64)
    time = np.concatenate([part[5] for part in parts]).astype(np.int64)
    field = lambda k: "" if k < 0 else str(k)  # noqa: E731
    meta = np.array([f"{q},{field(l)},{field(r)},{field(c)},"
                     for q, l, r, c in zip(quantity, layer.tolist(), row.tolist(), col.tolist())], dtype=object)
    if per_sample:
        values = np.concatenate([part[4] for part in parts], axis=2)          # (steps, B, P)
        valid = sample_ids >= 0
        count = len(quantity)
        return {"step": np.repeat(steps, valid.sum(axis=1) * count),
                "sample": np.repeat(sample_ids[valid], count),
                "quantity": np.tile(quantity, int(valid.sum())), "layer": np.tile(layer, int(valid.sum())),
                "meta": np.tile(meta, int(valid.sum())),
                "row": np.tile(row, int(valid.sum())), "col": np.tile(col, int(valid.sum())),
                "time": np.tile(time, int(valid.sum())), "value": values[valid].reshape(-1)}
    values = np.concatenate([part[4] for part in parts], axis=1)              # (steps, Q)
    n = len(steps)
    return {"step": np.repeat(steps, len(quantity)), "sample": np.full(n * len(quantity), -1),
            "quantity": np.tile(quantity, n), "layer": np.tile(layer, n), "row": np.tile(row, n),
            "col": np.tile(col, n), "time": np.tile(time, n), "meta": np.tile(meta, n), "value": values.reshape(-1)}


def _step_table(trace, sample_parts, total_parts, steps):
    """The rows of steps `steps` (a slice): each step's sample rows, then its total rows."""
    numbers = np.arange(trace.steps)[steps]
    count, size = len(numbers), trace.sample_ids.shape[1]
    samples = _stack([(q, l, r, c, v[steps].reshape(count, size, -1), t) for q, l, r, c, v, t in sample_parts], numbers,
                     True, trace.sample_ids[steps])
    totals = _stack([(q, l, r, c, v[steps].reshape(count, -1), t) for q, l, r, c, v, t in total_parts], numbers, False)
    # interleave: step t's sample rows, then its total rows (a stable sort on the step number)
    order = np.argsort(np.concatenate([samples["step"], totals["step"]]), kind="stable")
    return {name: np.concatenate([samples[name], totals[name]])[order] for name in samples}


def _csv_text(table):
    """The CSV lines of a table of column arrays, built with C-level loops: "step,sample," once
    per run of rows that share them, "quantity,layer,row,col," from the table's `meta`, the value
    with repr, then ",time"; empty fields for -1; CRLF line ends."""
    n = len(table["value"])
    if not n:
        return ""
    step, sample = table["step"], table["sample"]
    starts = np.flatnonzero(np.concatenate(([True], (step[1:] != step[:-1]) | (sample[1:] != sample[:-1]))))
    prefixes = np.array([f"{a},{'' if b < 0 else b}," for a, b in zip(step[starts].tolist(), sample[starts].tolist())],
                        dtype=object)
    pieces = np.empty(4 * n, dtype=object)
    pieces[0::4] = np.repeat(prefixes, np.diff(np.append(starts, n)))
    pieces[1::4] = table["meta"]
    pieces[2::4] = list(map(repr, table["value"].tolist()))
    time = table["time"]
    ends = np.full(n, ",\r\n", dtype=object)
    timed = np.flatnonzero(time >= 0)
    if timed.size:
        ends[timed] = [f",{t}\r\n" for t in time[timed].tolist()]
    pieces[3::4] = ends
    return "".join(pieces.tolist())
