"""The model's own training (loss.backward(), optimizer.step()) against the trace of its scenario.

`parity(model, x, t, optimizer, loss_fn, mapping, ...)` converts the model with tracer.from_torch,
runs the trace, trains the model itself for the same steps on the same batches (data order), and
returns the largest relative differences of the losses, the batch gradients and the parameters after
the last step. `mapping` says which torch parameter is which tracer parameter, written out by each
test from PyTorch's documentation (not from the bridge): [(parameter, layer index, "W" | "b" | "Wh"
| "bh")]; a matrix is compared transposed (tracer's W is fan_in × units: weight.T).
"""
import math

import numpy as np
import torch

import tracer

# The tensors here are tiny: one thread is several times faster than two on a shared 2-core machine
# (as tests/torch_reference.py sets it for the same reason).
torch.set_num_threads(1)

TRACE_FIELDS = {"W": ("W", "grad_W"), "b": ("b", "grad_b"), "Wh": ("Wh", "grad_Wh"), "bh": ("bh", "grad_bh")}


def as_tracer(tensor):
    values = tensor.detach().double().numpy()
    return values.T if values.ndim == 2 else values


def relative_difference(ours, theirs, floor=0.0):
    """max |ours − theirs| / max(max |theirs|, floor)."""
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = max(np.max(np.abs(theirs), initial=0.0), floor)
    difference = np.max(np.abs(ours - theirs), initial=0.0)
    return difference / scale if scale else difference


def train_in_torch(model, x, t, optimizer, loss_fn, steps, batch):
    """Per step the loss and the gradients {parameter index: array}, then the final parameters."""
    size = len(x) if batch is None else batch
    per_epoch = math.ceil(len(x) / size)
    parameters = list(model.parameters())
    losses, gradients = [], []
    for step in range(steps):
        start = (step % per_epoch) * size
        optimizer.zero_grad()
        value = loss_fn(model(x[start:start + size]), t[start:start + size])
        value.backward()
        losses.append(value.item())
        gradients.append({i: p.grad.detach().clone() for i, p in enumerate(parameters) if p.grad is not None})
        optimizer.step()
    return losses, gradients, [p.detach().clone() for p in parameters]


def compare(trace, losses, gradients, final, mapping, parameters, steps):
    """{"loss", "gradient", "parameter"}: the largest relative differences between trace and torch."""
    index_of = {id(p): i for i, p in enumerate(parameters)}
    worst = {"gradient": 0.0, "loss": 0.0, "parameter": 0.0}
    for step in range(steps):
        worst["loss"] = max(worst["loss"], relative_difference(trace.loss[step], losses[step]))
        floor = 1e-6 * max(float(g.abs().max()) for g in gradients[step].values())
        for parameter, layer, name in mapping:
            ours = getattr(trace, TRACE_FIELDS[name][1])[layer][step]
            theirs = as_tracer(gradients[step][index_of[id(parameter)]])
            worst["gradient"] = max(worst["gradient"], relative_difference(ours, theirs, floor))
    for parameter, layer, name in mapping:
        ours = getattr(trace, TRACE_FIELDS[name][0])[layer][steps]
        worst["parameter"] = max(worst["parameter"], relative_difference(ours, as_tracer(final[index_of[id(parameter)]])))
    return worst


def parity(model, x, t, optimizer, loss_fn, mapping, steps=3, batch=None, loss=None, **options):
    """Trace and torch side by side (module docstring). `loss`: what from_torch is given (default
    loss_fn; a tracer loss name where loss_fn is the user's own function of it)."""
    scenario = tracer.from_torch(model, x, t, optimizer, loss=loss_fn if loss is None else loss, steps=steps,
                                 batch=batch, **options)
    trace = tracer.run(scenario)
    losses, gradients, final = train_in_torch(model, x, t, optimizer, loss_fn, steps, batch)
    return compare(trace, losses, gradients, final, mapping, list(model.parameters()), steps)
