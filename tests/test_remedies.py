"""Remedies inside the workbook: batch normalisation and residual connections checked by hand and
by LibreOffice, and every optimiser × clipping × batchnorm × residual combination verified."""
import copy
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from tracer.explain import chain, diagnose, gradcheck
from tracer.training import scenario as scenario_module
from tests.conftest import build
from tests.test_engine import networks

INPUTS = [[0.5, -1.0, 0.3], [1.5, 0.2, -0.4], [0.1, 0.7, 0.9], [-0.6, 0.4, 1.2]]


def network(batchnorm=False, residual=False, optimizer="sgd", clip=False, steps=3):
    # before batchnorm, no bias (as PyTorch's bias=False before BatchNorm): its gradient is 0 in exact
    # arithmetic, and adaptive optimisers would blow its rounding noise up to a full-size update
    layers = [{"units": 3, "activation": "identity" if batchnorm else "tanh", "init": "xavier_uniform",
               "train_bias": not batchnorm}]
    if batchnorm:
        layers.append({"kind": "batchnorm", "activation": "tanh"})
    layers.append({"units": 3, "activation": "sigmoid", "init": "xavier_uniform", "residual": residual})
    layers.append({"units": 1, "activation": "identity", "init": "xavier_uniform"})
    options = {"adam": {"betas": [0.8, 0.99]}, "momentum": {"nesterov": True}, "rmsprop": {"alpha": 0.9}}.get(optimizer, {})
    return {
        "seed": 2, "steps": steps, "data": {"inputs": INPUTS, "targets": [[1.0], [0.0], [0.4], [0.8]]},
        "layers": layers, "loss": {"name": "half_sse", "reduction": "mean"},
        "optimizer": dict({"name": optimizer, "lr": 0.05}, **options),
        "training": dict({"batch": 2}, **({"clip_norm": 0.05} if clip else {})),
    }


def test_batchnorm_forward_by_hand():
    trace = build(network(batchnorm=True))
    x = trace.a[0][0, :2]                      # the batch of step 0 entering the batchnorm layer
    mean, var = x.mean(axis=0), x.var(axis=0)  # biased variance, as in training mode
    xhat = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(trace.norm["mean"][1][0], mean, rtol=1e-14)
    np.testing.assert_allclose(trace.norm["var"][1][0], var, rtol=1e-13)
    np.testing.assert_allclose(trace.norm["xhat"][1][0, :2], xhat, rtol=1e-12)
    np.testing.assert_allclose(trace.u[1][0, :2], 1.0 * xhat + 0.0)   # γ = 1, β = 0 at the start
    # the γ, β gradients are Σ δ·x̂ and Σ δ (mean over the batch)
    delta = trace.delta[1][0, :2]
    np.testing.assert_allclose(trace.grad_W[1][0, 0], (delta * xhat).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(trace.grad_b[1][0], delta.mean(axis=0), rtol=1e-12)


def test_batchnorm_backward_matches_finite_differences_and_its_identity():
    trace = build(network(batchnorm=True, steps=2))
    assert gradcheck.check(trace, steps=(0, 1)).worst.error < 1e-6
    # a layer right below batchnorm gets Σ_s ∂E/∂x_s = 0 for its bias: batchnorm removes the shift
    assert abs(trace.grad_b[0][0]).max() < 1e-12
    assert (trace.b[0][-1] == trace.b[0][0]).all()   # (and here it is not trained)


def test_chain_rule_through_batchnorm():
    trace = build(network(batchnorm=True))
    explained = chain.explain(trace, "gamma2[1]", step=0)
    assert explained.product == pytest.approx(explained.engine, rel=1e-12)
    below = chain.explain(trace, "W1[0,1]", step=1)
    assert below.product == pytest.approx(below.engine, rel=1e-12, abs=1e-300)
    assert "dx̂" in chain.render(below)


def test_clipped_gradient_shows_the_clip_factor():
    trace = build(network(clip=True))
    text = chain.render(chain.explain(trace, "W1[0,0]", step=0))
    assert "clip factor c =" in text
    assert any("Gradient clipping" in s for s in diagnose.diagnose(trace).findings)


def test_batchnorm_settings_are_validated(tmp_path, invoke):
    from tests.conftest import write_toml
    raw = network(batchnorm=True)
    for edit, fragment in [({"units": 5}, "keeps the width"), ({"init": "normal"}, "does not apply to a batchnorm"),
                           ({"eps": -1.0}, "must be positive")]:
        bad = copy.deepcopy(raw)
        bad["layers"][1].update(edit)
        path = write_toml(tmp_path, scenario_module.dump_toml(bad))
        result = invoke("run", path, "--trace", tmp_path / "t.csv")
        assert result.exit_code == 2 and fragment in result.output, result.output


MATRIX = list(itertools.product(["sgd", "momentum", "adagrad", "rmsprop", "adam"], [False, True], [False, True], [False, True]))
IDS = [f"{o}-{'clip' if c else 'noclip'}-{'bn' if b else 'nobn'}-{'res' if r else 'nores'}" for o, c, b, r in MATRIX]


def _pairwise():
    """Ten of the forty combinations that hold every pair of settings: each optimiser with one row
    (c, b, r) of the orthogonal array FFF, FTT, TFT, TTF of the three switches and with its
    complement, so that each optimiser meets both values of each switch and every two switches
    meet in all four pairs of values."""
    rows = [(False, False, False), (False, True, True), (True, False, True), (True, True, False)]
    chosen = []
    for number, optimizer in enumerate(["sgd", "momentum", "adagrad", "rmsprop", "adam"]):
        row = rows[number % 4]
        chosen += [(optimizer, *row), (optimizer, *(not v for v in row))]
    return chosen


PAIRWISE = _pairwise()


@pytest.mark.parametrize("optimizer,clip,batchnorm,residual", MATRIX, ids=IDS)
def test_combination_gradchecks(optimizer, clip, batchnorm, residual):
    trace = build(network(batchnorm, residual, optimizer, clip))
    report = gradcheck.check(trace, steps=(0, 2))
    assert report.checks and report.worst.error < 1e-6, report.worst


def test_the_libreoffice_combinations_hold_every_pair_of_settings():
    assert len(set(PAIRWISE)) == 10 and set(PAIRWISE) <= set(MATRIX)
    for first, second in itertools.combinations(range(4), 2):
        wanted = {(a, b) for a in {row[first] for row in MATRIX} for b in {row[second] for row in MATRIX}}
        assert {(row[first], row[second]) for row in PAIRWISE} == wanted, (first, second)


@pytest.mark.libreoffice(workbooks=lambda optimizer, clip, batchnorm, residual: build(network(batchnorm, residual, optimizer, clip)))
@pytest.mark.parametrize("optimizer,clip,batchnorm,residual", PAIRWISE,
                         ids=[IDS[MATRIX.index(entry)] for entry in PAIRWISE])
def test_combination_verifies_in_libreoffice(recomputed, optimizer, clip, batchnorm, residual):
    """Every formula of the combinations that hold every pair of settings (all forty gradcheck above)."""
    verified = recomputed.report
    assert verified.ok, verified.summary()


# Activations that are affine on a batch whose u all fall in one linear piece (identity always).
AFFINE_ON_A_BATCH = {"identity", "relu", "leaky_relu", "elu"}


def freeze_shift_removed_biases(layers):
    """Give train_bias = false to every bias whose gradient can be 0 in exact arithmetic (README,
    "Remedies", the caution on biases below batchnorm): that of a layer whose output reaches a batchnorm
    layer through activations that can be affine on the batch only, since an affine map passes a shift
    on as a shift and batchnorm removes it. Only rounding noise is left in such a gradient, which
    adagrad, rmsprop and adam blow up to a full-size update that a spreadsheet computes differently."""
    for index, layer in enumerate(layers):
        if layer.get("kind") != "batchnorm":
            continue
        for below in range(index - 1, -1, -1):
            if layers[below]["activation"] not in AFFINE_ON_A_BATCH:
                break
            layers[below]["train_bias"] = False
            if layers[below].get("kind") == "batchnorm":   # it removes the shifts from further down
                break


# Found by hypothesis: b1 of identity → identity → batchnorm got −6.1e-9 from rmsprop in the engine
# and 0 in LibreOffice (its gradient is rounding noise, ~1e-15), when only the layer right below
# batchnorm was frozen.
BIAS_TWO_LAYERS_BELOW_BATCHNORM = {
    "seed": 0, "steps": 2,
    "data": {"inputs": [[0.18859533164008996], [-0.19815729493695283], [0.9606339756649231],
                        [0.15735017572955956], [-0.8035040597416665]],
             "targets": [[0.36159505490948474], [1.3040000451301372], [0.9470809631292422],
                         [-0.7037352358069926], [-1.2654214710460525]]},
    "layers": [
        {"units": 2, "activation": "identity", "init": "xavier_normal", "bias_init": "uniform", "bias_low": -0.5, "bias_high": 0.5},
        {"units": 5, "activation": "identity", "init": "xavier_normal", "bias_init": "uniform", "bias_low": -0.5, "bias_high": 0.5},
        {"kind": "batchnorm", "activation": "elu", "alpha": 0.5},
        {"units": 1, "activation": "elu", "init": "xavier_normal", "bias_init": "uniform", "bias_low": -0.5, "bias_high": 0.5,
         "alpha": 1.0},
        {"units": 1, "activation": "gelu", "init": "xavier_normal", "bias_init": "uniform", "bias_low": -0.5, "bias_high": 0.5},
    ],
    "loss": {"name": "half_sse", "reduction": "sum"},
    "optimizer": {"name": "sgd", "lr": 0.05}, "training": {"batch": "full"},
}


def test_biases_joined_to_batchnorm_by_affine_layers_have_only_rounding_noise():
    trace = build(BIAS_TWO_LAYERS_BELOW_BATCHNORM)
    above = np.abs(trace.grad_b[3][0]).max()          # a bias above batchnorm: a real gradient
    assert above > 1e-2
    for layer in (0, 1):                              # b1 and b2: 0 in exact arithmetic
        assert np.abs(trace.grad_b[layer][0]).max() < 1e-13 * above
    layers = copy.deepcopy(BIAS_TWO_LAYERS_BELOW_BATCHNORM["layers"])
    freeze_shift_removed_biases(layers)
    assert [layer.get("train_bias", True) for layer in layers] == [False, False, True, True, True]


def test_freezing_stops_at_a_curved_activation():
    layers = [{"units": 2, "activation": "identity"}, {"units": 2, "activation": "relu"},
              {"units": 2, "activation": "tanh"}, {"units": 2, "activation": "leaky_relu"},
              {"kind": "batchnorm", "activation": "tanh"}, {"units": 1, "activation": "identity"}]
    freeze_shift_removed_biases(layers)
    # leaky ReLU may be affine on the batch, so a shift of its bias reaches batchnorm as a shift;
    # tanh bends the shift of its own bias and of every bias below it
    assert [layer.get("train_bias", True) for layer in layers] == [True, True, True, False, True, True]


def random_networks():
    """The finite runs of hypothesis' random networks × optimisers × clipping (6 examples and the
    pinned one), to be recomputed together."""
    traces = []

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(networks(), st.sampled_from(["sgd", "momentum", "adagrad", "rmsprop", "adam"]), st.booleans())
    @example(raw=BIAS_TWO_LAYERS_BELOW_BATCHNORM, optimizer="rmsprop", clip=False)
    def collect(raw, optimizer, clip):
        raw = copy.deepcopy(raw)
        raw["optimizer"] = {"name": optimizer, "lr": 0.05}
        if clip:
            raw["training"]["clip_norm"] = 0.5
        freeze_shift_removed_biases(raw["layers"])
        trace = build(raw)
        assume(all(np.isfinite(g).all() for g in trace.grad_W))
        traces.append(trace)
    collect()
    return traces


@pytest.mark.libreoffice(workbooks=random_networks)
def test_random_networks_verify_in_libreoffice(recomputed):
    assert recomputed
    for verified in recomputed:
        assert verified.report.ok, (verified.trace.scenario.text, verified.report.summary())


def _frozen_bias_case(clip_value=None):
    """The issue's case: y = W·x + b with W = 1, a frozen bias b = 1, x = 1, t = 0, lr 0.1, clip_norm 0.1."""
    training = {"clip_norm": 0.1, **({"clip_value": clip_value} if clip_value else {})}
    return {"seed": 0, "steps": 2, "data": {"inputs": [[1.0]], "targets": [[0.0]]},
            "layers": [{"units": 1, "activation": "identity", "init": "explicit", "weights": [[1.0]], "bias": [1.0],
                        "train_bias": False}],
            "loss": {"name": "half_sse"}, "optimizer": {"name": "sgd", "lr": 0.1}, "training": training}


def test_clip_norm_leaves_frozen_parameters_out_of_the_norm():
    trace = build(_frozen_bias_case())
    # E = ½(W + b)², ∂E/∂W = W + b = 2; b is not trained, so ‖g‖ = |∂E/∂W| = 2 (not √8)
    assert trace.grad_W[0][0, 0, 0] == 2.0 and trace.grad_b[0][0, 0] == 2.0
    assert trace.grad_norm[0] == 2.0
    assert trace.clip_factor[0] == 0.1 / (2.0 + 1e-6)
    assert trace.update_W[0][0, 0, 0] == pytest.approx(0.1 * 2.0 * 0.1 / (2.0 + 1e-6), rel=1e-15)
    assert trace.b[0][-1, 0] == 1.0
    report = gradcheck.check(trace, steps=(0, 1))
    assert report.worst.error < 1e-8, report.worst


def _frozen_parameter_runs():
    raw = network(clip=True, batchnorm=True)           # the layer below batchnorm has a frozen bias
    raw["layers"][1]["train_bias"] = False             # and the batchnorm's β is frozen too
    return [build(raw), build(_frozen_bias_case())]


@pytest.mark.libreoffice(workbooks=_frozen_parameter_runs)
def test_clip_norm_of_trained_parameters_verifies(recomputed):
    assert len(recomputed) == 2
    for verified in recomputed:
        assert verified.report.ok, verified.report.summary()


def _torch_run(trace, steps, clip_norm, clip_value):
    """The same dense net trained in torch (float64) from the documented clip_grad_norm_ and
    clip_grad_value_: per step, (total norm, clip coefficient min(1, max_norm/(norm + 1e-6))) and
    the parameters after `steps` steps."""
    torch = pytest.importorskip("torch")
    s = trace.scenario
    torch_act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda z: z}
    linears = []
    for l, layer in enumerate(s.layers):
        linear = torch.nn.Linear(trace.W[l].shape[1], trace.W[l].shape[2], dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(trace.W[l][0].T))
            linear.bias.copy_(torch.tensor(trace.b[l][0]))
        linear.bias.requires_grad_(layer.train_bias)
        linears.append(linear)
    trained = [p for linear in linears for p in linear.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=s.optimizer_params["lr"])
    norms, factors = [], []
    for step in range(steps):
        ids = trace.samples(step)
        a = torch.tensor(s.inputs[ids])
        for linear, layer in zip(linears, s.layers):
            a = torch_act[layer.activation](linear(a))
        loss = 0.5 * ((a - torch.tensor(s.targets[ids])) ** 2).sum()   # half_sse, summed over the batch
        if s.reduction == "mean":
            loss = loss / len(ids)
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(trained, clip_norm)
        norms.append(float(norm))
        factors.append(min(1.0, clip_norm / (float(norm) + 1e-6)))
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(trained, clip_value)
        optimizer.step()
    final = [(linear.weight.detach().numpy().T, linear.bias.detach().numpy()) for linear in linears]
    return norms, factors, final


@pytest.mark.parametrize("frozen,clip_value", [(False, None), (True, None), (True, 0.004), (False, 0.004)],
                         ids=["trained", "frozen-bias", "frozen-bias+clip-value", "trained+clip-value"])
def test_clipping_matches_torch(frozen, clip_value):
    raw = network(clip=True, steps=4)
    raw["training"] = {"batch": "full", "clip_norm": 0.05, **({"clip_value": clip_value} if clip_value else {})}
    raw["layers"][0]["train_bias"] = not frozen
    trace = build(raw)
    norms, factors, final = _torch_run(trace, trace.steps, 0.05, clip_value)
    np.testing.assert_allclose(trace.grad_norm, norms, rtol=1e-12, atol=0)
    np.testing.assert_allclose(trace.clip_factor, factors, rtol=1e-12, atol=0)
    assert (trace.clip_factor < 1).all()    # the norm clipped at every step
    for l, (W, b) in enumerate(final):
        np.testing.assert_allclose(trace.W[l][-1], W, rtol=1e-12, atol=0)
        np.testing.assert_allclose(trace.b[l][-1], b, rtol=1e-12, atol=0)


def test_the_issue_case_matches_torch():
    trace = build(_frozen_bias_case())
    norms, factors, final = _torch_run(trace, 2, 0.1, None)
    assert norms[0] == 2.0 and trace.grad_norm[0] == 2.0
    np.testing.assert_allclose(trace.W[0][-1], final[0][0], rtol=1e-15)


# Found by hypothesis (explore profile) after the fix above: b1, b2 are frozen, but their gradient
# cells are still compared, and they are pure rounding noise (engine 0, LibreOffice 5.1e-14 at
# ∂E/∂b2[0]). The noise comes through batchnorm's backward, e = (dx̂ − m1 − x̂·m2)/√(σ² + eps),
# which cancels and then multiplies by 1/√(σ² + eps) ≈ 170 here (σ² = 2.5e-5, of the order of eps);
# the verification floor (1e-5 × the magnitudes flowing into a cell) does not follow that
# amplification. A verify.py matter, left open: strict, so the fix there shows up here.
NOISE_AMPLIFIED_BY_BATCHNORM_BACKWARD = copy.deepcopy(BIAS_TWO_LAYERS_BELOW_BATCHNORM)
NOISE_AMPLIFIED_BY_BATCHNORM_BACKWARD["data"] = {"inputs": [[0.18859533164008996], [-0.19815729493695283]],
                                                 "targets": [[0.6404226504432821], [0.10490011715303971]]}
NOISE_AMPLIFIED_BY_BATCHNORM_BACKWARD["layers"][3]["units"] = 6
NOISE_AMPLIFIED_BY_BATCHNORM_BACKWARD["optimizer"] = {"name": "rmsprop", "lr": 0.05}


def _noise_run():
    raw = copy.deepcopy(NOISE_AMPLIFIED_BY_BATCHNORM_BACKWARD)
    freeze_shift_removed_biases(raw["layers"])
    return build(raw)


@pytest.mark.libreoffice(workbooks=_noise_run)
def test_noise_of_a_frozen_bias_below_batchnorm_verifies(recomputed):
    assert 1e-6 < recomputed.trace.norm["var"][2][0].min() < 1e-4
    assert recomputed.report.ok, recomputed.report.summary()
