"""The loss as tracer's [loss] table, and the targets as tracer reads them.

A torch loss module (tracer's per-sample loss over K outputs, then the batch reduction):
  nn.MSELoss()                      mean over B·K elements = mse with reduction mean
  nn.MSELoss(reduction="sum")       sse with reduction sum
  nn.BCELoss(), a Sigmoid output    bce (mean: only for K = 1, PyTorch divides by B·K, tracer by B)
  nn.BCEWithLogitsLoss()            bce, the model's last layer given a sigmoid (the trace's output
                                    a is then σ(logits); u are the model's logits); K = 1 for mean
  nn.CrossEntropyLoss()             softmax_ce, the last layer given a softmax (a = probabilities,
                                    u = logits); class-index targets become one-hot, probability
                                    targets stay; label_smoothing ε: t ← (1 − ε)·t + ε/K, as PyTorch
  nn.NLLLoss() after nn.LogSoftmax  softmax_ce (LogSoftmax becomes the softmax output)
Anything else — another module, a loss weight, reduction="none", a model ending in nn.Softmax (whose
cross-entropy would apply a second softmax) — raises ModelError naming the module.

Or tracer's own loss name (loss="half_sse", "sse", "mse", "bce", "softmax_ce"; `reduction` "sum",
tracer's default, or "mean"): the loss as tracer defines it on the model's output; softmax_ce gives
the last layer a softmax (the model ends in its logits, or in Softmax/LogSoftmax), bce a sigmoid
where the model ends in its logits; class-index targets become one-hot for softmax_ce.

Targets at every time step (a recurrent model read at every step): samples × time × outputs, and a
sample's loss is the SUM over time, so a torch loss must reduce by "sum" (its mean would also divide
by the number of time steps); class indices per step are refused (torch's cross-entropy wants the
classes on axis 1).
"""
import numpy as np

from tracer.bridges.pytorch.common import ModelError, as_array
from tracer.maths import losses as tracer_losses


def loss_and_targets(loss, reduction, layers, targets, samples, per_time, torch):
    """([loss] table, targets as tracer reads them); sets the output layer's activation where the loss
    implies it (logits losses: sigmoid, softmax)."""
    output = layers[-1]
    units = output["table"]["units"]
    last = output["activation_module"]
    if type(last) is torch.nn.Identity:
        last = None
    if isinstance(loss, str):
        name, reduction = _named(loss, reduction, output, last, torch)
        one_hot = name == "softmax_ce"
    else:
        if reduction is not None:
            raise ModelError(f"loss {type(loss).__name__}", "reduction= is for a loss named as tracer names it; a torch "
                             "loss module carries its own")
        name, reduction = _module(loss, output, last, units, per_time, torch)
        one_hot = type(loss) in (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)
    where = f"loss {loss}" if isinstance(loss, str) else f"loss {type(loss).__name__}"
    t = _targets(targets, samples, units, per_time, one_hot, where, torch)
    if one_hot and not isinstance(loss, str):
        t = _smoothed(loss, t, units)
    return {"name": name, "reduction": reduction}, t


def _named(name, reduction, output, last, torch):
    """A tracer loss name: (name, reduction), the output activation it needs."""
    if name not in tracer_losses.LOSSES:
        raise ModelError(f"loss {name!r}", f"is not one of tracer's losses ({', '.join(tracer_losses.LOSSES)}) "
                         "nor a torch loss module")
    reduction = "sum" if reduction is None else reduction
    if reduction not in ("sum", "mean"):
        raise ModelError(f"loss {name}", f"reduction={reduction!r}: tracer reduces the batch by 'sum' or 'mean'")
    nn = torch.nn
    table = output["table"]
    if name == "softmax_ce":
        table["activation"] = "softmax"
    elif type(last) in (nn.Softmax, nn.LogSoftmax):
        raise ModelError(f"loss {name}", f"the model ends in {type(last).__name__}, which tracer trains only with "
                         "softmax_ce")
    elif name == "bce" and last is None:
        table["activation"] = "sigmoid"    # the model's logits; tracer's bce reads σ(u)
    elif name == "bce" and table["activation"] != "sigmoid":
        raise ModelError(f"loss {name}", f"takes probabilities: the model must end in nn.Sigmoid or its logits, "
                         f"not {type(last).__name__}")
    return name, reduction


def _module(loss, output, last, units, per_time, torch):
    """A torch loss module: (tracer name, reduction); sets the output activation it implies."""
    nn = torch.nn
    kind = type(loss)
    where = f"loss {kind.__name__}"
    if kind not in (nn.MSELoss, nn.BCELoss, nn.BCEWithLogitsLoss, nn.CrossEntropyLoss, nn.NLLLoss):
        raise ModelError(where, "is not supported (tracer maps MSELoss, BCELoss, BCEWithLogitsLoss, "
                         "CrossEntropyLoss and NLLLoss after LogSoftmax, or takes tracer's own loss names)")
    if loss.reduction not in ("mean", "sum"):
        raise ModelError(where, f"reduction={loss.reduction!r}: tracer reduces the batch by 'mean' or 'sum'")
    for attribute in ("weight", "pos_weight"):
        if getattr(loss, attribute, None) is not None:
            raise ModelError(where, f"{attribute}: tracer's losses weigh every output and sample alike")
    if per_time and loss.reduction == "mean":
        raise ModelError(where, "reduction='mean' over every time step also divides by the number of steps; tracer "
                         "sums a sample's loss over time: use reduction='sum'")
    last_name = type(last).__name__ if last is not None else "no activation"
    if kind in (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss):
        wanted = nn.LogSoftmax if kind is nn.NLLLoss else None
        if (type(last) if last is not None else None) is not wanted:
            needs = "end in nn.LogSoftmax" if wanted else "end in a layer without an activation (the logits)"
            raise ModelError(where, f"takes {'log-probabilities' if wanted else 'logits'}: the model must {needs}, "
                             f"not {last_name}" + (" (a second softmax would be applied)" if type(last) is nn.Softmax else ""))
        output["table"]["activation"] = "sigmoid" if kind is nn.BCEWithLogitsLoss else "softmax"
    elif type(last) in (nn.Softmax, nn.LogSoftmax):
        raise ModelError(output["activation_where"], f"a {last_name} output trains in tracer only with its cross-entropy: end "
                         "the model in Linear and use nn.CrossEntropyLoss")
    if kind is nn.BCELoss and output["table"]["activation"] != "sigmoid":
        raise ModelError(where, f"takes probabilities: the model must end in nn.Sigmoid, not {last_name}")
    if kind in (nn.BCELoss, nn.BCEWithLogitsLoss) and loss.reduction == "mean" and units > 1:
        raise ModelError(where, f"reduction='mean' over {units} outputs divides by batch × {units}; tracer's bce "
                         "sums a sample's outputs and divides by the batch only: use reduction='sum', or one output")
    if kind is nn.MSELoss:
        return ("mse" if loss.reduction == "mean" else "sse"), loss.reduction
    return ("bce" if kind in (nn.BCELoss, nn.BCEWithLogitsLoss) else "softmax_ce"), loss.reduction


def _targets(targets, samples, units, per_time, one_hot, where, torch):
    """Targets (samples, units), or (samples, time, units) at every step; class indices one-hot."""
    t = as_array(targets, "targets", torch)
    if one_hot and np.issubdtype(t.dtype, np.integer) and t.shape == (samples,) and not per_time:
        outside = np.flatnonzero((t < 0) | (t >= units))
        if outside.size:
            value = int(t[outside[0]])
            ignored = " (ignore_index: tracer trains on every sample)" if value == -100 else ""
            raise ModelError("targets", f"sample {int(outside[0])}: class {value} is not one of 0..{units - 1}{ignored}")
        return np.eye(units)[t]
    shape_ok = t.ndim == (3 if per_time else 2) and t.shape[0] == samples and t.shape[-1] == units
    if one_hot and not (np.issubdtype(t.dtype, np.floating) and shape_ok and not per_time):
        accepted = f"class indices (an integer tensor of shape ({samples},)) or class probabilities of shape " \
                   f"({samples}, {units})"
        raise ModelError("targets", f"{where} takes {accepted}, not {t.dtype} of shape {tuple(t.shape)}")
    if not shape_ok:
        wanted = f"({samples}, time, {units})" if per_time else f"({samples}, {units})"
        hint = (" (pass targets.reshape(-1, 1); MSELoss would broadcast them to a batch × batch grid)"
                if t.shape == (samples,) and units == 1 else "")
        raise ModelError("targets", f"shape {t.shape} does not match the model's output {wanted}{hint}")
    return t.astype(float)


def _smoothed(loss, t, units):
    """Label smoothing ε of CrossEntropyLoss: t ← (1 − ε)·t + ε/K."""
    smoothing = float(getattr(loss, "label_smoothing", 0.0))
    return (1.0 - smoothing) * t + smoothing / units if smoothing else t
