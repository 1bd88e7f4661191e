"""What the engine hands from layer to layer and keeps per layer of one pass: the Signal a layer
reads (rows, or a sequence) and the LayerPass of its values; the activation of a row layer."""
from dataclasses import dataclass, field

import numpy as np

from tracer.maths import activations
from tracer.maths.ieee import propagate_nonfinite


@dataclass
class Signal:
    """What a layer hands to the layer above: `rows`, the array a row layer reads as a⁽ˡ⁻¹⁾ (B × width;
    (B·time) × width for the dense layers above a recurrent one when the targets are per time step,
    `per_time`), and `sequence`, what a recurrent layer reads (B × time × width: the data, or the
    hidden states of the recurrent layer below; None above the recurrent layers). Row i of a stack of
    K perturbed copies of the batch (gradcheck) is sample i mod B of copy i // B."""

    rows: np.ndarray
    sequence: np.ndarray | None = None
    per_time: bool = False


@dataclass
class LayerPass:
    """One layer's forward and backward values over a batch (forward_pass fills the forward ones,
    backward_pass the rest): u, h = f(u), slope = f'(u), a (the layer's output; a recurrent layer's
    is h at the last time step, its u, h, slope and delta None: they live in its record per time
    step), record (the kind's own values {key: array}), below (the Signal it read), up (the Signal
    it hands up), e = ∂E/∂a arriving from above (None on the output layer) and δ = ∂E/∂u."""

    below: Signal
    up: Signal
    a: np.ndarray
    record: dict = field(default_factory=dict)
    u: np.ndarray | None = None
    h: np.ndarray | None = None
    slope: np.ndarray | None = None
    e: np.ndarray | None = None
    delta: np.ndarray | None = None


def activate(layer, u, slopes=True):
    """(h = f(u), f'(u) or None) of the layer's activation (softmax over the units of a row);
    a non-finite u gives NaN (ieee.propagate_nonfinite)."""
    definition = activations.get(layer.activation)
    axis = None if definition.elementwise else -1
    h = propagate_nonfinite(definition.forward(u, layer.activation_params), u, axis=axis)
    if not slopes:
        return h, None
    return h, propagate_nonfinite(definition.slope(u, h, layer.activation_params), u, h)


def sum_over_time(per_time):
    """Σ_t per_time[:, t], left to right from t = 0 (axis 1 is time)."""
    total = per_time[:, 0]
    for t in range(1, per_time.shape[1]):
        total = total + per_time[:, t]
    return total
