"""The declarative table of a run's recorded quantities: ONE list of `Field`s, in the CSV's order,
that drives the Trace's allocation, recording, windows, CSV rows and its accessor, and the size
guard's byte count (scenario.py reads `bytes_needed` from here, below the Trace).

A field is one quantity of one layer (or of the run): where it is kept, its shape, the group of
CSV rows it belongs to and how its index becomes the CSV's row/col:

  group "sample"  one value set per step and batch slot: array (T, B, *shape)
        "total"   one value set per step:                 array (T, *shape), or (T+1, *shape) for
                  the parameters W, b (the value used at step t; [T] = the final value)
        "once"    the optimiser state before the first step: array (*shape)
  source "pass"   filled from the engine's Pass of the step (per sample; the layer kinds' records)
         "step"   filled from the step's batch totals (grad_W, grad_b, update_W, update_b, loss)
         "engine" written by the engine itself (parameters, lr, optimiser state, clipping)
  index  "unit"   CSV row j over the flattened value (col empty)
         "matrix" CSV row i, col j (the W-like parameters of a dense layer)
         "scalar" CSV row and col empty
         "time-unit"   recurrent layers: shape (time, n), CSV time t, row j (col empty)
         "time-matrix" recurrent layers: shape (time, n, m), CSV time t, row i, col j

Time (issue 12): the quantities of recurrent layers have a time index, the first axis of their
shape: Trace.values keys index them (time, unit) or (time, i, j): ("h", 1, (t, j)),
("grad_W_time", 1, (t, i, j)). With targets per time step (samples × time × outputs, many-to-many)
the dense layers after the recurrent ones run at every time step: their u, a, slope, delta (h, e)
and the loss's dE_da are kept per (time, unit) too (index "time-unit", keys (name, l, (t, j))),
their grad_W, grad_b per sample are sums over time, and the targets read ("t", 0, (t, k)); a
sample's loss is the sum over time of the loss at each time step (the per-time losses are not kept). The per-time-step gradient contributions are the fields
grad_W_time, grad_b_time, grad_Wh_time, grad_bh_time (keys), written to the CSV as grad_W, ...
with their time; every other quantity has no time index (its CSV time is empty).

Parameters: each layer kind declares its stored parameters (LayerKind.stored_params: W, b; for
recurrent layers W, b, Wh, bh) and their shapes (param_shapes); every parameter-shaped quantity
(the parameter, grad_, update_, the optimiser's state m_, v_, ...) is recorded for each, in that
order: dense layers keep exactly W, grad_W, update_W, b, grad_b, update_b.

A field marked `derived` is not kept: the per-sample grad_W, grad_b of the kinds that derive them
(LayerKind.derives_sample_gradients) are computed from a⁽ˡ⁻¹⁾ (x̂) and δ when read (trace.py's
DerivedGradient, Trace.values); they keep their place in the CSV and count no bytes.

The layer kinds declare their own quantities (LayerKind.records: u, a, slope, delta and h, e with a
residual skip; xhat, dxhat, bn_mean, ... of the normalisation layers); the parameter-shaped
quantities take the kind's parameter names in the CSV (W → gamma, grad_b → grad_beta).
"""
from dataclasses import dataclass

import numpy as np

from tracer import layers
from tracer.maths import losses, optim
from tracer.layers.base import E, H, U, A, SLOPE, DELTA

MAX_BYTES = 2 * 2**30   # the cap on a run's recorded scalars (README: "Bad input"), checked at load time
COMMON_STORES = {U.name: "u", A.name: "a", SLOPE.name: "slope", DELTA.name: "delta", H.name: "h", E.name: "error"}
PARAMETER_TOTALS = ("W", "grad_W", "update_W", "b", "grad_b", "update_b")   # of a dense layer, in order


@dataclass(frozen=True)
class Field:
    """One recorded quantity of one layer (layer None: of the run)."""

    name: str           # the quantity's name: a CSV name (u, e, xhat, bn_mean, loss, ...) or, for the
                        # parameter-shaped ones, its W/b form (W, grad_b, m_W, ...)
    store: str          # the Trace's store (attribute) that holds it: u, error, grad_W_sample, norm, ...
    group: str          # "sample", "total" or "once" (see the module docstring)
    layer: int | None   # numbered from 1
    shape: tuple        # the shape of one step's (and sample's) value
    csv: str | None     # the CSV quantity name; None: kept (for the workbook, diagnosis), not written
    index: str = "unit"     # "unit", "matrix" or "scalar": how the CSV numbers its values
    source: str = "pass"    # "pass", "step" or "engine"
    key: str = ""           # the name in the Pass or in the kind's record dict (default: name)
    final: bool = False     # kept for steps 0..T (a parameter: [T] is its value after the run)
    derived: bool = False   # not kept: derived on demand from other fields (the per-sample gradients
                            # of kinds that derive them, LayerKind.derives_sample_gradients)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def array_shape(self, steps, batch):
        """The shape of the array holding the field for `steps` steps of `batch` slots."""
        if self.group == "once":
            return self.shape
        if self.group == "sample":
            return (steps, batch) + self.shape
        return (steps + self.final,) + self.shape

    def rows_cols(self):
        """The CSV's row and col numbers of the flattened value (-1 = empty)."""
        if self.index == "scalar":
            return np.array([-1]), None
        if self.index == "matrix":
            return np.divmod(np.arange(self.size), self.shape[1])
        if self.index == "time-unit":
            return np.arange(self.size) % self.shape[1], None
        if self.index == "time-matrix":
            return np.divmod(np.arange(self.size) % (self.shape[1] * self.shape[2]), self.shape[2])
        return np.arange(self.size), None

    def times(self):
        """The CSV's time of each flattened value: the time step, or -1 (empty) without a time index."""
        if self.index.startswith("time-"):
            return np.arange(self.size) // (self.size // self.shape[0])
        return np.full(self.rows_cols()[0].size, -1)


def fields(scenario):
    """The run's fields: the "sample" group in the order of one sample's CSV rows, then the "total"
    group in the order of a step's total rows, then the "once" fields; fields not written to the
    CSV (csv None) sit beside them."""
    return sample_fields(scenario) + total_fields(scenario) + once_fields(scenario)


def _param(name, store, group, l, shape, kind, source, derived=False):
    """A parameter-shaped field: CSV name by the kind (gamma, grad_beta, ...), matrix rows on dense W."""
    csv = kind.param_quantity(name)
    index = "matrix" if len(shape) == 2 and csv == name else "unit"
    return Field(name, store, group, l, shape, csv, index, source, final=name in kind.stored_params, derived=derived)


def parameter_shapes(scenario):
    """Per layer {stored parameter name: shape}, as each kind declares them (W, b; W, b, Wh, bh)."""
    out = []
    for fan_in, layer in zip(scenario.widths[:-1], scenario.layers):
        kind = layers.of(layer)
        out.append(dict(zip(kind.stored_params, kind.param_shapes(fan_in, layer.units))))
    return out


def parameter_names(scenario):
    """Every stored parameter name of the scenario's layers, in order of first appearance (W, b, Wh, bh)."""
    return tuple(dict.fromkeys(name for layer in scenario.layers for name in layers.of(layer).stored_params))


def _time_field(q, l, layer, scenario, shapes):
    """The field of a recurrent layer's quantity with a time index."""
    steps = scenario.time_steps
    if q.per == "sample-time-unit":
        return Field(q.key, "norm", "sample", l, (steps, layer.units), q.name, "time-unit", key=q.key)
    shape = (steps,) + shapes[q.param]
    return Field(q.key, "norm", "sample", l, shape, q.name, "time-matrix" if len(shape) == 3 else "time-unit", key=q.key)


def per_time(scenario, kind):
    """True for the (dense) layers after the recurrent ones when the targets are per time step: their
    per-sample quantities are kept per (time, unit), and the loss's ∂E/∂a per (time, output)."""
    return kind.runs_per_time(scenario)


def derives_sample_gradients(scenario, kind):
    """Whether the per-sample gradients of a layer of this kind are derived when read, not kept: the
    kinds that derive them (LayerKind.derives_sample_gradients), except dense layers run at every
    time step (per_time: their per-sample gradients are sums over time, recorded)."""
    return kind.derives_sample_gradients and not per_time(scenario, kind)


def sample_fields(scenario):
    out, L = [], len(scenario.layers)
    shapes = parameter_shapes(scenario)
    for l, layer in enumerate(scenario.layers, start=1):
        kind = layers.of(layer)
        declared = [q for q in kind.records(layer) if q.per in ("sample-unit", "sample", "sample-time-unit",
                                                                  "sample-time-param")]
        for q in declared:
            if q.per.startswith("sample-time"):
                out.append(_time_field(q, l, layer, scenario, shapes[l - 1]))
                continue
            shape, index = ((layer.units,), "unit") if q.per == "sample-unit" else ((), "scalar")
            if per_time(scenario, kind):
                shape, index = (scenario.time_steps,) + shape, "time-unit"
            store = COMMON_STORES[q.name] if q.common else "norm"
            out.append(Field(q.name, store, "sample", l, shape, q.name, index, key=q.key))
        written = {q.name for q in declared}
        shape = ((scenario.time_steps,) if per_time(scenario, kind) else ()) + (layer.units,)
        out += [Field(q.name, COMMON_STORES[q.name], "sample", l, shape, None, key=q.key)
                for q in (U, A, SLOPE, DELTA, H, E) if q.name not in written]
    if losses.LOSSES[scenario.loss].records_output_error:
        if scenario.per_time_targets:
            out.append(Field("dE_da", "output_error", "sample", L, (scenario.time_steps, scenario.widths[-1]), "dE_da",
                             "time-unit", key="output_error"))
        else:
            out.append(Field("dE_da", "output_error", "sample", L, (scenario.widths[-1],), "dE_da", key="output_error"))
    for l, layer in enumerate(scenario.layers, start=1):
        kind = layers.of(layer)
        derived = derives_sample_gradients(scenario, kind)
        for name in kind.stored_params:
            out.append(_param(f"grad_{name}", f"grad_{name}_sample", "sample", l, shapes[l - 1][name], kind, "pass",
                              derived))
    out.append(Field("loss", "sample_loss", "sample", None, (), "loss", "scalar", key="sample_loss"))
    return out


def total_fields(scenario):
    out = []
    shapes = parameter_shapes(scenario)
    for l, layer in enumerate(scenario.layers, start=1):
        kind = layers.of(layer)
        for param in kind.stored_params:
            for name in (param, f"grad_{param}", f"update_{param}"):
                out.append(_param(name, name, "total", l, shapes[l - 1][param], kind, "engine" if name == param else "step"))
        out += [Field(q.name, "norm", "total", l, (layer.units,), q.name, key=q.key)
                for q in kind.records(layer) if q.per == "step-unit"]
    scalar = lambda name, source: Field(name, name, "total", None, (), name, "scalar", source)  # noqa: E731
    out += [scalar("loss", "step"), scalar("lr", "engine")]
    for name in optim.OPTIMIZERS[scenario.optimizer].state:
        for which in parameter_names(scenario):
            for l, layer in enumerate(scenario.layers, start=1):
                kind = layers.of(layer)
                if which not in kind.stored_params:
                    continue
                field = _param(f"{name}_{which}", "state", "total", l, shapes[l - 1][which], kind, "engine")
                if which in kind.bias_params and not layer.train_bias:   # a frozen bias has no optimiser state to show
                    field = Field(field.name, "state", "total", l, field.shape, None, source="engine")
                out.append(field)
    if scenario.clip_norm is not None:
        out += [scalar("grad_norm", "engine"), scalar("clip_factor", "engine")]
    return out


def once_fields(scenario):
    """The optimiser state before the first step (zeros; a window's is the state before its first step)."""
    shapes = parameter_shapes(scenario)
    return [Field(f"{name}_{which}", "initial_state", "once", l, shapes[l - 1][which], None, source="engine")
            for name in optim.OPTIMIZERS[scenario.optimizer].state for which in parameter_names(scenario)
            for l in range(1, len(scenario.layers) + 1) if which in shapes[l - 1]]


def bytes_needed(scenario, steps, size):
    """Bytes the Trace of `steps` steps of `size` samples takes (8 per recorded scalar, and the batch
    schedule's sample ids; derived fields take none), from the table alone, without allocating."""
    total = steps * size    # the sample ids
    for field in fields(scenario):
        if not field.derived:
            total += int(np.prod(field.array_shape(steps, size), dtype=object))
    return 8 * total
