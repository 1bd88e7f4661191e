"""Parity of the engine's attention, pool, conv1d and conv2d kinds with PyTorch in float64.

Each net is trained 5 steps by `tracer.run` and by torch (tests/torch_reference.py, written from
torch's documentation: F.scaled_dot_product_attention, nn.MultiheadAttention(batch_first=True),
nn.Conv1d, nn.Conv2d, nn.Flatten), for every optimiser of tracer.maths.optim.OPTIMIZERS: the batch
losses, the step-0 gradients of every parameter and the parameters after every step agree to
1e-9 relative (torch_reference.relative_difference, whose floor covers components that cancel).
A case skips while one of its kinds is unknown to the engine; the reference itself is checked
today against the formulas written out in numpy. With heads > 1 the reference is
nn.MultiheadAttention wherever it can hold the layer (heads·d_k = features, the default scale, an
output projection) and F.scaled_dot_product_attention per head otherwise; the two agree.

The nets, built from the scenario contract of these kinds:
- attention (layer 1, on samples × time × features) → pool (layer 2, mean | last) → dense
  (layer 3); or attention → dense at every time step with targets samples × time × outputs.
- conv1d (on samples × time × channels) → pool → dense.
- conv2d (flat inputs, `[data] shape = [C, H, W]`) → dense reading the flattened output.

Where the contract leaves a choice open, these readings are taken:
- Every `[[layers]]` table is a layer, so pool is layer 2 and the dense layer after it is W3, b3.
- Explicit weights come with `init = "explicit"`, as for dense and recurrent layers; the biases
  are given explicitly too (`query_bias` … `output_bias`, `bias`).
- The attention layer has no activation: its output is Y = C·Wo + bo with the output projection
  (`output = true`, the default), the concatenated heads' context C (samples × time × heads·d_k)
  with `output = false`; `residual = true` adds the layer's input after that, Y + X (the
  Transformer's x + Attention(x), before any norm), so it needs Y as wide as X.
- `key_size` is d_k per head; Q = X·Wq + bq (Wq: features × heads·d_k, tracer's orientation, =
  in_proj's query block transposed); head h reads the columns h·d_k … (h+1)·d_k − 1; the scores
  of head h are Q_h K_hᵀ·scale, scale 1/√d_k unless given; causal masks key s > query t.
- pool `last` takes time step T − 1. A dense layer after a layer that keeps the time axis, with
  targets samples × time × outputs, acts at every time step and a sample's loss is the sum over
  time (README's rule for recurrent layers).
- conv layers take their `activation` key as dense layers do (always given here); `stride` and
  `padding` are integers, the same on both axes of a conv2d; padding is zeros.
- The conv2d output is channels × rows × columns, flattened in that order for the dense layer.

One parameter is special: ∂E/∂bk = 0 in exact arithmetic (the key bias adds q_t·bk to every
score of query t, and the softmax over s ignores a shift), so both sides compute it as rounding
noise. Its step-0 gradient is checked to be noise on both sides (≤ 1e-12 of the layer's query,
key and value gradients), and bk after each step is compared allowing the most a gradient of that
size can move it under the optimiser (lr·g/eps for the adaptive ones, which amplify noise).
"""
import functools
import math

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

torch = pytest.importorskip("torch")

import tracer  # noqa: E402
from tracer.errors import ScenarioError  # noqa: E402
from tracer.maths import optim  # noqa: E402

import torch_reference as ref  # noqa: E402

STEPS = 5
TOLERANCE = 1e-9
NOISE = 1e-12          # a gradient that is 0 in exact arithmetic, relative to its layer's gradients

# Rates at which every case's loss falls over the 5 steps (test_*_reference_of_each_case).
BASE_HYPER = {
    "sgd": {"lr": 0.02},
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "adagrad": {"lr": 0.1},
    "rmsprop": {"lr": 0.01},
    "adam": {"lr": 0.05},
}

# id → the attention layer (None: the key is left out, the contract's default applies) and pool.
ATTENTION = {
    "h1-defaults-mean": dict(heads=None, key_size=3, features=3, causal=None, scale=None, output=None,
                             residual=False, pool="mean"),
    "h1-causal-scale1-no-output-last": dict(heads=1, key_size=2, features=3, causal=True, scale=1.0, output=False,
                                            residual=False, pool="last"),
    "h1-causal-residual-per-time": dict(heads=1, key_size=2, features=3, causal=True, scale=None, output=True,
                                        residual=True, pool=None),
    "h2-multihead-residual-mean": dict(heads=2, key_size=2, features=4, causal=False, scale=None, output=True,
                                       residual=True, pool="mean"),
    "h2-multihead-causal-last": dict(heads=2, key_size=2, features=4, causal=True, scale=None, output=True,
                                     residual=False, pool="last"),
    "h2-scale1-wide-heads-mean": dict(heads=2, key_size=3, features=4, causal=False, scale=1.0, output=True,
                                      residual=False, pool="mean"),
    "h2-causal-no-output-residual-last": dict(heads=2, key_size=2, features=4, causal=True, scale=None,
                                              output=False, residual=True, pool="last"),
}

CONV1D = {
    "k2": dict(kernel=2, stride=1, padding=0, activation="tanh", pool="mean"),
    "k3-s2-p1": dict(kernel=3, stride=2, padding=1, activation="relu", pool="last"),
}

CONV2D = {
    "c1-2x2": dict(channels=1, height=4, width=4, kernel=[2, 2], stride=1, padding=0, activation="tanh"),
    "c2-3x2-s2-p1": dict(channels=2, height=5, width=4, kernel=[3, 2], stride=2, padding=1, activation="sigmoid"),
}


def _base(name, inputs, targets, layers, optimizer, hyper, loss="half_sse", reduction="sum", training=None):
    return {"name": name, "seed": 0, "steps": STEPS,
            "data": {"inputs": np.asarray(inputs).tolist(), "targets": np.asarray(targets).tolist()},
            "layers": layers, "loss": {"name": loss, "reduction": reduction},
            "optimizer": {"name": optimizer, **hyper}, "training": {"batch": "full", **(training or {})}}


def _targets(rng, shape, loss):
    if loss == "softmax_ce":
        return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    return rng.uniform(0.05, 0.95, size=shape)


def _dense(rng, fan_in, outputs, loss):
    return {"units": outputs, "activation": {"softmax_ce": "softmax", "bce": "sigmoid"}.get(loss, "identity"),
            "init": "explicit", "weights": rng.uniform(-1, 1, (fan_in, outputs)).tolist(),
            "bias": rng.uniform(-0.5, 0.5, outputs).tolist()}


def attention_scenario(case, optimizer, hyper, loss="half_sse", reduction="sum", training=None, seed=0):
    """4 samples × 4 time steps × `features` → attention → pool → dense(2), or → dense(2) at every
    time step without a pool; random explicit weights drawn from `seed`."""
    c = ATTENTION[case]
    rng = np.random.default_rng(3000 + seed)
    samples, time, features, width = 4, 4, c["features"], (c["heads"] or 1) * c["key_size"]
    layer = {"kind": "attention", "key_size": c["key_size"], "residual": c["residual"], "init": "explicit"}
    layer.update({key: c[key] for key in ("heads", "causal", "scale", "output") if c[key] is not None})
    for part in ("query", "key", "value"):
        layer[f"{part}_weights"] = rng.uniform(-0.8, 0.8, (features, width)).tolist()
        layer[f"{part}_bias"] = rng.uniform(-0.3, 0.3, width).tolist()
    if c["output"] is not False:
        layer["output_weights"] = rng.uniform(-0.8, 0.8, (width, features)).tolist()
        layer["output_bias"] = rng.uniform(-0.3, 0.3, features).tolist()
    out_width = width if c["output"] is False else features
    layers = [layer] + ([{"kind": "pool", "mode": c["pool"]}] if c["pool"] else []) + [_dense(rng, out_width, 2, loss)]
    targets = _targets(rng, (samples, 2) if c["pool"] else (samples, time, 2), loss)
    return _base(f"attention-{case}", rng.normal(size=(samples, time, features)), targets, layers,
                 optimizer, hyper, loss, reduction, training)


def conv1d_scenario(case, optimizer, hyper, loss="half_sse", reduction="sum", training=None, seed=0):
    """4 samples × 6 time steps × 2 channels → conv1d(3 units) → pool → dense(2)."""
    c = CONV1D[case]
    rng = np.random.default_rng(4000 + seed)
    samples, time, channels, units = 4, 6, 2, 3
    conv = {"kind": "conv1d", "units": units, "kernel": c["kernel"], "stride": c["stride"], "padding": c["padding"],
            "activation": c["activation"], "init": "explicit",
            "weights": rng.uniform(-0.8, 0.8, (channels * c["kernel"], units)).tolist(),
            "bias": rng.uniform(-0.3, 0.3, units).tolist()}
    layers = [conv, {"kind": "pool", "mode": c["pool"]}, _dense(rng, units, 2, loss)]
    return _base(f"conv1d-{case}", rng.normal(size=(samples, time, channels)), _targets(rng, (samples, 2), loss),
                 layers, optimizer, hyper, loss, reduction, training)


def conv2d_scenario(case, optimizer, hyper, loss="half_sse", reduction="sum", training=None, seed=0):
    """4 flat samples of C·H·W values (`[data] shape = [C, H, W]`) → conv2d(2 units) → dense(3)."""
    c = CONV2D[case]
    rng = np.random.default_rng(5000 + seed)
    samples, units, (kh, kw) = 4, 2, c["kernel"]
    rows = (c["height"] + 2 * c["padding"] - kh) // c["stride"] + 1
    columns = (c["width"] + 2 * c["padding"] - kw) // c["stride"] + 1
    conv = {"kind": "conv2d", "units": units, "kernel": c["kernel"], "stride": c["stride"], "padding": c["padding"],
            "activation": c["activation"], "init": "explicit",
            "weights": rng.uniform(-0.8, 0.8, (c["channels"] * kh * kw, units)).tolist(),
            "bias": rng.uniform(-0.3, 0.3, units).tolist()}
    raw = _base(f"conv2d-{case}", rng.normal(size=(samples, c["channels"] * c["height"] * c["width"])),
                _targets(rng, (samples, 3), loss), [conv, _dense(rng, units * rows * columns, 3, loss)],
                optimizer, hyper, loss, reduction, training)
    raw["data"]["shape"] = [c["channels"], c["height"], c["width"]]
    return raw


# --- running both sides ---------------------------------------------------------------------------

@functools.cache
def _missing(kind):
    """Why the engine cannot load `kind` yet, or None once it can: probed with a layer that
    names only its kind (so that keys the engine does not know yet cannot hide the answer); an
    unknown-kind error or a stub (NotImplementedError) means missing, anything else is the real
    test's to report."""
    probe = {"name": "probe", "seed": 0, "steps": 1, "data": {"inputs": [[1.0, 2.0]], "targets": [[1.0]]},
             "layers": [{"kind": kind}, {"units": 1, "activation": "identity"}],
             "loss": {"name": "half_sse"}, "optimizer": {"name": "sgd", "lr": 0.1}}
    try:
        tracer.from_dict(probe)
    except ScenarioError as error:
        problem = str(error.problem)
        if str(error.key).endswith(".kind") and "unknown" in problem and kind in problem:
            return f'kind = "{kind}" ({error.problem})'
    except NotImplementedError:
        return f'kind = "{kind}" (registered, not implemented: NotImplementedError)'
    except Exception:       # noqa: BLE001 - a known kind refusing the probe's bare layer: the real test decides
        pass
    return None


def _skip_unless_known(raw):
    kinds = {layer.get("kind", "dense") for layer in raw["layers"]} - {"dense"}
    missing = [reason for reason in map(_missing, sorted(kinds)) if reason]
    if missing:
        pytest.skip("the engine does not know " + ", ".join(missing) + " yet: this parity test runs once it does")


def _torch_hyper(hyper):
    out = {k: v for k, v in hyper.items() if k != "betas"}
    if "betas" in hyper:
        out["beta1"], out["beta2"] = hyper["betas"]
    return out


def reference(raw, **overrides):
    """torch's run of a scenario dict (overrides: train_torch keywords, or hyper=… to change it)."""
    training = raw["training"]
    hyper = overrides.pop("hyper", _torch_hyper({k: v for k, v in raw["optimizer"].items() if k != "name"}))
    return ref.train_torch(ref.spec_from_scenario(raw), raw["data"]["inputs"], raw["data"]["targets"],
                           raw["loss"]["name"], raw["loss"]["reduction"], raw["optimizer"]["name"], hyper, STEPS,
                           batch=None if training["batch"] == "full" else training["batch"],
                           clip_norm=training.get("clip_norm"), clip_value=training.get("clip_value"), **overrides)


def engine(raw, names):
    """The engine's (params per step, step-0 gradients, losses) of `names`, from its trace frame."""
    return ref.trace_arrays(tracer.run(tracer.from_dict(raw)).to_frame(), names, STEPS)


def _noise_drift(raw, scale):
    """The most a gradient of NOISE·scale can move a parameter in STEPS updates of the scenario's
    optimiser: lr·g (sgd), lr·g·2/(1 − μ) (momentum), lr·g/eps (adagrad, rmsprop, adam)."""
    settings = {**ref.OPTIMIZER_DEFAULTS[raw["optimizer"]["name"]], **raw["optimizer"]}
    factor = {"sgd": 1.0, "momentum": 2 / (1 - settings.get("momentum", 0.0))}.get(settings["name"])
    per_step = settings["lr"] * NOISE * scale * (factor if factor is not None else 1 / settings["eps"])
    return STEPS * per_step


def differences(raw, sides):
    """[(what, measure, limit)] engine vs torch; sides = ((params, grads, losses), TorchRun).
    Asserts both sides have the same parameters and shapes. The key bias bk{l} is measured as
    the module docstring says; every other array by relative_difference against TOLERANCE."""
    (params, grads, losses), run = sides
    assert set(grads) == set(run.grads[0]), sorted(set(grads) ^ set(run.grads[0]))
    for step in range(STEPS + 1):
        assert set(params[step]) == set(run.params[step]), (step, sorted(set(params[step]) ^ set(run.params[step])))
    checks = [("losses", ref.relative_difference(losses, run.losses), TOLERANCE)]
    for name, torch_grad in run.grads[0].items():
        stem, layer = ref.split_name(name)
        if stem != "bk":
            checks.append((f"step-0 ∂E/∂{name}", ref.relative_difference(grads[name], torch_grad), TOLERANCE))
            continue
        scale = max(np.abs(run.grads[0][f"W{x}{layer}"]).max() for x in "qkv")
        noise = max(np.abs(grads[name]).max(), np.abs(torch_grad).max())
        checks.append((f"step-0 ∂E/∂{name} (0 exactly) / the layer's gradients", noise / scale, NOISE))
        for step in range(STEPS + 1):
            bk_engine, bk_torch = params[step][name], run.params[step][name]
            assert bk_engine.shape == bk_torch.shape, (name, bk_engine.shape, bk_torch.shape)
            limit = TOLERANCE * np.abs(bk_torch).max() + _noise_drift(raw, scale) * step / STEPS
            checks.append((f"{name} after step {step}", np.abs(bk_engine - bk_torch).max(), limit))
    for step in range(STEPS + 1):
        checks += [(f"{name} after step {step}", ref.relative_difference(params[step][name], value), TOLERANCE)
                   for name, value in run.params[step].items() if ref.split_name(name)[0] != "bk"]
    return checks


def assert_parity(raw):
    _skip_unless_known(raw)
    run = reference(raw)
    checks = differences(raw, (engine(raw, run.params[0]), run))
    failed = [f"{what}: {measure:.2e} > {limit:.2e}" for what, measure, limit in checks if not measure <= limit]
    assert not failed, "; ".join(failed[:8]) + f" ({len(failed)} of {len(checks)} checks)"


def _optimizers():
    return [pytest.param(name, BASE_HYPER.get(name), id=name) for name in optim.OPTIMIZERS]


# --- the engine against torch ---------------------------------------------------------------------

@pytest.mark.parametrize("optimizer, hyper", _optimizers())
@pytest.mark.parametrize("case", sorted(ATTENTION))
def test_attention_matches_torch(case, optimizer, hyper):
    assert hyper is not None, f"optimizer {optimizer!r} has no torch parity case: add it to BASE_HYPER"
    assert_parity(attention_scenario(case, optimizer, hyper, seed=len(case)))


@pytest.mark.parametrize("optimizer, hyper", _optimizers())
@pytest.mark.parametrize("case", sorted(CONV1D))
def test_conv1d_matches_torch(case, optimizer, hyper):
    assert hyper is not None, f"optimizer {optimizer!r} has no torch parity case: add it to BASE_HYPER"
    assert_parity(conv1d_scenario(case, optimizer, hyper, seed=len(case)))


@pytest.mark.parametrize("optimizer, hyper", _optimizers())
@pytest.mark.parametrize("case", sorted(CONV2D))
def test_conv2d_matches_torch(case, optimizer, hyper):
    assert hyper is not None, f"optimizer {optimizer!r} has no torch parity case: add it to BASE_HYPER"
    assert_parity(conv2d_scenario(case, optimizer, hyper, seed=len(case)))


@pytest.mark.parametrize("build, case, optimizer, hyper, loss, reduction, training", [
    (attention_scenario, "h2-multihead-residual-mean", "momentum",
     {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}, "mse", "mean", {"clip_norm": 0.5}),
    (attention_scenario, "h1-causal-scale1-no-output-last", "adam", {"lr": 0.05, "betas": [0.8, 0.99]},
     "softmax_ce", "mean", {}),
    (conv1d_scenario, "k3-s2-p1", "rmsprop", {"lr": 0.02, "alpha": 0.9}, "bce", "sum", {"clip_value": 0.1}),
    (conv2d_scenario, "c2-3x2-s2-p1", "adam", {"lr": 0.05}, "softmax_ce", "mean", {"batch": 2}),
], ids=["attention-nesterov-mse-clipnorm", "attention-adam-softmax-ce", "conv1d-rmsprop-bce-clipvalue",
        "conv2d-adam-softmax-ce-minibatches"])
def test_variants_match_torch(build, case, optimizer, hyper, loss, reduction, training):
    assert_parity(build(case, optimizer, hyper, loss, reduction, training, seed=11))


def test_every_optimizer_has_a_case():
    assert set(optim.OPTIMIZERS) <= set(BASE_HYPER)
    assert set(optim.OPTIMIZERS) <= set(ref.OPTIMIZER_DEFAULTS)


# --- the comparison itself ------------------------------------------------------------------------

def _as_engine(run):
    """A TorchRun in the shape engine() returns."""
    return dict(enumerate(run.params)), run.grads[0], np.asarray(run.losses)


def _failed(raw, sides):
    return [what for what, measure, limit in differences(raw, sides) if not measure <= limit]


@pytest.mark.parametrize("build, case", [(attention_scenario, "h2-multihead-causal-last"),
                                         (conv2d_scenario, "c2-3x2-s2-p1")])
def test_comparison_passes_torch_against_itself_and_notices_a_wrong_step(build, case):
    raw = build(case, "adam", BASE_HYPER["adam"])
    run = reference(raw)
    assert _failed(raw, (_as_engine(reference(raw)), run)) == []
    off = reference(raw, hyper={"lr": BASE_HYPER["adam"]["lr"] * (1 + 1e-6)})
    failed = _failed(raw, (_as_engine(off), run))
    assert "losses" in failed and any("after step 1" in what for what in failed)
    assert not any(what.startswith("step-0") or "after step 0" in what for what in failed)


@pytest.mark.parametrize("optimizer", sorted(BASE_HYPER))
@pytest.mark.parametrize("case", ["h2-multihead-residual-mean", "h2-multihead-causal-last"])
def test_two_torch_attentions_pass_the_comparison(case, optimizer):
    """F.scaled_dot_product_attention per head and nn.MultiheadAttention, each trained 5 steps,
    pass `differences` against each other: the tolerances (bk's included, under the adaptive
    optimisers that amplify its noise) are met by two faithful implementations."""
    raw = attention_scenario(case, optimizer, BASE_HYPER[optimizer], seed=len(case))
    runs = []
    for multihead in (False, True):
        spec = [dict(entry, multihead=multihead) if entry["kind"] == "attention" else entry
                for entry in ref.spec_from_scenario(raw)]
        runs.append(ref.train_torch(spec, raw["data"]["inputs"], raw["data"]["targets"], "half_sse", "sum",
                                    optimizer, BASE_HYPER[optimizer], STEPS))
    assert _failed(raw, (_as_engine(runs[0]), runs[1])) == []


def test_comparison_allows_key_bias_noise_but_not_a_key_bias_step():
    """bk moved by what a 1e-13 noise gradient can move it passes; a real step of bk fails."""
    raw = attention_scenario("h1-defaults-mean", "sgd", BASE_HYPER["sgd"])
    run = reference(raw)
    params, grads, losses = _as_engine(run)
    noisy = {step: dict(values, bk1=values["bk1"] + 1e-14 * step) for step, values in params.items()}
    assert _failed(raw, ((noisy, dict(grads, bk1=grads["bk1"] + 1e-15), losses), run)) == []
    moved = {step: dict(values, bk1=values["bk1"] + 1e-6 * step) for step, values in params.items()}
    assert _failed(raw, ((moved, grads, losses), run)) == [f"bk1 after step {step}" for step in range(1, STEPS + 1)]
    assert _failed(raw, ((params, dict(grads, bk1=grads["bk1"] + 1e-6), losses), run)) == [
        "step-0 ∂E/∂bk1 (0 exactly) / the layer's gradients"]


def test_trace_arrays_reads_the_csv_rows_of_every_name():
    """A trace frame in README's CSV columns, written from a torch run (per-sample rows and rows
    with a time step as noise around the batch rows), reads back as that run."""
    pandas = pytest.importorskip("pandas")
    run = reference(attention_scenario("h2-multihead-residual-mean", "sgd", BASE_HYPER["sgd"]))
    rows = []
    for step, values in enumerate(run.params):
        for name, value in values.items():
            stem, layer = ref.split_name(name)
            rows += _rows(step, stem, layer, value)
            if step == 0:
                rows += _rows(step, f"grad_{stem}", layer, run.grads[0][name])
                rows += _rows(step, f"grad_{stem}", layer, value + 1.0, sample=0)
                rows += _rows(step, f"grad_{stem}", layer, value + 2.0, time=1)
    rows += [dict(step=step, sample=None, quantity="loss", layer=None, row=None, col=None, value=loss, time=None)
             for step, loss in enumerate(run.losses)]
    frame = pandas.DataFrame(rows).astype({c: "Int64" for c in ("step", "sample", "layer", "row", "col", "time")})
    params, grads, losses = ref.trace_arrays(frame, run.params[0], STEPS)
    assert np.array_equal(losses, run.losses)
    for name in run.params[0]:
        assert np.array_equal(grads[name], run.grads[0][name]), name
        for step in range(STEPS + 1):
            assert np.array_equal(params[step][name], run.params[step][name]), (step, name)


def _rows(step, quantity, layer, value, sample=None, time=None):
    value = np.asarray(value)
    return [dict(step=step, sample=sample, quantity=quantity, layer=layer, row=index[0],
                 col=index[1] if value.ndim == 2 else None, value=float(value[index]), time=time)
            for index in np.ndindex(value.shape)]


# --- the reference against the formulas -----------------------------------------------------------

def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention_formula(x, entry):
    """The attention layer written out in numpy (module docstring): per head h, sample n
    S = Q_h K_hᵀ·scale (−∞ where s > t if causal), P = softmax over s, C_h = P·V_h."""
    weights, biases, heads, size = entry["weights"], entry["biases"], entry["heads"], entry["key_size"]
    q, k, v = (x @ weights[f"W{p}"] + biases[f"b{p}"] for p in "qkv")
    scale = 1 / math.sqrt(size) if entry["scale"] is None else entry["scale"]
    time = x.shape[1]
    context = np.zeros_like(q)
    for h in range(heads):
        cols = slice(h * size, (h + 1) * size)
        scores = np.einsum("ntd,nsd->nts", q[..., cols], k[..., cols]) * scale
        if entry["causal"]:
            scores = np.where(np.triu(np.ones((time, time), bool), 1), -np.inf, scores)
        context[..., cols] = np.einsum("nts,nsd->ntd", _softmax(scores), v[..., cols])
    y = context @ weights["Wo"] + biases["bo"] if entry["output"] else context
    return y + x if entry["residual"] else y


def _attention_entry(raw):
    return ref.spec_from_scenario(raw)[0]


@given(heads=st.integers(1, 3), size=st.integers(1, 3), features=st.integers(1, 5), time=st.integers(1, 4),
       samples=st.integers(1, 3), causal=st.booleans(), scale=st.sampled_from([None, 1.0, 0.3]),
       output=st.booleans(), residual=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_attention_reference_equals_the_formula(heads, size, features, time, samples, causal, scale, output,
                                                residual, seed):
    width = heads * size
    assume(not residual or output or width == features)
    rng = np.random.default_rng(seed)
    weights = {f"W{p}": rng.normal(size=(features, width)) for p in "qkv"}
    biases = {f"b{p}": rng.normal(size=width) for p in "qkv"}
    if output:
        weights["Wo"], biases["bo"] = rng.normal(size=(width, features)), rng.normal(size=features)
    entry = dict(kind="attention", heads=heads, key_size=size, causal=causal, scale=scale, output=output,
                 residual=residual, weights=weights, biases=biases)
    x = rng.normal(size=(samples, time, features))
    modules, named = ref.build_modules([entry], (time, features))
    assert {name for name, _, _ in named} == {f"{n}1" for n in [*weights, *biases]}
    got = modules[0](ref.tensor(x)).detach().numpy()
    assert np.allclose(got, attention_formula(x, entry), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_scaled_dot_product_heads_equal_nn_multihead_attention(causal, residual):
    """The per-head F.scaled_dot_product_attention of SelfAttention and nn.MultiheadAttention
    with the packed in-projection give the same outputs and the same gradient under every
    tracer name: the head split and the Wq/Wk/Wv blocks are nn.MultiheadAttention's."""
    raw = attention_scenario("h2-multihead-residual-mean", "sgd", BASE_HYPER["sgd"])
    entry = dict(_attention_entry(raw), causal=causal, residual=residual)
    x = ref.tensor(raw["data"]["inputs"])
    delta = ref.tensor(np.random.default_rng(1).normal(size=x.shape))
    results = []
    for multihead in (False, True):
        module, named = ref.attention_module(entry, 4, 1, multihead=multihead)
        assert isinstance(module, ref.MultiheadSelfAttention if multihead else ref.SelfAttention)
        y = module(x)
        (y * delta).sum().backward()
        results.append((y.detach().numpy(), {name: to_tracer(p.grad) for name, p, to_tracer in named},
                        {name: to_tracer(p) for name, p, to_tracer in named}))
    (y_sdpa, g_sdpa, p_sdpa), (y_mha, g_mha, p_mha) = results
    assert ref.relative_difference(y_sdpa, y_mha) < 1e-13
    assert set(g_sdpa) == set(g_mha) == {f"{n}1" for n in ("Wq", "Wk", "Wv", "Wo", "bq", "bk", "bv", "bo")}
    for name in g_sdpa:
        assert np.array_equal(p_sdpa[name], p_mha[name]), name
        if name != "bk1":
            assert ref.relative_difference(g_sdpa[name], g_mha[name]) < 1e-12, name
    scale = max(np.abs(g_sdpa[f"W{p}1"]).max() for p in "qkv")
    assert max(np.abs(g_sdpa["bk1"]).max(), np.abs(g_mha["bk1"]).max()) <= NOISE * scale


@pytest.mark.parametrize("case", sorted(ATTENTION))
def test_attention_reference_of_each_case(case):
    """Each case's torch net: tracer's names, nn.MultiheadAttention exactly where it can hold the
    layer, a loss that falls under sgd, and ∂E/∂bk at the rounding noise the comparison allows."""
    raw = attention_scenario(case, "sgd", BASE_HYPER["sgd"])
    c = ATTENTION[case]
    modules, _ = ref.build_modules(ref.spec_from_scenario(raw), np.asarray(raw["data"]["inputs"]).shape[1:])
    multihead = c["heads"] == 2 and c["key_size"] * 2 == c["features"] and c["scale"] is None and c["output"]
    assert isinstance(modules[0], ref.MultiheadSelfAttention if multihead else ref.SelfAttention)
    run = reference(raw)
    projections = ["Wq", "Wk", "Wv", "bq", "bk", "bv"] + (["Wo", "bo"] if c["output"] is not False else [])
    dense = 3 if c["pool"] else 2
    assert set(run.params[0]) == {f"{n}1" for n in projections} | {f"W{dense}", f"b{dense}"}
    assert run.losses[-1] < run.losses[0]
    scale = max(np.abs(run.grads[0][f"W{p}1"]).max() for p in "qkv")
    assert 0 < scale and np.abs(run.grads[0]["bk1"]).max() <= NOISE * scale
    assert np.abs(run.grads[0]["bq1"]).max() > 1e-6 * scale


def _padded(x, padding, axes):
    pads = [(0, 0)] * x.ndim
    for axis in axes:
        pads[axis] = (padding, padding)
    return np.pad(x, pads)


@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, 0), (2, 1, 0), (3, 2, 1), (2, 3, 2)])
def test_conv1d_reference_is_the_im2col_sum(kernel, stride, padding):
    """u[n, p, j] = Σ_c Σ_k x[n, p·stride + k − padding, c]·W[c·kernel + k, j] + b[j] (x = 0 outside),
    and ∂E/∂W[c·kernel + k, j] = Σ_n Σ_p x[n, p·stride + k − padding, c]·δ[n, p, j] under W1."""
    rng = np.random.default_rng(kernel * 10 + stride)
    samples, time, channels, units = 2, 7, 3, 2
    x, b = rng.normal(size=(samples, time, channels)), rng.normal(size=units)
    W = rng.normal(size=(channels * kernel, units))
    entry = dict(kind="conv1d", kernel=kernel, stride=stride, padding=padding, weights=W, bias=b)
    modules, named = ref.build_modules([entry], (time, channels))
    u = modules[0](ref.tensor(x))
    xp = _padded(x, padding, [1])
    positions = (time + 2 * padding - kernel) // stride + 1
    windows = np.stack([xp[:, p * stride:p * stride + kernel, :] for p in range(positions)], axis=1)
    columns = windows.transpose(0, 1, 3, 2).reshape(samples, positions, channels * kernel)   # row c·kernel + k
    assert u.shape == (samples, positions, units)
    assert np.allclose(u.detach().numpy(), columns @ W + b, rtol=1e-13, atol=1e-13)
    delta = rng.normal(size=u.shape)
    (u * ref.tensor(delta)).sum().backward()
    grads = {name: to_tracer(p.grad) for name, p, to_tracer in named}
    assert np.allclose(grads["W1"], np.einsum("npi,npj->ij", columns, delta), rtol=1e-12, atol=1e-13)
    assert np.allclose(grads["b1"], delta.sum(axis=(0, 1)), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kernel, stride, padding", [([1, 1], 1, 0), ([2, 2], 1, 0), ([3, 2], 2, 1), ([2, 3], 1, 1)])
def test_conv2d_reference_is_the_im2col_sum_and_dense_reads_channel_row_column(kernel, stride, padding):
    """u[n, j, p, q] = Σ x[n, c, p·s + r − pad, q·s + t − pad]·W[(c·kh + r)·kw + t, j] + b[j] on
    the flat inputs read as [C, H, W]; the dense layer after it reads input j·P·Q + p·Q + q."""
    rng = np.random.default_rng(sum(kernel) + 10 * stride)
    (kh, kw), samples, channels, height, width, units = kernel, 2, 2, 5, 4, 3
    flat = rng.normal(size=(samples, channels * height * width))
    W, b = rng.normal(size=(channels * kh * kw, units)), rng.normal(size=units)
    rows, cols = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    W_dense, b_dense = rng.normal(size=(units * rows * cols, 1)), rng.normal(size=1)
    spec = [{"kind": "reshape", "shape": [channels, height, width]},
            dict(kind="conv2d", kernel=kernel, stride=stride, padding=padding, weights=W, bias=b),
            {"kind": "linear", "weights": W_dense, "bias": b_dense}]
    modules, named = ref.build_modules(spec, channels * height * width)
    assert [name for name, _, _ in named] == ["W1", "b1", "W2", "b2"]
    xp = _padded(flat.reshape(samples, channels, height, width), padding, [2, 3])
    u = np.empty((samples, units, rows, cols))
    for p in range(rows):
        for q in range(cols):
            window = xp[:, :, p * stride:p * stride + kh, q * stride:q * stride + kw]   # n, c, r, t
            u[:, :, p, q] = window.reshape(samples, -1) @ W + b                           # (c·kh + r)·kw + t
    conv_out = torch.nn.Sequential(*modules[:2])(ref.tensor(flat)).detach().numpy()
    assert np.allclose(conv_out, u, rtol=1e-13, atol=1e-13)
    dense_in = np.array([[u[n, j, p, q] for j in range(units) for p in range(rows) for q in range(cols)]
                         for n in range(samples)])
    out = torch.nn.Sequential(*modules)(ref.tensor(flat)).detach().numpy()
    assert np.allclose(out, dense_in @ W_dense + b_dense, rtol=1e-12, atol=1e-12)


def test_conv_scenarios_read_the_contract():
    """conv1d and conv2d scenarios become the torch modules with W1 = conv.weight.reshape(units, −1)ᵀ."""
    raw = conv2d_scenario("c2-3x2-s2-p1", "sgd", BASE_HYPER["sgd"])
    modules, named = ref.build_modules(ref.spec_from_scenario(raw), np.asarray(raw["data"]["inputs"]).shape[1:])
    conv = modules[1]
    assert isinstance(modules[0], torch.nn.Unflatten) and isinstance(conv, torch.nn.Conv2d)
    assert conv.kernel_size == (3, 2) and conv.stride == (2, 2) and conv.padding == (1, 1)
    assert np.array_equal(conv.weight.detach().numpy().reshape(2, -1).T, raw["layers"][0]["weights"])
    assert isinstance(modules[3], torch.nn.Flatten) and modules[4].in_features == 2 * 3 * 3
    raw = conv1d_scenario("k3-s2-p1", "sgd", BASE_HYPER["sgd"])
    modules, named = ref.build_modules(ref.spec_from_scenario(raw), np.asarray(raw["data"]["inputs"]).shape[1:])
    assert isinstance(modules[0].conv, torch.nn.Conv1d) and isinstance(modules[2], ref.Pool)
    assert np.array_equal(dict((n, t(p)) for n, p, t in named)["W1"], raw["layers"][0]["weights"])
    assert [name for name, _, _ in named] == ["W1", "b1", "W3", "b3"]
    for build, cases in ((conv1d_scenario, CONV1D), (conv2d_scenario, CONV2D)):
        for case in cases:
            losses = reference(build(case, "sgd", BASE_HYPER["sgd"], seed=len(case))).losses
            assert losses[-1] < losses[0], (case, losses)


@pytest.mark.parametrize("mode", ["mean", "last"])
def test_pool_reference(mode):
    x = np.random.default_rng(2).normal(size=(3, 4, 2))
    modules, named = ref.build_modules([{"kind": "pool", "mode": mode}], (4, 2))
    expected = x.mean(axis=1) if mode == "mean" else x[:, -1, :]
    assert named == [] and np.allclose(modules[0](ref.tensor(x)).numpy(), expected, rtol=1e-15, atol=0)


def test_probe_tells_a_known_kind_from_an_unknown_one():
    """The skip decision: a known kind (whatever its bare layer lacks) is not missing, an unknown
    one is, with the engine's reason."""
    assert _missing("dense") is None and _missing("layernorm") is None and _missing("rnn") is None
    assert "unknown" in _missing("no_such_kind")
