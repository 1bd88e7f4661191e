"""Parity of the engine with torch.nn.LayerNorm (issue 11) and torch.nn.BatchNorm1d in float64.

A net Linear (identity) → norm → sigmoid | tanh → Linear with random explicit weights (seeded) is
trained 5 steps by `tracer.run` and by torch (tests/torch_reference.py, written from PyTorch's
documentation): the losses and the step-0 gradients agree, and so do the parameters after every
step, to 1e-9 relative, for every optimiser of tracer.maths.optim.OPTIMIZERS.

The layernorm cases skip while "layernorm" is not a known layer kind (it is being built); the
batchnorm cases run today and prove the comparison itself.
"""
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tracer  # noqa: E402
from tracer.maths import optim  # noqa: E402
from tracer.errors import ScenarioError  # noqa: E402

import torch_reference as ref  # noqa: E402

STEPS = 5
TOLERANCE = 1e-9
# Elementwise relative difference |a − b| / max(|a|, |b|, floor), the floor being 1e-12 of the
# largest magnitude of that parameter (or gradient) array: a component that cancels to ~0 in
# exact arithmetic is compared at the precision of its array, not at its own rounding noise.
FLOOR = 1e-12

# The base hyper-parameters of each optimiser; every name of tracer.maths.optim.OPTIMIZERS must be here
# (a new optimiser needs its torch.optim mapping in torch_reference.make_optimizer and a line here).
BASE_HYPER = {
    "sgd": {"lr": 0.5},
    "momentum": {"lr": 0.2, "momentum": 0.9},
    "adagrad": {"lr": 0.1},
    "rmsprop": {"lr": 0.01},
    "adam": {"lr": 0.05},
}

# Variants beyond the defaults: (id, optimiser, hyper, loss, reduction, training).
VARIANTS = [
    ("nesterov-wd", "momentum", {"lr": 0.1, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
     "half_sse", "sum", {}),
    ("sgd-wd-step-clipnorm", "sgd", {"lr": 0.5, "weight_decay": 0.02, "schedule": "step", "step_size": 2, "gamma": 0.5},
     "half_sse", "sum", {"clip_norm": 0.3}),
    ("rmsprop-alpha-exp-mse-mean", "rmsprop", {"lr": 0.02, "alpha": 0.9, "eps": 1e-6, "schedule": "exponential",
                                                "gamma": 0.9}, "mse", "mean", {}),
    ("adam-betas-wd-clipvalue-mean", "adam", {"lr": 0.05, "betas": [0.8, 0.99], "eps": 1e-7, "weight_decay": 0.05},
     "sse", "mean", {"clip_value": 0.05}),
    ("adagrad-bce", "adagrad", {"lr": 0.1, "eps": 1e-9}, "bce", "sum", {}),
    ("adam-softmax-ce", "adam", {"lr": 0.05}, "softmax_ce", "mean", {}),
    ("momentum-minibatches-of-2", "momentum", {"lr": 0.2}, "half_sse", "mean", {"batch": 2}),
]


def _scenario(norm_kind, activation, optimizer, hyper, loss="half_sse", reduction="sum", training=None, seed=0):
    """A scenario dict: 5 samples (3 mini-batches with an integer batch) × 3 features → Linear(3→4, identity) → norm(4) → activation →
    Linear(4→K) with random explicit weights drawn from `seed`."""
    rng = np.random.default_rng(1000 + seed)
    batch = (training or {}).get("batch", "full")
    samples, features, hidden = (5 if batch == "full" else 3 * batch), 3, 4
    outputs = 3 if loss == "softmax_ce" else 2
    inputs = rng.normal(size=(samples, features))
    if loss == "softmax_ce":
        targets = rng.dirichlet(np.ones(outputs), size=samples)
    else:
        targets = rng.uniform(0.05, 0.95, size=(samples, outputs))
    output_activation = {"bce": "sigmoid", "softmax_ce": "softmax"}.get(loss, "identity")
    # The bias of the Linear right below batchnorm has gradient exactly 0 (batchnorm removes any
    # shift): it is frozen, as README advises and PyTorch models do (bias=False before BatchNorm).
    train_bias_1 = norm_kind != "batchnorm"
    return {
        "name": f"{norm_kind}-torch-parity",
        "seed": 0,
        "steps": STEPS,
        "data": {"inputs": inputs.tolist(), "targets": targets.tolist()},
        "layers": [
            {"units": hidden, "activation": "identity", "init": "explicit",
             "weights": rng.uniform(-1, 1, (features, hidden)).tolist(),
             "bias": (rng.uniform(-0.5, 0.5, hidden) if train_bias_1 else np.zeros(hidden)).tolist(),
             "train_bias": train_bias_1},
            {"kind": norm_kind, "activation": activation, "eps": 1e-5},
            {"units": outputs, "activation": output_activation, "init": "explicit",
             "weights": rng.uniform(-1, 1, (hidden, outputs)).tolist(),
             "bias": rng.uniform(-0.5, 0.5, outputs).tolist()},
        ],
        "loss": {"name": loss, "reduction": reduction},
        "optimizer": {"name": optimizer, **hyper},
        "training": {"batch": "full", **(training or {})},
    }


@functools.cache
def _layernorm_missing():
    """Why the engine cannot load kind = "layernorm" yet, or None once it can: an unknown-kind
    error, or a registered kind whose parsing is still a stub (NotImplementedError). Any other
    error is a real failure and propagates."""
    try:
        tracer.from_dict(_scenario("layernorm", "sigmoid", "sgd", {"lr": 0.1}))
    except ScenarioError as error:
        if str(error.key).endswith(".kind") and "layernorm" in str(error.problem):
            return f'the engine does not know kind = "layernorm" yet ({error.problem})'
        raise
    except NotImplementedError:
        return 'kind = "layernorm" is registered but not implemented yet (NotImplementedError when loading)'
    return None


def _torch_hyper(hyper):
    """tracer's optimizer table as torch_reference's hyper (betas = [β1, β2] → beta1, beta2)."""
    out = {k: v for k, v in hyper.items() if k != "betas"}
    if "betas" in hyper:
        out["beta1"], out["beta2"] = hyper["betas"]
    return out


def _engine(raw):
    """The engine's run as {step: {name: array}} of parameters (0..STEPS), step-0 batch
    gradients {name: array} and the batch losses per step, read from the trace CSV's frame."""
    frame = tracer.run(tracer.from_dict(raw)).to_frame()
    batch = frame[frame["sample"].isna()]

    def arrays(rows):
        out = {}
        for (quantity, layer), group in rows.groupby(["quantity", "layer"]):
            r = group["row"].to_numpy(dtype=int)
            if group["col"].isna().all():
                values = np.zeros(r.max() + 1)
                values[r] = group["value"].to_numpy()
            else:
                c = group["col"].to_numpy(dtype=int)
                values = np.zeros((r.max() + 1, c.max() + 1))
                values[r, c] = group["value"].to_numpy()
            out[f"{quantity.removeprefix('grad_')}{layer}"] = values
        return out

    names = ["W", "b", "gamma", "beta"]
    params = {step: arrays(batch[(batch["step"] == step) & batch["quantity"].isin(names)]) for step in range(STEPS + 1)}
    grads = arrays(batch[(batch["step"] == 0) & batch["quantity"].isin([f"grad_{n}" for n in names])])
    losses = batch[batch["quantity"] == "loss"].sort_values("step")["value"].to_numpy()
    return params, grads, losses


def _reference(raw):
    training = raw["training"]
    return ref.train_torch(ref.spec_from_scenario(raw), raw["data"]["inputs"], raw["data"]["targets"],
                           raw["loss"]["name"], raw["loss"]["reduction"], raw["optimizer"]["name"],
                           _torch_hyper({k: v for k, v in raw["optimizer"].items() if k != "name"}), STEPS,
                           batch=None if training["batch"] == "full" else training["batch"],
                           clip_norm=training.get("clip_norm"), clip_value=training.get("clip_value"))


def _relative(engine, torch_value):
    a, b = np.asarray(engine, np.float64), np.asarray(torch_value, np.float64)
    floor = FLOOR * max(np.abs(a).max(), np.abs(b).max())
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    return float(np.max(np.where(scale > 0, np.abs(a - b) / np.where(scale > 0, scale, 1.0), 0.0)))


def compare(raw):
    """The largest relative differences engine vs torch: (parameters over steps 0..5, step-0
    gradients, losses). Asserts that both sides have the same parameters."""
    params, grads, losses = _engine(raw)
    run = _reference(raw)
    worst_param = 0.0
    for step in range(STEPS + 1):
        assert set(params[step]) == set(run.params[step]), step
        for name, value in run.params[step].items():
            assert params[step][name].shape == value.shape, (step, name)
            worst_param = max(worst_param, _relative(params[step][name], value))
    worst_grad = max(_relative(grads[name], value) for name, value in run.grads[0].items())
    worst_loss = _relative(losses, run.losses)
    return worst_param, worst_grad, worst_loss


def _cases():
    cases = []
    for name in optim.OPTIMIZERS:
        for activation in ("sigmoid", "tanh"):
            cases.append(pytest.param(name, BASE_HYPER.get(name), "half_sse", "sum", {}, activation,
                                      id=f"{name}-{activation}"))
    for variant, name, hyper, loss, reduction, training in VARIANTS:
        cases.append(pytest.param(name, hyper, loss, reduction, training, "tanh", id=variant))
    return cases


def _check(norm_kind, optimizer, hyper, loss, reduction, training, activation, seed):
    assert hyper is not None, f"optimizer {optimizer!r} has no torch parity case: add it to BASE_HYPER"
    raw = _scenario(norm_kind, activation, optimizer, hyper, loss, reduction, training, seed)
    worst_param, worst_grad, worst_loss = compare(raw)
    message = f"params {worst_param:.2e}, step-0 gradients {worst_grad:.2e}, losses {worst_loss:.2e}"
    assert worst_param <= TOLERANCE and worst_grad <= TOLERANCE and worst_loss <= TOLERANCE, message


@pytest.mark.parametrize("optimizer, hyper, loss, reduction, training, activation", _cases())
def test_layernorm_matches_torch(optimizer, hyper, loss, reduction, training, activation):
    missing = _layernorm_missing()
    if missing:
        pytest.skip(f"{missing} (issue 11): this parity test runs once layernorm lands")
    _check("layernorm", optimizer, hyper, loss, reduction, training, activation, seed=1)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_layernorm_matches_torch_one_sample_at_a_time(optimizer):
    """Layer norm needs no batch statistics: online training (batch = 1) works as in torch."""
    missing = _layernorm_missing()
    if missing:
        pytest.skip(f"{missing} (issue 11): this parity test runs once layernorm lands")
    _check("layernorm", optimizer, BASE_HYPER[optimizer], "half_sse", "sum", {"batch": 1}, "sigmoid", seed=3)


@pytest.mark.parametrize("optimizer, hyper, loss, reduction, training, activation", _cases())
def test_batchnorm_matches_torch(optimizer, hyper, loss, reduction, training, activation):
    _check("batchnorm", optimizer, hyper, loss, reduction, training, activation, seed=2)


def test_every_optimizer_has_a_case():
    assert set(optim.OPTIMIZERS) <= set(BASE_HYPER) | {v[1] for v in VARIANTS}
    assert set(optim.OPTIMIZERS) <= set(ref.OPTIMIZER_DEFAULTS)


def test_comparison_notices_a_wrong_step():
    """The comparison can fail: torch trained with a learning rate 1e-6 larger is caught."""
    raw = _scenario("batchnorm", "sigmoid", "sgd", {"lr": 0.5})
    params, _, _ = _engine(raw)
    raw_off = _scenario("batchnorm", "sigmoid", "sgd", {"lr": 0.5 * (1 + 1e-6)})
    run = _reference(raw_off)
    assert max(_relative(params[STEPS][n], v) for n, v in run.params[STEPS].items()) > TOLERANCE
