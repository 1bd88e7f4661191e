"""The optimiser as tracer's [optimizer] table (PyTorch's update rules are tracer's; one set of
hyper-parameters; every weight trained, a bias may be frozen):

  SGD(lr, weight_decay)                                  sgd
  SGD(momentum > 0, nesterov, weight_decay; dampening 0) momentum
  Adagrad(lr, eps, weight_decay; lr_decay 0, initial_accumulator_value 0)   adagrad
  RMSprop(lr, alpha, eps, weight_decay; momentum 0, not centered)          rmsprop
  Adam(lr, betas, eps, weight_decay; not amsgrad)        adam;  AdamW only with weight_decay = 0
None stands for torch.optim.SGD(model.parameters()) with PyTorch's defaults (lr 0.001). The state
must be fresh (tracer starts every optimiser from zero state), unless the caller has checked that
the optimiser keeps none (`fresh=False`: the watch of a loop, plain SGD).
"""
from tracer.bridges.pytorch.common import ModelError, is_tensor_number, number

def table(optimizer, model, layers, torch, fresh=True):
    """The [optimizer] table from a fresh torch optimiser; checks that it trains the model's weights."""
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters())
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ModelError("optimizer", f"must be a torch.optim optimiser, not {type(optimizer).__name__}")
    kind = type(optimizer)
    where = f"optimizer {kind.__name__}"
    if fresh and any(_stepped(state) for state in optimizer.state.values()):
        raise ModelError(where, "has already taken steps (its state is not empty); tracer starts every optimiser "
                         "from zero state: pass a new one")
    hyper = _one_group(optimizer, where)
    _trained(optimizer, layers, where)
    if hyper.get("maximize"):
        raise ModelError(where, "maximize=True: tracer descends the loss")
    lr = number(hyper["lr"])
    decay = number(hyper.get("weight_decay", 0.0))
    if kind is torch.optim.SGD:
        if hyper["momentum"] == 0:
            return {"name": "sgd", "lr": lr, "weight_decay": decay}
        if hyper["dampening"] != 0:
            raise ModelError(where, f"dampening={hyper['dampening']}: tracer's momentum is b = μ·b + g (dampening 0)")
        return {"name": "momentum", "lr": lr, "momentum": number(hyper["momentum"]), "nesterov": bool(hyper["nesterov"]),
                "weight_decay": decay}
    if kind is torch.optim.Adagrad:
        for key in ("lr_decay", "initial_accumulator_value"):
            if hyper[key] != 0:
                raise ModelError(where, f"{key}={hyper[key]}: tracer's adagrad has neither (0)")
        return {"name": "adagrad", "lr": lr, "eps": number(hyper["eps"]), "weight_decay": decay}
    if kind is torch.optim.RMSprop:
        if hyper["momentum"] != 0 or hyper["centered"]:
            raise ModelError(where, "momentum or centered=True: tracer's rmsprop is the plain one (momentum 0, not centered)")
        return {"name": "rmsprop", "lr": lr, "alpha": number(hyper["alpha"]), "eps": number(hyper["eps"]),
                "weight_decay": decay}
    if kind in (torch.optim.Adam, torch.optim.AdamW):
        if hyper["amsgrad"]:
            raise ModelError(where, "amsgrad=True: tracer's adam is the plain one")
        if decay and (kind is torch.optim.AdamW or hyper.get("decoupled_weight_decay")):
            raise ModelError(where, f"decoupled weight decay (θ ← θ − lr·{decay:g}·θ) is not tracer's weight_decay "
                             "(g ← g + wd·θ, torch.optim.Adam's): use Adam, or weight_decay=0")
        return {"name": "adam", "lr": lr, "betas": [number(b) for b in hyper["betas"]], "eps": number(hyper["eps"]),
                "weight_decay": decay}
    raise ModelError(where, "is not supported (tracer maps SGD, SGD with momentum, Adagrad, RMSprop, Adam)")


def _stepped(state):
    """Whether a parameter's optimiser state shows a step taken (Adagrad fills its state, step 0,
    on construction; SGD keeps a momentum buffer and no step count)."""
    if "step" in state:
        return float(state["step"]) > 0
    return any(value is not None for value in state.values())


def _one_group(optimizer, where):
    """The hyper-parameters, the same in every parameter group (tracer has one set)."""
    groups = [{key: value for key, value in group.items() if key not in ("params", "initial_lr")}
              for group in optimizer.param_groups]
    if any(_comparable(group) != _comparable(groups[0]) for group in groups[1:]):
        raise ModelError(where, "has parameter groups with different hyper-parameters; tracer has one set for every parameter")
    return groups[0]


def _comparable(group):
    return {key: (float(value) if is_tensor_number(value) else value) for key, value in group.items()}


def _trained(optimizer, layers, where):
    """Every weight (and γ) trained by the optimiser; a layer's biases may be frozen (all of them);
    nothing else given."""
    given = {id(p) for group in optimizer.param_groups for p in group["params"]}
    model_parameters = set()
    for layer in layers:
        model_parameters.update(id(p) for p in layer["weights"] + layer["biases"])
        if any(id(w) not in given or not w.requires_grad for w in layer["weights"]):
            raise ModelError(f"{layer['where']}", f"its weight is not trained by the {where.split()[-1]} optimiser "
                             "(tracer trains every weight; only a bias may be frozen)")
        frozen = [id(b) not in given or not b.requires_grad for b in layer["biases"]]
        if any(frozen) and not all(frozen):
            raise ModelError(f"{layer['where']}", "one of its biases is frozen and one trained; tracer trains or "
                             "freezes b and bh together")
        if any(frozen):
            layer["table"]["train_bias"] = False
    if given - model_parameters:
        raise ModelError(where, "also trains parameters that are not the model's")


def words(table):
    hyper = ", ".join(f"{key}={value}" for key, value in table.items() if key != "name")
    return f"{table['name']}({hyper})"
