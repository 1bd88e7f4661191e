"""from_torch: a PyTorch model, its data, loss and optimiser as a tracer Scenario.

The model is read, never run: its parts (bridges.pytorch.graph) become the scenario's [[layers]]
with the model's current weights as explicit values (bridges.pytorch.layers, .recurrent), the loss
its [loss] (.losses), the optimiser's hyper-parameters its [optimizer] (.optimizers), and the dict
goes through the same loader as a TOML file (`scenario.from_dict`).

Training: `steps` updates on batches of `batch` samples (None: every sample) taken in data order,
the way `for step in range(steps): x[(step % per_epoch) * batch:][:batch]` walks the data.

dtype: the trace is float64. A model in another floating dtype (float32, ...) is converted to
float64 for the trace; the scenario says so (`scenario.conversion`, a Conversion: dtype, the
relative difference to expect, notes; and a sentence in its description) — a float32 model agrees
with its trace to about float32's machine epsilon (1.2e-7) per step, not to float64's 1e-16.
Train the model in float64 (`model.double()`) to compare it number for number.
"""
from tracer.bridges.pytorch import graph, layers as layer_tables, losses, optimizers
from tracer.bridges.pytorch.common import SOURCE, Conversion, as_array, torch_module
from tracer.training import scenario as scenario_module


def from_torch(model, inputs, targets, optimizer=None, *, loss, steps=10, batch=None, name="torch-model",
               description=None, reduction=None):
    """The Scenario that trains `model` on (inputs, targets) with `optimizer` and `loss` as PyTorch
    would (bridges.pytorch's docstring lists what maps to what). `loss`: a torch loss module, or
    tracer's loss name ("half_sse", ...) with its `reduction` ("sum" by default, or "mean").
    Raises ModelError for anything tracer cannot express, ScenarioError for what the loader
    refuses (a momentum of 1, NaN data, ...). The result's `conversion` says what was changed."""
    return convert(model, inputs, targets, optimizer, loss=loss, steps=steps, batch=batch, name=name,
                   description=description, reduction=reduction)


def convert(model, inputs, targets, optimizer=None, *, loss, steps, batch, name, description, reduction,
            fresh=True):
    """from_torch, with `fresh=False` accepting an optimiser whose state the caller knows is empty
    in effect (the watch of a running loop with plain SGD)."""
    torch = torch_module()
    conversion = Conversion()
    parts = graph.parts_of(model, torch)
    parts = layer_tables.without_dropout(parts, torch, conversion.notes)
    parts, x = layer_tables.flattened_inputs(parts, as_array(inputs, "inputs", torch), torch)
    layers, described, per_time = layer_tables.layers_of(parts, x, torch, model, conversion.notes)
    loss_table, t = losses.loss_and_targets(loss, reduction, layers, targets, x.shape[0], per_time, torch)
    optimizer_table = optimizers.table(optimizer, model, layers, torch, fresh=fresh)
    _dtype(model, inputs, torch, conversion)
    loss_words = loss if isinstance(loss, str) else type(loss).__name__
    words = f"From PyTorch: {' -> '.join(described)}; {loss_words}; {optimizers.words(optimizer_table)}."
    raw = {
        "name": name,
        "description": description or " ".join([words, *conversion.notes]),
        "seed": 0,
        "steps": steps,
        "data": {"inputs": x.tolist(), "targets": t.tolist()},
        "layers": [layer["table"] for layer in layers],
        "loss": loss_table,
        "optimizer": optimizer_table,
        "training": {"batch": "full" if batch is None else batch},
    }
    scenario = scenario_module.from_dict(raw, source=SOURCE)
    scenario.conversion = conversion
    return scenario


def _dtype(model, inputs, torch, conversion):
    """Notes a model (or inputs) in a floating dtype other than float64, and the difference to expect."""
    tensors = list(model.parameters()) + ([inputs] if isinstance(inputs, torch.Tensor) else [])
    narrower = sorted({str(t.dtype).replace("torch.", "") for t in tensors
                       if t.is_floating_point() and t.dtype != torch.float64})
    if not narrower:
        return
    epsilon = max(torch.finfo(getattr(torch, dtype)).eps for dtype in narrower)
    conversion.dtype = narrower[0] if len(narrower) == 1 else "/".join(narrower)
    conversion.expected_difference = epsilon
    conversion.notes.append(f"The model is {conversion.dtype}; the trace runs in float64, so it agrees with the "
                            f"model's own numbers to about {epsilon:.1e} relative per step ({conversion.dtype}'s "
                            "precision), not to float64's 1e-16: train with model.double() to compare exactly.")
