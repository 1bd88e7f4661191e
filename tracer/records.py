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

A field marked `derived` is not kept: the per-sample grad_W, grad_b of the kinds that derive them
(LayerKind.derives_sample_gradients) are computed from a⁽ˡ⁻¹⁾ (x̂) and δ when read (trace.py's
DerivedGradient, Trace.values); they keep their place in the CSV and count no bytes.

The layer kinds declare their own quantities (LayerKind.records: u, a, slope, delta and h, e with a
residual skip; xhat, dxhat, bn_mean, ... of the normalisation layers); the parameter-shaped
quantities take the kind's parameter names in the CSV (W → gamma, grad_b → grad_beta).
"""
from dataclasses import dataclass

import numpy as np

from . import layers, losses, optim
from .layers.base import E, H, U, A, SLOPE, DELTA

MAX_BYTES = 2 * 2**30   # the cap on a run's recorded scalars (README: "Bad input"), checked at load time
COMMON_STORES = {U.name: "u", A.name: "a", SLOPE.name: "slope", DELTA.name: "delta", H.name: "h", E.name: "error"}
PARAMETER_TOTALS = ("W", "grad_W", "update_W", "b", "grad_b", "update_b")


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
        return np.arange(self.size), None


def fields(scenario):
    """The run's fields: the "sample" group in the order of one sample's CSV rows, then the "total"
    group in the order of a step's total rows, then the "once" fields; fields not written to the
    CSV (csv None) sit beside them."""
    return sample_fields(scenario) + total_fields(scenario) + once_fields(scenario)


def _param(name, store, group, l, shape, kind, source, derived=False):
    """A parameter-shaped field: CSV name by the kind (gamma, grad_beta, ...), matrix rows on dense W."""
    csv = kind.param_quantity(name)
    index = "matrix" if len(shape) == 2 and csv == name else "unit"
    return Field(name, store, group, l, shape, csv, index, source, final=name in ("W", "b"), derived=derived)


def parameter_shapes(scenario):
    """Per layer the (W-like, b-like) stored shapes, as each kind declares them."""
    return [layers.of(layer).param_shapes(fan_in, layer.units)
            for fan_in, layer in zip(scenario.widths[:-1], scenario.layers)]


def sample_fields(scenario):
    out, L = [], len(scenario.layers)
    shapes = parameter_shapes(scenario)
    for l, layer in enumerate(scenario.layers, start=1):
        kind = layers.of(layer)
        declared = [q for q in kind.records(layer) if q.per in ("sample-unit", "sample")]
        for q in declared:
            shape, index = ((layer.units,), "unit") if q.per == "sample-unit" else ((), "scalar")
            store = COMMON_STORES[q.name] if q.common else "norm"
            out.append(Field(q.name, store, "sample", l, shape, q.name, index, key=q.key))
        written = {q.name for q in declared}
        out += [Field(q.name, COMMON_STORES[q.name], "sample", l, (layer.units,), None, key=q.key)
                for q in (U, A, SLOPE, DELTA, H, E) if q.name not in written]
    if losses.LOSSES[scenario.loss].records_output_error:
        out.append(Field("dE_da", "output_error", "sample", L, (scenario.widths[-1],), "dE_da", key="output_error"))
    for l, layer in enumerate(scenario.layers, start=1):
        kind = layers.of(layer)
        derived = kind.derives_sample_gradients
        out.append(_param("grad_W", "grad_W_sample", "sample", l, shapes[l - 1][0], kind, "pass", derived))
        out.append(_param("grad_b", "grad_b_sample", "sample", l, shapes[l - 1][1], kind, "pass", derived))
    out.append(Field("loss", "sample_loss", "sample", None, (), "loss", "scalar", key="sample_loss"))
    return out


def total_fields(scenario):
    out = []
    shapes = parameter_shapes(scenario)
    for l, layer in enumerate(scenario.layers, start=1):
        kind = layers.of(layer)
        for name in PARAMETER_TOTALS:
            shape = shapes[l - 1][0] if name.endswith("W") else shapes[l - 1][1]
            out.append(_param(name, name, "total", l, shape, kind, "engine" if name in ("W", "b") else "step"))
        out += [Field(q.name, "norm", "total", l, (layer.units,), q.name, key=q.key)
                for q in kind.records(layer) if q.per == "step-unit"]
    scalar = lambda name, source: Field(name, name, "total", None, (), name, "scalar", source)  # noqa: E731
    out += [scalar("loss", "step"), scalar("lr", "engine")]
    for name in optim.OPTIMIZERS[scenario.optimizer].state:
        for which in ("W", "b"):
            for l, layer in enumerate(scenario.layers, start=1):
                field = _param(f"{name}_{which}", "state", "total", l, shapes[l - 1][which == "b"], layers.of(layer), "engine")
                if which == "b" and not layer.train_bias:   # a frozen bias has no optimiser state to show
                    field = Field(field.name, "state", "total", l, field.shape, None, source="engine")
                out.append(field)
    if scenario.clip_norm is not None:
        out += [scalar("grad_norm", "engine"), scalar("clip_factor", "engine")]
    return out


def once_fields(scenario):
    """The optimiser state before the first step (zeros; a window's is the state before its first step)."""
    shapes = parameter_shapes(scenario)
    return [Field(f"{name}_{which}", "initial_state", "once", l, shapes[l - 1][which == "b"], None, source="engine")
            for name in optim.OPTIMIZERS[scenario.optimizer].state for which in ("W", "b")
            for l in range(1, len(scenario.layers) + 1)]


def bytes_needed(scenario, steps, size):
    """Bytes the Trace of `steps` steps of `size` samples takes (8 per recorded scalar, and the batch
    schedule's sample ids; derived fields take none), from the table alone, without allocating."""
    total = steps * size    # the sample ids
    for field in fields(scenario):
        if not field.derived:
            total += int(np.prod(field.array_shape(steps, size), dtype=object))
    return 8 * total
