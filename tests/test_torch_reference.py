"""Tests of the torch references themselves (tests/torch_reference.py): each reference is checked
against something independent of it — PyTorch's documented equations written by hand, the
formulas of DESIGN-11 / README computed in numpy, finite differences, 1.1¹⁰⁰ multiplied by hand.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402  (after the importorskip)

RNG_SEED = 20261123


def _rng(offset=0):
    return np.random.default_rng(RNG_SEED + offset)


def _rel(a, b):
    """max |a − b| / max(|a|, |b|) elementwise (0 where both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.maximum(np.abs(a), np.abs(b))
    return float(np.max(np.where(scale > 0, np.abs(a - b) / np.where(scale > 0, scale, 1.0), 0.0)))


# --- the weight convention ---------------------------------------------------------------------

def test_linear_reads_tracer_orientation():
    """u = x·W + b with W of shape (fan_in, units): W[i, j] joins input i to unit j."""
    rng = _rng()
    x, W, b = rng.normal(size=(3, 2)), rng.normal(size=(2, 4)), rng.normal(size=4)
    modules, named = ref.build_modules([{"kind": "linear", "weights": W, "bias": b}], 2)
    u = modules[0](ref.tensor(x)).detach().numpy()
    np.testing.assert_allclose(u, x @ W + b, rtol=1e-14)
    assert dict((n, t(p)) for n, p, t in named)["W1"].shape == (2, 4)


def test_spec_numbers_layers_like_tracer():
    raw = {"layers": [
        {"units": 3, "activation": "identity", "init": "explicit", "weights": np.ones((2, 3)).tolist(),
         "bias": [0.0] * 3, "train_bias": False},
        {"kind": "layernorm", "activation": "tanh"},
        {"units": 1, "activation": "sigmoid", "init": "explicit", "weights": np.ones((3, 1)).tolist(), "bias": [0.0]},
    ]}
    _, named = ref.build_modules(ref.spec_from_scenario(raw), 2)
    assert [n for n, _, _ in named] == ["W1", "b1", "gamma2", "beta2", "W3", "b3"]
    assert [p.requires_grad for _, p, _ in named] == [True, False, True, True, True, True]


# --- layer and batch normalisation against the formulas -----------------------------------------

def _norm_backward(x, gamma, delta, eps, axis):
    """DESIGN-11's layernorm (axis=1: per sample over units) / README's batchnorm (axis=0: per
    unit over the batch) in numpy: forward u = γ·x̂ + β, backward dx̂ = δ·γ, m1 = mean(dx̂),
    m2 = mean(dx̂·x̂), ∂E/∂x = (dx̂ − m1 − x̂·m2)/√(σ² + eps); ∂E/∂γ = Σ δ·x̂, ∂E/∂β = Σ δ."""
    n = x.shape[axis]
    mu = x.sum(axis=axis, keepdims=True) / n
    var = ((x - mu) ** 2).sum(axis=axis, keepdims=True) / n          # biased
    xhat = (x - mu) / np.sqrt(var + eps)
    dxhat = delta * gamma
    m1 = dxhat.sum(axis=axis, keepdims=True) / n
    m2 = (dxhat * xhat).sum(axis=axis, keepdims=True) / n
    dx = (dxhat - m1 - xhat * m2) / np.sqrt(var + eps)
    return xhat, dx, (delta * xhat).sum(axis=0), delta.sum(axis=0)


@pytest.mark.parametrize("kind", ["layernorm", "batchnorm"])
@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_norm_reference_equals_the_formula(kind, eps):
    rng = _rng(1)
    x = rng.normal(loc=0.7, scale=2.0, size=(5, 4))
    gamma, beta, delta = rng.normal(size=4), rng.normal(size=4), rng.normal(size=(5, 4))
    modules, named = ref.build_modules([{"kind": kind, "eps": eps}], 4)
    norm = modules[0].train()
    with torch.no_grad():
        norm.weight.copy_(ref.tensor(gamma))
        norm.bias.copy_(ref.tensor(beta))
    xt = ref.tensor(x).requires_grad_(True)
    u = norm(xt)
    (u * ref.tensor(delta)).sum().backward()          # E with ∂E/∂u = δ
    xhat, dx, dgamma, dbeta = _norm_backward(x, gamma, delta, eps, axis=1 if kind == "layernorm" else 0)
    assert _rel(u.detach().numpy(), gamma * xhat + beta) < 1e-13
    assert _rel(xt.grad.numpy(), dx) < 1e-11
    assert _rel(norm.weight.grad.numpy(), dgamma) < 1e-12
    assert _rel(norm.bias.grad.numpy(), dbeta) < 1e-13


def test_layernorm_works_with_one_sample_and_starts_at_gamma_1_beta_0():
    modules, named = ref.build_modules([{"kind": "layernorm"}], 3)
    params = {n: t(p) for n, p, t in named}
    assert params["gamma1"].tolist() == [1.0, 1.0, 1.0] and params["beta1"].tolist() == [0.0, 0.0, 0.0]
    x = np.array([[1.0, 2.0, 4.0]])
    u = modules[0](ref.tensor(x)).detach().numpy()
    xhat, *_ = _norm_backward(x, np.ones(3), np.zeros((1, 3)), 1e-5, axis=1)
    assert _rel(u, xhat) < 1e-14


# --- losses and optimisers against README's definitions ----------------------------------------

def test_losses_follow_readme():
    rng = _rng(2)
    u = rng.normal(size=(3, 4))
    t = rng.uniform(size=(3, 4))
    sig = 1 / (1 + np.exp(-u))
    soft = np.exp(u) / np.exp(u).sum(1, keepdims=True)
    expected = {
        "half_sse": 0.5 * ((t - sig) ** 2).sum(1),
        "sse": ((t - sig) ** 2).sum(1),
        "mse": ((t - sig) ** 2).mean(1),
        "bce": -(t * np.log(sig) + (1 - t) * np.log(1 - sig)).sum(1),
        "softmax_ce": -(t * np.log(soft)).sum(1),
    }
    for name, value in expected.items():
        y = soft if name == "softmax_ce" else sig
        got = ref.per_sample_loss(name, ref.tensor(u), ref.tensor(y), ref.tensor(t)).numpy()
        assert _rel(got, value) < 1e-13, name


def _readme_rule(name, hyper, grads, theta0):
    """README's optimiser rules in numpy, the state starting at 0, over a list of gradient
    functions g(θ) (one per step)."""
    h = {**ref.OPTIMIZER_DEFAULTS[name], **hyper}
    theta, state = theta0.copy(), {"b": 0.0, "s": 0.0, "v": 0.0, "m": 0.0}
    for step, grad in enumerate(grads):
        lr = h["lr"] * (h["gamma"] ** (step // h["step_size"]) if h.get("schedule") == "step" else 1.0)
        g = grad(theta) + h["weight_decay"] * theta
        if name == "sgd":
            delta = lr * g
        elif name == "momentum":
            state["b"] = h["momentum"] * state["b"] + g
            delta = lr * (g + h["momentum"] * state["b"]) if h["nesterov"] else lr * state["b"]
        elif name == "adagrad":
            state["s"] = state["s"] + g * g
            delta = lr * g / (np.sqrt(state["s"]) + h["eps"])
        elif name == "rmsprop":
            state["v"] = h["alpha"] * state["v"] + (1 - h["alpha"]) * g * g
            delta = lr * g / (np.sqrt(state["v"]) + h["eps"])
        else:
            t = step + 1
            state["m"] = h["beta1"] * state["m"] + (1 - h["beta1"]) * g
            state["v"] = h["beta2"] * state["v"] + (1 - h["beta2"]) * g * g
            m_hat, v_hat = state["m"] / (1 - h["beta1"] ** t), state["v"] / (1 - h["beta2"] ** t)
            delta = lr * m_hat / (np.sqrt(v_hat) + h["eps"])
        theta = theta - delta
    return theta


@pytest.mark.parametrize("name, hyper", [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "weight_decay": 0.05, "schedule": "step", "step_size": 2, "gamma": 0.5}),
    ("momentum", {"lr": 0.05}),
    ("momentum", {"lr": 0.05, "momentum": 0.7, "nesterov": True, "weight_decay": 0.01}),
    ("adagrad", {"lr": 0.2}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.9, "eps": 1e-6}),
    ("adam", {"lr": 0.03}),
    ("adam", {"lr": 0.03, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1}),
])
def test_optimizer_mapping_follows_readme_rules(name, hyper):
    """E = Σ c·θ³/3 + θ (gradient c·θ² + 1): torch's optimiser, mapped from tracer's names, takes
    the steps README's rules take."""
    c = np.array([0.5, -1.5, 2.0])
    theta0 = np.array([0.3, -0.8, 1.1])
    theta = torch.nn.Parameter(ref.tensor(theta0))
    opt = ref.make_optimizer(name, [theta], hyper)
    schedule = ref.make_schedule(opt, hyper)
    for _ in range(6):
        opt.zero_grad()
        (ref.tensor(c) * theta ** 3 / 3 + theta).sum().backward()
        opt.step()
        if schedule is not None:
            schedule.step()
    expected = _readme_rule(name, hyper, [lambda th: c * th ** 2 + 1] * 6, theta0)
    assert _rel(theta.detach().numpy(), expected) < 1e-12


def test_clip_norm_follows_readme():
    """g ← g·min(1, clip_norm/(‖g‖ + 1e-6)) over all trained parameters, then the clamp."""
    rng = _rng(3)
    spec = [{"kind": "linear", "weights": rng.normal(size=(2, 3)), "bias": rng.normal(size=3)},
            {"kind": "activation", "name": "tanh"},
            {"kind": "linear", "weights": rng.normal(size=(3, 1)), "bias": rng.normal(size=1)}]
    x, t = rng.normal(size=(4, 2)), rng.normal(size=(4, 1))
    run = ref.train_torch(spec, x, t, "half_sse", "sum", "sgd", {"lr": 0.1}, 1, clip_norm=0.5, clip_value=0.05)
    g = run.grads[0]
    norm = math.sqrt(sum(float((v ** 2).sum()) for v in g.values()))
    factor = min(1.0, 0.5 / (norm + 1e-6))
    assert factor < 1
    for name, v in g.items():
        assert _rel(run.clipped[0][name], np.clip(v * factor, -0.05, 0.05)) < 1e-13


# --- train_torch and rnn_reference against finite differences -----------------------------------

def _central_difference(loss_of, params, name, index, h=1e-6):
    plus = {k: v.copy() for k, v in params.items()}
    minus = {k: v.copy() for k, v in params.items()}
    plus[name][index] += h
    minus[name][index] -= h
    return (loss_of(plus) - loss_of(minus)) / (2 * h)


@pytest.mark.parametrize("loss, reduction", [("half_sse", "sum"), ("mse", "mean"), ("bce", "mean"), ("softmax_ce", "sum")])
def test_train_torch_gradients_by_finite_differences(loss, reduction):
    rng = _rng(4)
    out = "softmax" if loss == "softmax_ce" else "sigmoid"
    x = rng.normal(size=(5, 3))
    t = rng.dirichlet(np.ones(3), size=5) if loss == "softmax_ce" else rng.uniform(size=(5, 3))

    def spec_of(p):
        return [{"kind": "linear", "weights": p["W1"], "bias": p["b1"]}, {"kind": "activation", "name": "identity"},
                {"kind": "layernorm", "eps": 1e-5}, {"kind": "activation", "name": "tanh"},
                {"kind": "linear", "weights": p["W3"], "bias": p["b3"]}, {"kind": "activation", "name": out}]

    params = {"W1": rng.normal(size=(3, 4)), "b1": rng.normal(size=4), "W3": rng.normal(size=(4, 3)), "b3": rng.normal(size=3)}
    run = ref.train_torch(spec_of(params), x, t, loss, reduction, "sgd", {"lr": 0.1}, 1)

    def loss_of(p):
        return ref.train_torch(spec_of(p), x, t, loss, reduction, "sgd", {"lr": 0.1}, 1).losses[0]

    for name in params:
        for index in np.ndindex(params[name].shape):
            fd = _central_difference(loss_of, params, name, index)
            assert abs(run.grads[0][name][index] - fd) <= 1e-7 * max(1.0, abs(fd)), (name, index)
    assert _rel(run.params[1]["W1"], params["W1"] - 0.1 * run.grads[0]["W1"]) < 1e-14


def _recurrent_weights(rng, cell, features, units, outputs):
    gates = ref.GATES[cell]
    return dict(weights=rng.uniform(-0.8, 0.8, (features, gates * units)),
                recurrent_weights=rng.uniform(-0.8, 0.8, (units, gates * units)),
                bias=rng.uniform(-0.3, 0.3, gates * units), recurrent_bias=rng.uniform(-0.3, 0.3, gates * units),
                head_weights=rng.uniform(-1, 1, (units, outputs)), head_bias=rng.uniform(-0.3, 0.3, outputs))


NAMES = {"W1": "weights", "Wh1": "recurrent_weights", "b1": "bias", "bh1": "recurrent_bias",
         "W2": "head_weights", "b2": "head_bias"}


@pytest.mark.parametrize("cell, activation", [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "sigmoid"),
                                              ("lstm", None), ("gru", None)])
@pytest.mark.parametrize("per_time", [False, True])
def test_rnn_reference_gradients_by_finite_differences(cell, activation, per_time):
    rng = _rng(5)
    x = rng.normal(size=(3, 4, 2))
    t = rng.normal(size=(3, 4, 2) if per_time else (3, 2))
    weights = _recurrent_weights(rng, cell, 2, 3, 2)
    kwargs = {"activation": activation} if activation else {}
    run = ref.rnn_reference(cell, x, t, **weights, **kwargs)

    def loss_of(p):
        return ref.rnn_reference(cell, x, t, **{NAMES[k]: v for k, v in p.items()}, **kwargs).losses[0]

    params = {name: np.array(weights[key], dtype=np.float64) for name, key in NAMES.items()}
    for name in params:
        for index in list(np.ndindex(params[name].shape))[:6]:
            fd = _central_difference(loss_of, params, name, index)
            assert abs(run.grads[0][name][index] - fd) <= 1e-7 * max(1.0, abs(fd)), (name, index)


# --- the hand-written recurrences equal nn.RNN / nn.LSTM / nn.GRU --------------------------------

@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_hand_written_elman_loop_equals_nn_rnn(activation):
    """Outputs, every gradient and the parameters after 5 Adam steps: the loop and nn.RNN agree."""
    rng = _rng(6)
    x = rng.normal(size=(4, 6, 3))
    t = rng.normal(size=(4, 2))
    weights = _recurrent_weights(rng, "rnn", 3, 3, 2)
    runs = [ref.rnn_reference("rnn", x, t, **weights, activation=activation, optimizer="adam",
                              hyper={"lr": 0.05}, steps=5, loop=loop) for loop in (False, True)]
    assert isinstance(ref.recurrent_module("rnn", 3, 3, activation), torch.nn.RNN)
    assert isinstance(ref.recurrent_module("rnn", 3, 3, activation, loop=True), ref.ElmanLoop)
    for step in range(5):
        assert _rel(runs[0].outputs[step], runs[1].outputs[step]) < 1e-13
        for name in NAMES:
            assert _rel(runs[0].grads[step][name], runs[1].grads[step][name]) < 1e-11, (step, name)
    for name in NAMES:
        assert _rel(runs[0].params[5][name], runs[1].params[5][name]) < 1e-11


@pytest.mark.parametrize("cell, hand", [("lstm", ref.lstm_forward), ("gru", ref.gru_forward)])
def test_gate_order_of_nn_lstm_and_gru_is_the_documented_one(cell, hand):
    """nn.LSTM stacks (i, f, g, o) and nn.GRU (r, z, n) exactly as the hand-written equations."""
    rng = _rng(7)
    x = ref.tensor(rng.normal(size=(3, 5, 2)))
    w = _recurrent_weights(rng, cell, 2, 3, 1)
    module = ref.recurrent_module(cell, 2, 3)
    with torch.no_grad():
        module.weight_ih_l0.copy_(ref.tensor(w["weights"].T))
        module.weight_hh_l0.copy_(ref.tensor(w["recurrent_weights"].T))
        module.bias_ih_l0.copy_(ref.tensor(w["bias"]))
        module.bias_hh_l0.copy_(ref.tensor(w["recurrent_bias"]))
    states, _ = module(x)
    mine = hand(x, module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0)
    assert _rel(states.detach().numpy(), mine.detach().numpy()) < 1e-13
    coefficients = ref.tensor(rng.normal(size=states.shape))
    grads = torch.autograd.grad((states * coefficients).sum(), list(module.parameters()))
    mine_grads = torch.autograd.grad((mine * coefficients).sum(), list(module.parameters()))
    for a, b in zip(grads, mine_grads):
        assert _rel(a.numpy(), b.numpy()) < 1e-11
    # and swapping two gates changes the result: the order is not a matter of indifference
    swapped = torch.cat([module.weight_ih_l0[3:6], module.weight_ih_l0[:3], module.weight_ih_l0[6:]])
    other = hand(x, swapped, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0)
    assert _rel(states.detach().numpy(), other.detach().numpy()) > 1e-3


def test_scalar_linear_rnn_multiplies_1_1_a_hundred_times():
    """The articles' case: h_t = 1.1·h_{t−1} (+ 0·x_t), so ∂h₁₀₀/∂h₀ = 1.1¹⁰⁰ ≈ 13,780.6."""
    by_hand = 1.0
    for _ in range(100):
        by_hand *= 1.1
    assert 13780.6 < by_hand < 13780.7                 # "over 10,000"
    h0 = ref.tensor([[0.5]]).requires_grad_(True)
    states = ref.elman_forward(ref.tensor(np.ones((1, 100, 1))), ref.tensor([[0.0]]), ref.tensor([[1.1]]),
                               ref.tensor([0.0]), ref.tensor([0.0]), activation="identity", h0=h0)
    assert states.shape == (1, 100, 1)
    (derivative,) = torch.autograd.grad(states[0, -1, 0], h0)
    assert abs(derivative.item() - by_hand) <= 1e-12 * by_hand
    assert abs(states[0, -1, 0].item() - 0.5 * by_hand) <= 1e-12 * by_hand
    # nn.RNN (relu) computes the same while h stays positive
    rnn = ref.recurrent_module("rnn", 1, 1, "relu")
    with torch.no_grad():
        rnn.weight_ih_l0.fill_(0.0)
        rnn.weight_hh_l0.fill_(1.1)
        rnn.bias_ih_l0.fill_(0.0)
        rnn.bias_hh_l0.fill_(0.0)
    h0_rnn = ref.tensor([[[0.5]]]).requires_grad_(True)
    out, _ = rnn(ref.tensor(np.ones((1, 100, 1))), h0_rnn)
    (derivative,) = torch.autograd.grad(out[0, -1, 0], h0_rnn)
    assert abs(derivative.item() - by_hand) <= 1e-12 * by_hand
