"""Each update rule on a single parameter for three steps, worked out here from the published
(PyTorch) formula, against the engine; every optimiser verified in LibreOffice."""
import copy
import math

import numpy as np
import pytest

from tracer.maths import optim
from tracer.training import scenario as scenario_module
from tests.conftest import BASE, build

# E = ½(w·x − t)² with x = 2, t = 1, w0 = 0.3: g = (w·x − t)·x
X, T, W0 = 2.0, 1.0, 0.3


def single(optimizer, **extra):
    return {
        "steps": 3, "data": {"inputs": [[X]], "targets": [[T]]},
        "layers": [{"units": 1, "activation": "identity", "init": "explicit", "weights": [[W0]], "bias": [0.0],
                    "train_bias": False}],
        "optimizer": dict({"name": optimizer}, **extra),
    }


def grad(w):
    return (w * X - T) * X


def run_weights(raw):
    trace = build(raw)
    return trace, list(trace.W[0][:, 0, 0])


def test_sgd():
    trace, ws = run_weights(single("sgd", lr=0.1))
    w = W0
    for step in range(3):
        w = w - 0.1 * grad(w)
        assert ws[step + 1] == pytest.approx(w, rel=1e-15)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum(nesterov):
    trace, ws = run_weights(single("momentum", lr=0.1, momentum=0.9, nesterov=nesterov))
    w, b = W0, 0.0
    for step in range(3):
        g = grad(w)
        b = 0.9 * b + g                       # torch.optim.SGD: buf = μ·buf + g (buf starts at g = 0·μ + g)
        w = w - 0.1 * (g + 0.9 * b if nesterov else b)
        assert trace.state[("momentum_buffer", "W")][0][step, 0, 0] == pytest.approx(b, rel=1e-15)
        assert ws[step + 1] == pytest.approx(w, rel=1e-15)


def test_adagrad():
    trace, ws = run_weights(single("adagrad", lr=0.5, eps=1e-10))
    w, total = W0, 0.0
    for step in range(3):
        g = grad(w)
        total += g * g
        w = w - 0.5 * g / (math.sqrt(total) + 1e-10)
        assert trace.state[("sum", "W")][0][step, 0, 0] == pytest.approx(total, rel=1e-15)
        assert ws[step + 1] == pytest.approx(w, rel=1e-14)


def test_rmsprop():
    trace, ws = run_weights(single("rmsprop", lr=0.01, alpha=0.9, eps=1e-8))
    w, v = W0, 0.0
    for step in range(3):
        g = grad(w)
        v = 0.9 * v + 0.1 * g * g
        w = w - 0.01 * g / (math.sqrt(v) + 1e-8)
        assert ws[step + 1] == pytest.approx(w, rel=1e-14)


def test_adam_with_bias_correction():
    trace, ws = run_weights(single("adam", lr=0.1, betas=[0.8, 0.99], eps=1e-8))
    w, m, v = W0, 0.0, 0.0
    for step in range(3):
        t = step + 1
        g = grad(w)
        m = 0.8 * m + 0.2 * g
        v = 0.99 * v + 0.01 * g * g
        m_hat, v_hat = m / (1 - 0.8 ** t), v / (1 - 0.99 ** t)
        w = w - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
        assert trace.state[("m_hat", "W")][0][step, 0, 0] == pytest.approx(m_hat, rel=1e-14)
        assert trace.state[("v_hat", "W")][0][step, 0, 0] == pytest.approx(v_hat, rel=1e-14)
        assert ws[step + 1] == pytest.approx(w, rel=1e-14)
    # the first Adam step moves every parameter by about lr, whatever the gradient's size
    assert abs(ws[1] - W0) == pytest.approx(0.1, rel=1e-6)


def test_weight_decay_is_added_to_the_gradient():
    trace, ws = run_weights(single("sgd", lr=0.1, weight_decay=0.01))
    w = W0
    for step in range(3):
        w = w - 0.1 * (grad(w) + 0.01 * w)
        assert ws[step + 1] == pytest.approx(w, rel=1e-15)


@pytest.mark.parametrize("schedule,expected", [
    ({"schedule": "step", "step_size": 2, "gamma": 0.5}, [0.1, 0.1, 0.05, 0.05, 0.025]),
    ({"schedule": "exponential", "gamma": 0.5}, [0.1, 0.05, 0.025, 0.0125, 0.00625]),
])
def test_schedules(schedule, expected):
    raw = single("sgd", lr=0.1, **schedule)
    raw["steps"] = 5
    trace = build(raw)
    np.testing.assert_allclose(trace.lr, expected, rtol=1e-15)
    assert optim.learning_rate(trace.scenario.optimizer_params, 4) == pytest.approx(expected[4])


def test_bad_optimizer_settings(tmp_path, invoke):
    from tests.conftest import write_toml
    base = scenario_module.dump_toml(single("adam"))
    for old, new, fragment in [('name = "adam"', 'name = "adam"\nbetas = [0.9]', "optimizer.betas"),
                               ('name = "adam"', 'name = "adam"\nmomentum = 0.9', "unknown key"),
                               ('name = "adam"', 'name = "adam"\nschedule = "cosine"', "unknown schedule"),
                               ('name = "adam"', 'name = "adam"\nschedule = "step"\ngamma = 0.5', "step_size"),
                               ('name = "adam"', 'name = "momentum"\nlr = 0.1\nnesterov = true\nmomentum = 0', "needs momentum")]:
        path = write_toml(tmp_path, base.replace(old, new))
        result = invoke("run", path, "--trace", tmp_path / "t.csv")
        assert result.exit_code == 2 and fragment in result.output, (new, result.output)


MATRIX = [
    ("sgd", {}, {"clip_norm": 0.5}),
    ("momentum", {"nesterov": True, "schedule": "step", "step_size": 2, "gamma": 0.5}, {}),
    ("adagrad", {"weight_decay": 0.01}, {"clip_value": 0.05}),
    ("rmsprop", {"schedule": "exponential", "gamma": 0.9}, {"clip_norm": 0.3}),
    ("adam", {"betas": [0.85, 0.995], "weight_decay": 0.001}, {"clip_norm": 0.2, "clip_value": 0.05}),
]


def _optimised(name, options, training):
    raw = copy.deepcopy(BASE)
    raw["optimizer"] = dict({"name": name, "lr": 0.05}, **options)
    raw["training"].update(training, batch=2)
    raw["steps"] = 5
    return build(raw)


@pytest.mark.libreoffice(workbooks=_optimised)
@pytest.mark.parametrize("name,options,training", MATRIX, ids=[m[0] for m in MATRIX])
def test_optimisers_verify_and_gradcheck(recomputed, name, options, training):
    trace, report = recomputed.trace, recomputed.report
    from tracer.explain import gradcheck
    assert gradcheck.check(trace, steps=(0, 4)).worst.error < 1e-6
    assert report.ok, report.summary()
    quantities = {q for _, _, q, *_ in trace.rows()}
    for state in optim.OPTIMIZERS[name].state:
        assert f"{state}_W" in quantities
    assert "lr" in quantities


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_every_update_is_the_learning_rate_times_a_step(name):
    """Δθ = lr·d with d independent of lr, for every optimiser (check.py's update slips read d = Δθ/lr):
    three steps of the same gradients and state at lr and at 3·lr give updates in the ratio 3."""
    rng = np.random.default_rng(5)
    definition = optim.OPTIMIZERS[name]
    hyper = {key: (0.01 if value is None else value) for key, value in definition.params.items()}
    hyper["weight_decay"] = 0.1
    for t in range(1, 4):
        grad, theta = rng.normal(size=4), rng.normal(size=4)
        before = {state: np.abs(rng.normal(size=4)) for state in definition.state}
        small, _ = definition.step(grad, theta, dict(before), dict(hyper, lr=0.01), t)
        large, _ = definition.step(grad, theta, dict(before), dict(hyper, lr=0.03), t)
        np.testing.assert_allclose(large, 3 * small, rtol=1e-12)
