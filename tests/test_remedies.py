"""Remedies inside the workbook: batch normalisation and residual connections checked by hand and
by LibreOffice, and every optimiser × clipping × batchnorm × residual combination verified."""
import copy
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from tracer import chain, diagnose, gradcheck, scenario as scenario_module
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


@pytest.mark.libreoffice(workbooks=lambda optimizer, clip, batchnorm, residual: build(network(batchnorm, residual, optimizer, clip)))
@pytest.mark.parametrize("optimizer,clip,batchnorm,residual", MATRIX,
                         ids=[f"{o}-{'clip' if c else 'noclip'}-{'bn' if b else 'nobn'}-{'res' if r else 'nores'}"
                              for o, c, b, r in MATRIX])
def test_combination_gradchecks_and_verifies(recomputed, optimizer, clip, batchnorm, residual):
    trace, verified = recomputed.trace, recomputed.report
    report = gradcheck.check(trace, steps=(0, 2))
    assert report.checks and report.worst.error < 1e-6, report.worst
    assert verified.ok, verified.summary()


def random_networks():
    """The finite runs of hypothesis' random networks × optimisers × clipping (6 examples), to be
    recomputed together."""
    traces = []

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(networks(), st.sampled_from(["sgd", "momentum", "adagrad", "rmsprop", "adam"]), st.booleans())
    def collect(raw, optimizer, clip):
        raw["optimizer"] = {"name": optimizer, "lr": 0.05}
        if clip:
            raw["training"]["clip_norm"] = 0.5
        for index, layer in enumerate(raw["layers"][:-1]):
            if raw["layers"][index + 1].get("kind") == "batchnorm":
                layer["train_bias"] = False   # see the caution in the README
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
