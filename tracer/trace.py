"""The Trace: every recorded scalar of a run, its names, and the tidy CSV export.

Layers are numbered from 1 (the first hidden layer); units, rows and columns from 0.
Parameters are named W{layer}[i,j] (joining unit i below to unit j) and b{layer}[j].
Per-sample arrays have shape (steps, B, ...) with B the batch size; a short last batch
is padded with NaN and sample id -1.
"""
from dataclasses import dataclass, field

import numpy as np

from . import losses, optim, output

CSV_COLUMNS = ("step", "sample", "quantity", "layer", "row", "col", "value")
BATCHNORM_PER_SAMPLE = ("xhat", "dxhat")
BATCHNORM_PER_STEP = ("mean", "var", "m1", "m2")
PER_SAMPLE_UNIT = ("u", "a", "slope", "delta")
MAX_BYTES = 2 * 2**30   # the cap on a run's recorded scalars (README: "Bad input"), checked at load time


def weight_name(layer, i, j):
    return f"W{layer}[{i},{j}]"


def bias_name(layer, j):
    return f"b{layer}[{j}]"


def param_name(scenario, kind, layer, index):
    """W{l}[i,j] / b{l}[j]; for a batchnorm layer its scale gamma{l}[j] / shift beta{l}[j]
    (stored as a 1 × units W and a b)."""
    if scenario.layers[layer - 1].kind == "batchnorm":
        return f"gamma{layer}[{index[-1]}]" if kind == "W" else f"beta{layer}[{index[0]}]"
    return weight_name(layer, *index) if kind == "W" else bias_name(layer, *index)


def param_quantity(scenario, quantity, layer):
    """CSV quantity name: W, grad_W, update_W, ... become gamma, grad_gamma, ... on batchnorm layers."""
    if scenario.layers[layer - 1].kind != "batchnorm":
        return quantity
    if quantity in ("W", "b"):
        return {"W": "gamma", "b": "beta"}[quantity]
    return quantity[:-2] + ("_gamma" if quantity.endswith("_W") else "_beta")


@dataclass
class Trace:
    scenario: object
    sample_ids: np.ndarray             # (T, B), -1 = padding
    u: list
    a: list
    slope: list
    delta: list
    h: list                            # f(u) before a residual skip is added (= a elsewhere)
    error: list                        # e = ∂E/∂a of hidden layers (the last entry unused)
    output_error: np.ndarray | None    # (T, B, K) ∂E/∂a⁽ᴸ⁾, None for fused losses
    sample_loss: np.ndarray            # (T, B)
    loss: np.ndarray                   # (T,)
    W: list                            # (T+1, fan_in, units): value used at step t; [T] = final
    b: list                            # (T+1, units)
    grad_W_sample: list                # (T, B, fan_in, units)
    grad_b_sample: list                # (T, B, units)
    grad_W: list                       # (T, fan_in, units), batch total
    grad_b: list
    update_W: list                     # Δθ subtracted at step t
    update_b: list
    norm: dict = field(default_factory=dict)   # quantity -> per layer arrays: xhat, dxhat (T, B, n); mean, var, m1, m2 (T, n)
    lr: np.ndarray | None = None            # (T,) learning rate used at each step (schedules)
    state: dict = field(default_factory=dict)    # (name, "W"|"b") -> per layer (T, ...) optimiser state after step t
    initial_state: dict = field(default_factory=dict)  # (name, kind) -> per layer state before the first step
    grad_norm: np.ndarray | None = None     # (T,) ‖g‖ over the trained parameters, with clip_norm
    clip_factor: np.ndarray | None = None   # (T,) the clip factor c, with clip_norm
    warnings: list = field(default_factory=list)
    first_step: int = 0                # the run's step number of index 0 (windows start later)

    @classmethod
    def allocate(cls, scenario, sample_ids):
        steps, size = sample_ids.shape
        widths = scenario.widths
        per_unit = lambda: [np.full((steps, size, n), np.nan) for n in widths[1:]]  # noqa: E731
        shapes = [(1, j) if layer.kind == "batchnorm" else (i, j)
                  for i, j, layer in zip(widths[:-1], widths[1:], scenario.layers)]
        parameter_shapes = {"W": shapes, "b": [(j,) for j in widths[1:]]}
        states = optim.OPTIMIZERS[scenario.optimizer].state
        recorded = losses.LOSSES[scenario.loss].records_output_error
        return cls(
            scenario=scenario, sample_ids=sample_ids,
            u=per_unit(), a=per_unit(), slope=per_unit(), delta=per_unit(), h=per_unit(), error=per_unit(),
            output_error=np.full((steps, size, widths[-1]), np.nan) if recorded else None,
            sample_loss=np.full((steps, size), np.nan), loss=np.full(steps, np.nan),
            W=[np.full((steps + 1, i, j), np.nan) for i, j in shapes],
            b=[np.full((steps + 1, j), np.nan) for j in widths[1:]],
            grad_W_sample=[np.full((steps, size, i, j), np.nan) for i, j in shapes],
            grad_b_sample=per_unit(),
            grad_W=[np.full((steps, i, j), np.nan) for i, j in shapes],
            grad_b=[np.full((steps, j), np.nan) for j in widths[1:]],
            update_W=[np.full((steps, i, j), np.nan) for i, j in shapes],
            update_b=[np.full((steps, j), np.nan) for j in widths[1:]],
            norm={**{q: per_unit() for q in BATCHNORM_PER_SAMPLE},
                  **{q: [np.full((steps, n), np.nan) for n in widths[1:]] for q in BATCHNORM_PER_STEP}},
            lr=np.full(steps, np.nan),
            state={(name, kind): [np.full((steps,) + shape, np.nan) for shape in parameter_shapes[kind]]
                   for name in states for kind in parameter_shapes},
            initial_state={(name, kind): [np.zeros(shape) for shape in parameter_shapes[kind]]
                           for name in states for kind in parameter_shapes},
            grad_norm=np.full(steps, np.nan) if scenario.clip_norm is not None else None,
            clip_factor=np.full(steps, np.nan) if scenario.clip_norm is not None else None,
        )

    @staticmethod
    def bytes_needed(scenario, steps, size):
        """Bytes `allocate` (and the batch schedule) take for `steps` steps of `size` samples:
        8 bytes per recorded scalar, the same shapes as `allocate`, computed without allocating."""
        widths = scenario.widths
        units = sum(widths[1:])
        weights = sum((1 if layer.kind == "batchnorm" else i) * j
                      for i, j, layer in zip(widths[:-1], widths[1:], scenario.layers))
        states = len(optim.OPTIMIZERS[scenario.optimizer].state)
        recorded = losses.LOSSES[scenario.loss].records_output_error
        per_sample = (len(PER_SAMPLE_UNIT) + 3 + len(BATCHNORM_PER_SAMPLE)) * units + weights \
            + (widths[-1] if recorded else 0) + 1 + 1          # + sample_loss and the sample id
        per_step = size * per_sample + 3 * (weights + units) + len(BATCHNORM_PER_STEP) * units \
            + 2 + states * (weights + units) + (2 if scenario.clip_norm is not None else 0)
        once = weights + units + states * (weights + units)  # final parameters, initial optimiser state
        return 8 * (steps * per_step + once)

    def values(self, key, kind, step, slot, sample):
        """The engine's values of quantity `key` (a workbook layout column's key: ("u", l, j),
        ("grad_W", l, (i, j)), ("loss",), ...) in rows of one kind ("sample", "total" or "final"),
        given as arrays of their step, batch slot and data row (any value where unused)."""
        name = key[0]
        if name == "step":
            return (self.first_step + step).astype(float)
        if name == "sample":
            return sample.astype(float) if kind == "sample" else np.zeros(len(step))
        if name == "loss":
            return self.sample_loss[step, slot] if kind == "sample" else self.loss[step]
        if name in ("grad_norm", "clip_factor", "lr"):
            return getattr(self, name)[step]
        if (name.rsplit("_", 1)[0], name[-1]) in self.state:
            return self.state[(name.rsplit("_", 1)[0], name[-1])][key[1] - 1][(step,) + tuple(key[2])]
        layer, index = key[1], key[2]
        if name == "x":
            return self.scenario.inputs[sample, index]
        if name == "t":
            return self.scenario.targets[sample, index]
        if name in BATCHNORM_PER_SAMPLE:
            return self.norm[name][layer - 1][step, slot, index]
        if name in tuple(f"bn_{q}" for q in BATCHNORM_PER_STEP):
            return self.norm[name[3:]][layer - 1][step, index]
        if name in PER_SAMPLE_UNIT + ("h", "e"):
            store = self.error if name == "e" else getattr(self, name)
            return store[layer - 1][step, slot, index]
        if name == "dE_da":
            return self.output_error[step, slot, index]
        if name in ("grad_W", "grad_b"):
            store = getattr(self, name + "_sample") if kind == "sample" else getattr(self, name)
            where = (step, slot) if kind == "sample" else (step,)
            return store[layer - 1][where + tuple(index)]
        store = {"W": self.W, "b": self.b, "update_W": self.update_W, "update_b": self.update_b}[name]
        return store[layer - 1][(step,) + tuple(index)]

    def window(self, first, last):
        """Steps first..last (inclusive) as a Trace whose starting parameters are the engine's at `first`."""
        if not 0 <= first <= last < self.steps:
            raise ValueError(f"window {first}:{last} is outside steps 0..{self.steps - 1}")
        steps, params = slice(first, last + 1), slice(first, last + 2)
        cut = lambda arrays, part: [a[part] for a in arrays]  # noqa: E731
        return Trace(
            scenario=self.scenario, sample_ids=self.sample_ids[steps],
            u=cut(self.u, steps), a=cut(self.a, steps), slope=cut(self.slope, steps), delta=cut(self.delta, steps),
            h=cut(self.h, steps), error=cut(self.error, steps),
            output_error=None if self.output_error is None else self.output_error[steps],
            sample_loss=self.sample_loss[steps], loss=self.loss[steps],
            W=cut(self.W, params), b=cut(self.b, params),
            grad_W_sample=cut(self.grad_W_sample, steps), grad_b_sample=cut(self.grad_b_sample, steps),
            grad_W=cut(self.grad_W, steps), grad_b=cut(self.grad_b, steps),
            update_W=cut(self.update_W, steps), update_b=cut(self.update_b, steps),
            norm={q: cut(arrays, steps) for q, arrays in self.norm.items()},
            lr=self.lr[steps],
            state={key: cut(arrays, steps) for key, arrays in self.state.items()},
            initial_state={key: [a[first - 1] if first else self.initial_state[key][i] for i, a in enumerate(arrays)]
                           for key, arrays in self.state.items()},
            grad_norm=None if self.grad_norm is None else self.grad_norm[steps],
            clip_factor=None if self.clip_factor is None else self.clip_factor[steps],
            warnings=[w for w in self.warnings if first <= w[0] <= last], first_step=self.first_step + first,
        )

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
        return len(self.u)

    def samples(self, step):
        """The data row ids used at `step`."""
        ids = self.sample_ids[step]
        return ids[ids >= 0]

    def set_parameters(self, step, weights, biases):
        for store, value in zip(self.W, weights):
            store[step] = value
        for store, value in zip(self.b, biases):
            store[step] = value

    def record(self, step, result, grads_W, grads_b, updates_W, updates_b, loss):
        n = result.sample_loss.shape[0]
        for layer in range(self.layers):
            self.u[layer][step, :n] = result.u[layer]
            self.a[layer][step, :n] = result.a[layer]
            self.slope[layer][step, :n] = result.slope[layer]
            self.delta[layer][step, :n] = result.delta[layer]
            self.h[layer][step, :n] = result.h[layer]
            if result.error[layer] is not None:
                self.error[layer][step, :n] = result.error[layer]
            self.grad_W_sample[layer][step, :n] = result.grad_W[layer]
            self.grad_b_sample[layer][step, :n] = result.grad_b[layer]
            self.grad_W[layer][step] = grads_W[layer]
            self.grad_b[layer][step] = grads_b[layer]
            self.update_W[layer][step] = updates_W[layer]
            self.update_b[layer][step] = updates_b[layer]
        for index, record in enumerate(result.records):
            for q in BATCHNORM_PER_SAMPLE:
                if q in record:
                    self.norm[q][index][step, :n] = record[q]
            for q in BATCHNORM_PER_STEP:
                if f"bn_{q}" in record:
                    self.norm[q][index][step] = record[f"bn_{q}"]
        if self.output_error is not None:
            self.output_error[step, :n] = result.output_error
        self.sample_loss[step, :n] = result.sample_loss
        self.loss[step] = loss

    def gradient_norm(self, layer):
        """‖∇⁽ˡ⁾‖ per step: sqrt(Σ (∂E/∂W_l)² + Σ (∂E/∂b_l)²) over the batch gradients (layer from 1)."""
        with np.errstate(all="ignore"):
            squares = np.sum(self.grad_W[layer - 1].reshape(self.steps, -1) ** 2, axis=1)
            squares = squares + np.sum(self.grad_b[layer - 1].reshape(self.steps, -1) ** 2, axis=1)
            return np.sqrt(squares)

    def first_nonfinite_step(self):
        """The first step at which any recorded value is inf or NaN, or None."""
        bad = ~np.isfinite(self.loss)
        for array in self.grad_W + self.grad_b + [w[:-1] for w in self.W]:
            bad = bad | ~np.isfinite(array.reshape(self.steps, -1)).all(axis=1)
        hits = np.flatnonzero(bad)
        return int(hits[0]) if hits.size else None

    # ------------------------------------------------------------ CSV

    def rows(self):
        """Yield tidy rows (step, sample, quantity, layer, row, col, value); sample None for totals."""
        for step in range(self.steps):
            for slot, sample in enumerate(self.samples(step)):
                sample = int(sample)
                for layer in range(self.layers):
                    if self.scenario.layers[layer].kind == "batchnorm":
                        for name in BATCHNORM_PER_SAMPLE:
                            for j, value in enumerate(self.norm[name][layer][step, slot]):
                                yield step, sample, name, layer + 1, j, None, value
                    names = PER_SAMPLE_UNIT + (("h", "error") if self.scenario.layers[layer].residual else ())
                    for name in names:
                        for j, value in enumerate(getattr(self, name)[layer][step, slot]):
                            yield step, sample, "e" if name == "error" else name, layer + 1, j, None, value
                if self.output_error is not None:
                    for j, value in enumerate(self.output_error[step, slot]):
                        yield step, sample, "dE_da", self.layers, j, None, value
                for layer in range(self.layers):
                    yield from self._param_rows(step, sample, "grad_W", layer, self.grad_W_sample[layer][step, slot])
                    yield from self._param_rows(step, sample, "grad_b", layer, self.grad_b_sample[layer][step, slot])
                yield step, sample, "loss", None, None, None, self.sample_loss[step, slot]
            for layer in range(self.layers):
                for name, store in (("W", self.W), ("grad_W", self.grad_W), ("update_W", self.update_W),
                                    ("b", self.b), ("grad_b", self.grad_b), ("update_b", self.update_b)):
                    yield from self._param_rows(step, None, name, layer, store[layer][step])
                if self.scenario.layers[layer].kind == "batchnorm":
                    for name in BATCHNORM_PER_STEP:
                        for j, value in enumerate(self.norm[name][layer][step]):
                            yield step, None, f"bn_{name}", layer + 1, j, None, value
            yield step, None, "loss", None, None, None, self.loss[step]
            yield step, None, "lr", None, None, None, self.lr[step]
            for (name, kind), arrays in self.state.items():
                for layer, array in enumerate(arrays):
                    if kind == "W" or self.scenario.layers[layer].train_bias:
                        yield from self._param_rows(step, None, f"{name}_{kind}", layer, array[step])
            if self.clip_factor is not None:
                yield step, None, "grad_norm", None, None, None, self.grad_norm[step]
                yield step, None, "clip_factor", None, None, None, self.clip_factor[step]
        for layer in range(self.layers):
            yield from self._param_rows(self.steps, None, "W", layer, self.W[layer][self.steps])
            yield from self._param_rows(self.steps, None, "b", layer, self.b[layer][self.steps])

    def _param_rows(self, step, sample, quantity, layer, array):
        """Rows of one parameter-shaped array: W-like (row i, col j) or b-like (row j); on a
        batchnorm layer gamma/beta-like, row j."""
        name = param_quantity(self.scenario, quantity, layer + 1)
        if array.ndim == 2 and name == quantity:
            yield from _matrix_rows(step, sample, quantity, layer + 1, array)
        else:
            for j, value in enumerate(array.reshape(-1)):
                yield step, sample, name, layer + 1, j, None, value

    def write_csv(self, path, into=None):
        """Write the tidy CSV (columns: step,sample,quantity,layer,row,col,value), the rows of
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

    def tables(self, steps_per_table=2048):
        """The rows of `rows()` as column arrays, a few thousand steps at a time (memory stays
        bounded): dicts of numpy arrays step, sample, layer, row, col (-1 where the CSV is empty),
        quantity (str), value (float) and meta (the CSV text "quantity,layer,row,col,")."""
        sample_parts, total_parts = self._sample_parts(), self._total_parts()
        for first in range(0, self.steps, steps_per_table):
            yield _step_table(self, sample_parts, total_parts, slice(first, min(first + steps_per_table, self.steps)))
        final = [part for layer in range(self.layers)
                 for part in (self._param_part("W", layer, self.W[layer][self.steps:]),
                              self._param_part("b", layer, self.b[layer][self.steps:]))]
        yield _stack(final, np.array([self.steps]), per_sample=False)

    def to_frame(self):
        """The trace as a tidy pandas DataFrame with exactly the CSV's columns and rows
        (step,sample,quantity,layer,row,col,value); empty CSV fields are <NA> (nullable integers).
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
            if name in ("sample", "layer", "row", "col"):
                columns[name] = pandas.array(np.where(joined < 0, 0, joined), dtype="Int64")
                columns[name][joined < 0] = pandas.NA
            elif name == "step":
                columns[name] = joined.astype(np.int64)
            else:
                columns[name] = joined
        return pandas.DataFrame(columns, columns=list(CSV_COLUMNS))

    def __repr__(self):
        s = self.scenario
        span = f"steps {self.first_step}..{self.first_step + self.steps - 1}"
        bad = self.first_nonfinite_step()
        state = "finite" if bad is None else f"non-finite from step {self.first_step + bad}"
        loss = f"loss {self.loss[0]:.6g} -> {self.loss[-1]:.6g}" if self.steps else "no steps"
        return f"<Trace {s.name!r}: {'-'.join(map(str, s.widths))} network, {span}, {loss}, {state}>"

    # ------------------------------------------------------------ CSV parts (vectorised rows)

    def _param_part(self, quantity, layer, array):
        """One parameter-shaped quantity over steps: array (steps, ...) -> a part whose rows are
        those of `_param_rows` (W-like: row i, col j; b-like and batchnorm γ/β: row j)."""
        name = param_quantity(self.scenario, quantity, layer + 1)
        steps = array.shape[0]
        if array.ndim == 3 and name == quantity:
            i, j = np.divmod(np.arange(array.shape[1] * array.shape[2]), array.shape[2])
            return name, layer + 1, i, j, array.reshape(steps, -1)
        flat = array.reshape(steps, -1)
        return name, layer + 1, np.arange(flat.shape[1]), None, flat

    def _sample_parts(self):
        """The per-sample quantities in the order of one sample's rows: (quantity, layer, rows,
        cols, values (steps, B, n))."""
        parts, T, B = [], self.steps, self.sample_ids.shape[1]
        for layer in range(self.layers):
            units = np.arange(self.u[layer].shape[2])
            if self.scenario.layers[layer].kind == "batchnorm":
                parts += [(name, layer + 1, units, None, self.norm[name][layer]) for name in BATCHNORM_PER_SAMPLE]
            names = PER_SAMPLE_UNIT + (("h", "error") if self.scenario.layers[layer].residual else ())
            parts += [("e" if name == "error" else name, layer + 1, units, None, getattr(self, name)[layer]) for name in names]
        if self.output_error is not None:
            parts.append(("dE_da", self.layers, np.arange(self.output_error.shape[2]), None, self.output_error))
        for layer in range(self.layers):
            for quantity, store in (("grad_W", self.grad_W_sample), ("grad_b", self.grad_b_sample)):
                name, l, rows, cols, values = self._param_part(quantity, layer, store[layer].reshape((T * B,) + store[layer].shape[2:]))
                parts.append((name, l, rows, cols, values.reshape(T, B, -1)))
        parts.append(("loss", None, np.array([-1]), None, self.sample_loss[:, :, None]))   # no row or col
        return parts

    def _total_parts(self):
        """The per-step quantities in the order of a step's total rows: (quantity, layer, rows,
        cols, values (steps, n))."""
        parts, T, one = [], self.steps, np.array([-1])   # `one` scalar row: no row or col
        for layer in range(self.layers):
            for name, store in (("W", self.W), ("grad_W", self.grad_W), ("update_W", self.update_W),
                                ("b", self.b), ("grad_b", self.grad_b), ("update_b", self.update_b)):
                parts.append(self._param_part(name, layer, store[layer][:T]))
            if self.scenario.layers[layer].kind == "batchnorm":
                parts += [(f"bn_{name}", layer + 1, np.arange(self.norm[name][layer].shape[1]), None, self.norm[name][layer])
                          for name in BATCHNORM_PER_STEP]
        parts.append(("loss", None, one, None, self.loss[:, None]))
        parts.append(("lr", None, one, None, self.lr[:, None]))
        for (name, kind), arrays in self.state.items():
            for layer, array in enumerate(arrays):
                if kind == "W" or self.scenario.layers[layer].train_bias:
                    parts.append(self._param_part(f"{name}_{kind}", layer, array))
        if self.clip_factor is not None:
            parts.append(("grad_norm", None, one, None, self.grad_norm[:, None]))
            parts.append(("clip_factor", None, one, None, self.clip_factor[:, None]))
        return parts


def _stack(parts, steps, per_sample, sample_ids=None):
    """Rows of `parts` for the given steps, step by step (and sample by sample when per_sample,
    for the valid slots of sample_ids), as column arrays."""
    widths = [part[2].size for part in parts]
    quantity = np.repeat(np.array([part[0] for part in parts], dtype=object), widths)
    layer = np.repeat(np.array([-1 if part[1] is None else part[1] for part in parts], dtype=np.int64), widths)
    row = np.concatenate([part[2] for part in parts]).astype(np.int64)
    col = np.concatenate([np.full(part[2].size, -1) if part[3] is None else part[3] for part in parts]).astype(np.int64)
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
                "value": values[valid].reshape(-1)}
    values = np.concatenate([part[4] for part in parts], axis=1)              # (steps, Q)
    n = len(steps)
    return {"step": np.repeat(steps, len(quantity)), "sample": np.full(n * len(quantity), -1),
            "quantity": np.tile(quantity, n), "layer": np.tile(layer, n), "row": np.tile(row, n),
            "col": np.tile(col, n), "meta": np.tile(meta, n), "value": values.reshape(-1)}


def _step_table(trace, sample_parts, total_parts, steps):
    """The rows of steps `steps` (a slice): each step's sample rows, then its total rows."""
    numbers = np.arange(trace.steps)[steps]
    samples = _stack([(q, l, r, c, v[steps]) for q, l, r, c, v in sample_parts], numbers, True, trace.sample_ids[steps])
    totals = _stack([(q, l, r, c, v[steps]) for q, l, r, c, v in total_parts], numbers, False)
    # interleave: step t's sample rows, then its total rows (a stable sort on the step number)
    order = np.argsort(np.concatenate([samples["step"], totals["step"]]), kind="stable")
    return {name: np.concatenate([samples[name], totals[name]])[order] for name in samples}


def _csv_text(table):
    """The CSV lines of a table of column arrays, built with C-level loops: "step,sample," once
    per run of rows that share them, "quantity,layer,row,col," from the table's `meta`, the value
    with repr; empty fields for -1; CRLF line ends."""
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
    pieces[3::4] = "\r\n"
    return "".join(pieces.tolist())


def _matrix_rows(step, sample, name, layer, matrix):
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            yield step, sample, name, layer, i, j, value
