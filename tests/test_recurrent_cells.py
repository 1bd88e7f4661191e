"""The recurrent cells' numpy maths (tracer/layers/recurrent/rnn.py, lstm.py, gru.py) against independent
numbers: central finite differences of a scalar loss, torch.nn.RNN / LSTM / GRU and torch's own
cells in float64, a hand-written torch loop for the other activations, plain Python sums written
in the documented order (bit for bit), and 1.1¹⁰⁰ computed exactly with fractions."""
from fractions import Fraction
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tracer.maths import activations
from tracer.layers import gru, lstm, rnn

torch = pytest.importorskip("torch")
functional = torch.nn.functional

CELLS = {"rnn": rnn, "lstm": lstm, "gru": gru}
TORCH_MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
TORCH_CELLS = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}
PARAMS = ("W", "Wh", "b", "bh")
RELATIVE = 1e-9
ACTIVATION_PARAMS = {"leaky_relu": {"slope": 0.07}, "elu": {"alpha": 1.3}}
# torch's forms of the elementwise activations, for the hand-written torch loop
TORCH_ACTIVATIONS = {
    "identity": lambda u: u,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": lambda u: functional.leaky_relu(u, 0.07),
    "elu": lambda u: functional.elu(u, 1.3),
    "silu": functional.silu,
    "gelu": functional.gelu,            # the exact (erf) form, as tracer's
    "softplus": lambda u: torch.log1p(torch.exp(u)),   # no threshold: the inputs stay small
}
ELEMENTWISE = [name for name, a in activations.ACTIVATIONS.items() if a.elementwise]


def gates(kind):
    return len(CELLS[kind].GATES)


def problem(kind, seed, batch=3, steps=6, features=2, units=3, scale=0.6):
    """Random explicit weights, a random sequence, and a loss reading some time steps:
    E = Σ_{s,t,j} mask[s,t]·(h_t[j] − y_t[j])²/2, so dE_dh = mask·(h − y)."""
    rng = np.random.default_rng(seed)
    columns = gates(kind) * units
    weights = {
        "W": rng.normal(size=(features, columns)) * scale,
        "Wh": rng.normal(size=(units, columns)) * scale,
        "b": rng.normal(size=columns) * 0.3,
        "bh": rng.normal(size=columns) * 0.3,
    }
    x = rng.normal(size=(batch, steps, features))
    y = rng.normal(size=(batch, steps, units))
    mask = (rng.random((batch, steps, 1)) < 0.5).astype(float)
    mask[:, -1] = 1.0
    return weights, x, y, mask


def run_cell(kind, weights, x, y, mask, activation="tanh"):
    cell = CELLS[kind]
    extra = {"activation": activation, "params": ACTIVATION_PARAMS.get(activation)} if kind == "rnn" else {}
    record = cell.forward(x, weights["W"], weights["Wh"], weights["b"], weights["bh"], **extra)
    return cell.backward(record, mask * (record["h"] - y), weights["W"], weights["Wh"])


def loss(kind, weights, x, y, mask, activation="tanh"):
    cell = CELLS[kind]
    extra = {"activation": activation, "params": ACTIVATION_PARAMS.get(activation)} if kind == "rnn" else {}
    h = cell.forward(x, weights["W"], weights["Wh"], weights["b"], weights["bh"], **extra)["h"]
    return float(np.sum(mask * (h - y) ** 2) / 2)


def relative_difference(ours, reference):
    """max |ours − reference| / max |reference| over the array (the array's scale)."""
    reference = np.asarray(reference)
    return float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-300))


def assert_close(ours, reference, what):
    """Every entry within 1e-9 relative to itself, or to 1e-9 of the array's scale where it is tiny."""
    reference = np.asarray(reference)
    scale = max(np.max(np.abs(reference)), 1e-300)
    np.testing.assert_allclose(ours, reference, rtol=RELATIVE, atol=RELATIVE * 1e-3 * scale, err_msg=what)


# ---- torch references ------------------------------------------------------------------------

def torch_module_gradients(kind, weights, x, y, mask, nonlinearity="tanh"):
    """h and the batch-summed gradients from torch.nn.RNN/LSTM/GRU (batch_first, float64)."""
    features, units = x.shape[2], weights["Wh"].shape[0]
    extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    module = TORCH_MODULES[kind](features, units, batch_first=True, dtype=torch.float64, **extra)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.tensor(weights["W"].T))
        module.weight_hh_l0.copy_(torch.tensor(weights["Wh"].T))
        module.bias_ih_l0.copy_(torch.tensor(weights["b"]))
        module.bias_hh_l0.copy_(torch.tensor(weights["bh"]))
    inputs = torch.tensor(x, requires_grad=True)
    h, _ = module(inputs)
    (0.5 * (torch.tensor(mask) * (h - torch.tensor(y)) ** 2).sum()).backward()
    return h.detach().numpy(), {
        "W": module.weight_ih_l0.grad.numpy().T, "Wh": module.weight_hh_l0.grad.numpy().T,
        "b": module.bias_ih_l0.grad.numpy(), "bh": module.bias_hh_l0.grad.numpy(),
        "x": inputs.grad.numpy(),
    }


def torch_cell_loop(kind, weights, x, y, mask, sample, nonlinearity="tanh"):
    """One sample through torch's own cell (nn.RNNCell/LSTMCell/GRUCell), step by step, with a
    fresh leaf copy of every parameter per time step: its gradient is that step's contribution.
    Returns per-time gradients (T, …) and ∂E/∂h_t, ∂E/∂c_t in full (retained on each state)."""
    features, units = x.shape[2], weights["Wh"].shape[0]
    extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    cell = TORCH_CELLS[kind](features, units, dtype=torch.float64, **extra)
    steps = x.shape[1]
    copies = [{"weight_ih": torch.tensor(weights["W"].T, requires_grad=True),
               "weight_hh": torch.tensor(weights["Wh"].T, requires_grad=True),
               "bias_ih": torch.tensor(weights["b"], requires_grad=True),
               "bias_hh": torch.tensor(weights["bh"], requires_grad=True)} for _ in range(steps)]
    h = torch.zeros(1, units, dtype=torch.float64)
    c = torch.zeros(1, units, dtype=torch.float64)
    hs, cs, total = [], [], 0.0
    for t in range(steps):
        x_t = torch.tensor(x[sample:sample + 1, t])
        if kind == "lstm":
            h, c = torch.func.functional_call(cell, copies[t], (x_t, (h, c)))
            c.retain_grad()
            cs.append(c)
        else:
            h = torch.func.functional_call(cell, copies[t], (x_t, h))
        h.retain_grad()
        hs.append(h)
        total = total + 0.5 * mask[sample, t, 0] * ((h - torch.tensor(y[sample:sample + 1, t])) ** 2).sum()
    total.backward()
    per_time = {
        "W": np.stack([p["weight_ih"].grad.numpy().T for p in copies]),
        "Wh": np.stack([p["weight_hh"].grad.numpy().T for p in copies]),
        "b": np.stack([p["bias_ih"].grad.numpy() for p in copies]),
        "bh": np.stack([p["bias_hh"].grad.numpy() for p in copies]),
    }
    e = np.stack([state.grad.numpy()[0] for state in hs])
    ec = np.stack([state.grad.numpy()[0] for state in cs]) if kind == "lstm" else None
    return per_time, e, ec


def torch_rnn_loop(weights, x, y, mask, activation):
    """A hand-written torch Elman loop h_t = f(x_t W + b + h_{t−1} Wh + bh) for any activation."""
    f = TORCH_ACTIVATIONS[activation]
    leaves = {name: torch.tensor(value, requires_grad=True) for name, value in weights.items()}
    inputs = torch.tensor(x, requires_grad=True)
    h = torch.zeros(x.shape[0], weights["Wh"].shape[0], dtype=torch.float64)
    total = 0.0
    for t in range(x.shape[1]):
        h = f(inputs[:, t] @ leaves["W"] + leaves["b"] + h @ leaves["Wh"] + leaves["bh"])
        total = total + 0.5 * (torch.tensor(mask[:, t]) * (h - torch.tensor(y[:, t])) ** 2).sum()
    total.backward()
    return {**{name: leaf.grad.numpy() for name, leaf in leaves.items()}, "x": inputs.grad.numpy()}


# ---- parity with torch ---------------------------------------------------------------------------

TORCH_CASES = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)]


@pytest.mark.parametrize("kind,nonlinearity", TORCH_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_gradient_matches_torch_module(kind, nonlinearity, seed):
    weights, x, y, mask = problem(kind, seed, batch=4, steps=7, features=3, units=4)
    ours = run_cell(kind, weights, x, y, mask, nonlinearity or "tanh")
    h, theirs = torch_module_gradients(kind, weights, x, y, mask, nonlinearity or "tanh")
    assert_close(ours["h"], h, "h")
    for name in PARAMS:
        assert ours[f"grad_{name}"].shape == (4,) + weights[name].shape
        assert_close(ours[f"grad_{name}"].sum(axis=0), theirs[name], name)   # per-sample → batch
    assert_close(ours["dx"], theirs["x"], "dx")


@pytest.mark.parametrize("kind,nonlinearity", TORCH_CASES)
def test_per_time_contributions_and_error_through_time_match_torch_cells(kind, nonlinearity):
    weights, x, y, mask = problem(kind, 5, batch=2, steps=5, features=2, units=3)
    ours = run_cell(kind, weights, x, y, mask, nonlinearity or "tanh")
    for sample in range(2):
        per_time, e, ec = torch_cell_loop(kind, weights, x, y, mask, sample, nonlinearity or "tanh")
        for name in PARAMS:
            assert ours[f"grad_{name}_time"].shape == (2, 5) + weights[name].shape
            assert_close(ours[f"grad_{name}_time"][sample], per_time[name], f"{name} per time step")
        assert_close(ours["e"][sample], e, "e = ∂E/∂h_t")
        if kind == "lstm":
            assert_close(ours["ec"][sample], ec, "ec = ∂E/∂c_t")


@pytest.mark.parametrize("activation", ELEMENTWISE)
def test_rnn_with_any_activation_matches_a_torch_loop(activation):
    weights, x, y, mask = problem("rnn", 3, batch=3, steps=6, features=2, units=3)
    ours = run_cell("rnn", weights, x, y, mask, activation)
    theirs = torch_rnn_loop(weights, x, y, mask, activation)
    for name in PARAMS:
        assert_close(ours[f"grad_{name}"].sum(axis=0), theirs[name], name)
    assert_close(ours["dx"], theirs["x"], "dx")


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(sorted(CELLS)), seed=st.integers(0, 2**16),
       batch=st.integers(1, 3), steps=st.integers(1, 6), features=st.integers(1, 3), units=st.integers(1, 3))
def test_torch_parity_for_any_shape(kind, seed, batch, steps, features, units):
    weights, x, y, mask = problem(kind, seed, batch, steps, features, units)
    ours = run_cell(kind, weights, x, y, mask)
    h, theirs = torch_module_gradients(kind, weights, x, y, mask)
    assert_close(ours["h"], h, "h")
    for name in PARAMS:
        assert_close(ours[f"grad_{name}"].sum(axis=0), theirs[name], name)
    assert_close(ours["dx"], theirs["x"], "dx")


def test_lstm_and_gru_stacked_on_an_rnn_pass_the_error_down():
    """dx of the upper cell is dE_dh of the lower one: the gradient of a stacked pair matches
    torch's two-layer composition (the x-gradient of the top module fed into the bottom one)."""
    bottom, x, y, _ = problem("rnn", 11, batch=2, steps=4, features=2, units=3)
    for kind in ("lstm", "gru"):
        top, _, y_top, mask = problem(kind, 12, batch=2, steps=4, features=3, units=2)
        lower = rnn.forward(x, bottom["W"], bottom["Wh"], bottom["b"], bottom["bh"])
        upper = CELLS[kind].forward(lower["h"], top["W"], top["Wh"], top["b"], top["bh"])
        upper = CELLS[kind].backward(upper, mask * (upper["h"] - y_top), top["W"], top["Wh"])
        lower = rnn.backward(lower, upper["dx"], bottom["W"], bottom["Wh"])
        stack = [torch.nn.RNN(2, 3, batch_first=True, dtype=torch.float64),
                 TORCH_MODULES[kind](3, 2, batch_first=True, dtype=torch.float64)]
        with torch.no_grad():
            for module, w in zip(stack, (bottom, top)):
                module.weight_ih_l0.copy_(torch.tensor(w["W"].T))
                module.weight_hh_l0.copy_(torch.tensor(w["Wh"].T))
                module.bias_ih_l0.copy_(torch.tensor(w["b"]))
                module.bias_hh_l0.copy_(torch.tensor(w["bh"]))
        inputs = torch.tensor(x, requires_grad=True)
        h = stack[1](stack[0](inputs)[0])[0]
        (0.5 * (torch.tensor(mask) * (h - torch.tensor(y_top)) ** 2).sum()).backward()
        assert_close(lower["grad_Wh"].sum(axis=0), stack[0].weight_hh_l0.grad.numpy().T, "bottom Wh")
        assert_close(lower["grad_W"].sum(axis=0), stack[0].weight_ih_l0.grad.numpy().T, "bottom W")
        assert_close(lower["dx"], inputs.grad.numpy(), "input")


def hand_written_reference(kind, weights, x, y, mask, activation):
    """Gradients through the torch-ref helper's hand-written equations (tests/torch_reference.py,
    written from PyTorch's documentation), by torch autograd."""
    ref = pytest.importorskip("torch_reference")
    leaves = {name: torch.tensor(value.T if value.ndim == 2 else value, requires_grad=True)
              for name, value in weights.items()}
    inputs = torch.tensor(x, requires_grad=True)
    args = (inputs, leaves["W"], leaves["Wh"], leaves["b"], leaves["bh"])
    if kind == "rnn":
        h = ref.elman_forward(*args, activation=activation, params=ACTIVATION_PARAMS.get(activation))
    else:
        h = {"lstm": ref.lstm_forward, "gru": ref.gru_forward}[kind](*args)
    (0.5 * (torch.tensor(mask) * (h - torch.tensor(y)) ** 2).sum()).backward()
    grads = {name: leaf.grad.numpy().T if leaf.dim() == 2 else leaf.grad.numpy() for name, leaf in leaves.items()}
    return h.detach().numpy(), {**grads, "x": inputs.grad.numpy()}


@pytest.mark.parametrize("kind,activation", [("rnn", name) for name in ELEMENTWISE] + [("lstm", None), ("gru", None)])
def test_every_gradient_matches_the_hand_written_torch_reference(kind, activation):
    weights, x, y, mask = problem(kind, 13, batch=3, steps=5, features=2, units=3)
    ours = run_cell(kind, weights, x, y, mask, activation or "tanh")
    h, theirs = hand_written_reference(kind, weights, x, y, mask, activation or "tanh")
    assert_close(ours["h"], h, "h")
    for name in PARAMS:
        assert_close(ours[f"grad_{name}"].sum(axis=0), theirs[name], name)
    assert_close(ours["dx"], theirs["x"], "dx")


# ---- finite differences -------------------------------------------------------------------------

def numeric_derivative(function, value, h):
    """Central difference with one Richardson step: D(h/2) + (D(h/2) − D(h))/3, error O(h⁴)."""
    def central(step):
        return (function(value + step) - function(value - step)) / (2 * step)
    half = central(h / 2)
    return half + (half - central(h)) / 3


def finite_difference_gradients(kind, weights, x, y, mask, activation):
    """∂E/∂θ for every entry of W, Wh, b, bh and x, by perturbing one entry at a time."""
    out = {}
    for name, array in list(weights.items()) + [("x", x)]:
        grad = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            def at(value, name=name, index=index):
                changed = {k: v.copy() for k, v in weights.items()}
                inputs = x.copy()
                (inputs if name == "x" else changed[name])[index] = value
                return loss(kind, changed, inputs, y, mask, activation)
            h = 1e-4 * max(1.0, abs(array[index]))
            grad[index] = numeric_derivative(at, array[index], h)
        out[name] = grad
    return out


FD_CASES = [("rnn", name) for name in ("identity", "tanh", "relu", "sigmoid", "leaky_relu", "elu", "silu",
                                       "gelu", "softplus")] + [("lstm", None), ("gru", None)]


@pytest.mark.parametrize("kind,activation", FD_CASES)
def test_every_gradient_matches_finite_differences(kind, activation):
    weights, x, y, mask = problem(kind, 7, batch=2, steps=4, features=2, units=2)
    ours = run_cell(kind, weights, x, y, mask, activation or "tanh")
    if activation is not None and activations.get(activation).piecewise:
        # the ±h perturbations must not cross a kink: every u is far from 0 here
        assert np.min(np.abs(ours["u"])) > 1e-2
    numeric = finite_difference_gradients(kind, weights, x, y, mask, activation or "tanh")
    scale = max(np.max(np.abs(numeric[name])) for name in numeric)
    for name in PARAMS:
        np.testing.assert_allclose(ours[f"grad_{name}"].sum(axis=0), numeric[name],
                                   rtol=1e-7, atol=1e-9 * scale, err_msg=name)
    np.testing.assert_allclose(ours["dx"], numeric["x"], rtol=1e-7, atol=1e-9 * scale, err_msg="x")


def test_finite_differences_of_the_error_through_time():
    """e_t = ∂E/∂h_t in full, checked by perturbing h_t inside the recurrence of a scalar rnn
    written out by hand (h_t + ε feeds step t+1 and the loss)."""
    weights, x, y, mask = problem("rnn", 9, batch=1, steps=5, features=1, units=1)
    ours = run_cell("rnn", weights, x, y, mask, "tanh")
    W, Wh, b, bh = (float(np.ravel(weights[k])[0]) for k in PARAMS)

    def loss_with(shift_at, epsilon):
        h, total = 0.0, 0.0
        for t in range(5):
            h = math.tanh(x[0, t, 0] * W + b + h * Wh + bh) + (epsilon if t == shift_at else 0.0)
            total += mask[0, t, 0] * (h - y[0, t, 0]) ** 2 / 2
        return total

    for t in range(5):
        numeric = numeric_derivative(lambda epsilon: loss_with(t, epsilon), 0.0, 1e-4)
        assert ours["e"][0, t, 0] == pytest.approx(numeric, rel=1e-7, abs=1e-12)


# ---- the articles' case: 1.1 multiplied 100 times ------------------------------------------------

def test_linear_rnn_multiplies_the_error_by_1_1_per_step():
    """Scalar linear rnn, Wh = 1.1, 101 time steps h_0 … h_100: ∂h_100/∂h_0 = 1.1¹⁰⁰ ≈ 13,780.6."""
    exact = float(Fraction(11, 10) ** 100)          # computed independently of the engine
    assert exact == pytest.approx(13780.6123398, rel=1e-11)
    assert 1.1 ** 100 == pytest.approx(exact, rel=1e-13)
    x = np.full((1, 101, 1), 0.5)
    record = rnn.forward(x, [[1.0]], [[1.1]], [0.0], [0.0], activation="identity")
    seed = np.zeros((1, 101, 1))
    seed[0, 100, 0] = 1.0                            # E = h_100: e_t = ∂h_100/∂h_t
    result = rnn.backward(record, seed, [[1.0]], [[1.1]])
    assert result["e"][0, 0, 0] == pytest.approx(exact, rel=1e-12)
    factors = rnn.step_factors(record, [[1.1]])[0, 1:, 0, 0]     # Wh·f'(u_t) for t = 1 … 100
    assert np.all(factors == 1.1)
    assert math.prod(factors) == pytest.approx(exact, rel=1e-12)
    # ∂E/∂Wh = Σ_t h_{t−1}·e_t: the first step's error is 1.1¹⁰⁰ times the last's
    assert result["e"][0, 0, 0] / result["e"][0, 100, 0] == pytest.approx(exact, rel=1e-12)


def test_tanh_rnn_with_a_small_recurrent_weight_vanishes_through_time():
    """The vanishing counterpart: |∂h_T/∂h_0| ≤ |Wh|^T since |tanh'| ≤ 1 (an independent bound)."""
    steps, Wh = 50, 0.5
    x = np.random.default_rng(3).normal(size=(1, steps, 1))
    record = rnn.forward(x, [[1.0]], [[Wh]], [0.1], [0.0], activation="tanh")
    seed = np.zeros((1, steps, 1))
    seed[0, -1, 0] = 1.0
    result = rnn.backward(record, seed, [[1.0]], [[Wh]])
    assert 0 < abs(result["e"][0, 0, 0]) <= Wh ** (steps - 1)
    # the first time step's contribution to ∂E/∂W (x_0·δ_0) is below 1e-7 of the last's; to ∂E/∂Wh
    # the first is h₋₁·δ_0 = 0 exactly, the second below 1e-7 of the last's
    for_W = np.abs(result["grad_W_time"][0, :, 0, 0])
    assert 0 < for_W[0] < 1e-7 * for_W[-1]
    for_Wh = np.abs(result["grad_Wh_time"][0, :, 0, 0])
    assert for_Wh[0] == 0 and 0 < for_Wh[1] < 1e-7 * for_Wh[-1]


# ---- the order of arithmetic: plain Python in the documented order, bit for bit -------------------

def python_sum(terms):
    total = None
    for term in terms:
        total = term if total is None else total + term
    return total


def test_rnn_sums_follow_the_documented_order_bit_for_bit():
    weights, x, y, mask = problem("rnn", 21, batch=2, steps=4, features=3, units=3)
    W, Wh, b, bh = (weights[k].tolist() for k in PARAMS)
    out = run_cell("rnn", weights, x, y, mask, "identity")
    h, e = out["h"].tolist(), out["e"].tolist()
    delta = out["delta"].tolist()
    dE_dh = (mask * (out["h"] - y)).tolist()
    for s in range(2):
        for t in range(4):
            prev = h[s][t - 1] if t else [0.0] * 3
            for j in range(3):
                u = python_sum([x[s, t, i] * W[i][j] for i in range(3)] + [b[j]]
                               + [prev[k] * Wh[k][j] for k in range(3)] + [bh[j]])
                assert out["u"][s, t, j] == u
                through = python_sum([Wh[j][m] * delta[s][t + 1][m] for m in range(3)]) if t < 3 else None
                assert e[s][t][j] == (dE_dh[s][t][j] if t == 3 else dE_dh[s][t][j] + through)
            for i in range(3):
                assert out["dx"][s, t, i] == python_sum([W[i][m] * delta[s][t][m] for m in range(3)])
        for k in range(3):
            for m in range(3):
                assert out["grad_Wh"][s, k, m] == python_sum(
                    [(h[s][t - 1][k] if t else 0.0) * delta[s][t][m] for t in range(4)])


def test_lstm_arithmetic_follows_the_documented_order_bit_for_bit():
    weights, x, y, mask = problem("lstm", 22, batch=1, steps=3, features=2, units=2)
    out = run_cell("lstm", weights, x, y, mask)
    W, Wh, b, bh = (weights[k].tolist() for k in PARAMS)
    dE_dh = (mask * (out["h"] - y))[0].tolist()
    delta = out["delta_x"][0].tolist()
    v = {name: out[name][0].tolist() for name in ("i", "f", "g", "o", "slope_i", "slope_f", "slope_g",
                                                   "slope_o", "c", "tanh_c", "slope_c", "h", "e", "ec")}
    for t in range(3):
        prev_h = v["h"][t - 1] if t else [0.0, 0.0]
        prev_c = v["c"][t - 1] if t else [0.0, 0.0]
        for k, gate in enumerate(lstm.GATES):
            for j in range(2):
                m = 2 * k + j
                u = python_sum([x[0, t, i] * W[i][m] for i in range(2)] + [b[m]]
                               + [prev_h[q] * Wh[q][m] for q in range(2)] + [bh[m]])
                assert out[f"u_{gate}"][0, t, j] == u
        for j in range(2):
            assert v["c"][t][j] == v["f"][t][j] * prev_c[j] + v["i"][t][j] * v["g"][t][j]
            assert v["h"][t][j] == v["o"][t][j] * v["tanh_c"][t][j]
            e = v["e"][t][j]
            if t == 2:
                assert e == dE_dh[t][j]
                assert v["ec"][t][j] == e * v["o"][t][j] * v["slope_c"][t][j]
            else:
                assert e == dE_dh[t][j] + python_sum([Wh[j][m] * delta[t + 1][m] for m in range(8)])
                assert v["ec"][t][j] == (e * v["o"][t][j] * v["slope_c"][t][j]
                                         + v["ec"][t + 1][j] * v["f"][t + 1][j])
            ec = v["ec"][t][j]
            assert delta[t][j] == ec * v["g"][t][j] * v["slope_i"][t][j]
            assert delta[t][2 + j] == ec * prev_c[j] * v["slope_f"][t][j]
            assert delta[t][4 + j] == ec * v["i"][t][j] * v["slope_g"][t][j]
            assert delta[t][6 + j] == e * v["tanh_c"][t][j] * v["slope_o"][t][j]


def test_gru_arithmetic_follows_the_documented_order_bit_for_bit():
    weights, x, y, mask = problem("gru", 23, batch=1, steps=3, features=2, units=2)
    out = run_cell("gru", weights, x, y, mask)
    W, Wh, b, bh = (weights[k].tolist() for k in PARAMS)
    dE_dh = (mask * (out["h"] - y))[0].tolist()
    delta_h = out["delta_h"][0].tolist()
    v = {name: out[name][0].tolist() for name in ("r", "z", "n", "slope_r", "slope_z", "slope_n", "hn", "h", "e")}
    for t in range(3):
        prev = v["h"][t - 1] if t else [0.0, 0.0]
        for j in range(2):
            for k, gate in enumerate("rz"):
                m = 2 * k + j
                u = python_sum([x[0, t, i] * W[i][m] for i in range(2)] + [b[m]]
                               + [prev[q] * Wh[q][m] for q in range(2)] + [bh[m]])
                assert out[f"u_{gate}"][0, t, j] == u
            hn = python_sum([prev[q] * Wh[q][4 + j] for q in range(2)] + [bh[4 + j]])
            assert v["hn"][t][j] == hn
            x_part = python_sum([x[0, t, i] * W[i][4 + j] for i in range(2)] + [b[4 + j]])
            assert out["u_n"][0, t, j] == x_part + v["r"][t][j] * hn
            z, n = v["z"][t][j], v["n"][t][j]
            assert v["h"][t][j] == (1 - z) * n + z * prev[j]
            e = v["e"][t][j]
            if t == 2:
                assert e == dE_dh[t][j]
            else:
                through = python_sum([Wh[j][m] * delta_h[t + 1][m] for m in range(6)]) + v["e"][t + 1][j] * v["z"][t + 1][j]
                assert e == dE_dh[t][j] + through
            delta_n = e * (1 - z) * v["slope_n"][t][j]
            assert out["delta_n"][0, t, j] == delta_n
            assert out["delta_z"][0, t, j] == e * (prev[j] - n) * v["slope_z"][t][j]
            assert out["delta_r"][0, t, j] == delta_n * hn * v["slope_r"][t][j]
            assert out["delta_hn"][0, t, j] == delta_n * v["r"][t][j]


# ---- records, shapes, overflow -------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(CELLS))
def test_record_names_and_shapes(kind):
    weights, x, y, mask = problem(kind, 4, batch=2, steps=3, features=2, units=3)
    out = run_cell(kind, weights, x, y, mask)
    cell = CELLS[kind]
    for name, _, _ in cell.FORWARD_QUANTITIES + cell.BACKWARD_QUANTITIES:
        assert out[name].shape == (2, 3, 3), name
    columns = gates(kind) * 3
    assert out["delta_x"].shape == out["delta_h"].shape == (2, 3, columns)
    assert out["grad_W_time"].shape == (2, 3, 2, columns) and out["grad_W"].shape == (2, 2, columns)
    assert out["grad_Wh_time"].shape == (2, 3, 3, columns) and out["grad_bh"].shape == (2, columns)
    assert out["dx"].shape == x.shape
    assert np.all(out["e_time"][:, -1] == 0)
    names = [q[0] for q in cell.FORWARD_QUANTITIES + cell.BACKWARD_QUANTITIES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("kind,activation", [("rnn", "identity"), ("rnn", "relu"), ("rnn", "sigmoid"),
                                             ("lstm", None), ("gru", None)])
def test_overflow_propagates_and_never_raises(kind, activation):
    """An input near the top of the double range at time step 2: x_2·W overflows to inf, every
    activation reading it is NaN (a spreadsheet error cell: ReLU and σ of an error are errors, not
    0 or 1), every later state and every gradient reading them is non-finite, the earlier states
    stay finite, and nothing raises: numpy reports the overflow."""
    weights, x, y, mask = problem(kind, 6, batch=2, steps=5, features=2, units=2)
    weights["W"] = np.abs(weights["W"]) + 2.0
    x = np.abs(x)
    x[:, 2, 0] = 1.5e308
    events = []
    with np.errstate(all="call", call=lambda kind, flag: events.append(kind)):
        out = run_cell(kind, weights, x, y, mask, activation or "tanh")
    assert "overflow" in events
    finite = np.isfinite(out["h"]).all(axis=2)
    assert finite[:, :2].all() and not finite[:, 2:].any()
    values = {"u": "h", "u_i": "i", "u_f": "f", "u_g": "g", "u_o": "o", "u_r": "r", "u_z": "z", "u_n": "n"}
    for name in (q[0] for q in CELLS[kind].FORWARD_QUANTITIES if q[0] in values):
        bad = ~np.isfinite(out[name])
        assert bad[:, 2].all()
        assert not np.isfinite(out[values[name]][bad]).any()
        assert not np.isfinite(out[name.replace("u", "slope")][bad]).any()
    for name in PARAMS:
        assert not np.isfinite(out[f"grad_{name}"]).any(), name
    assert not np.isfinite(out["dx"][:, :3]).any()


def test_tanh_of_an_infinite_input_is_nan_not_one():
    """IEEE gives tanh(inf) = 1; a spreadsheet's TANH of an error cell is an error: NaN here."""
    with np.errstate(all="ignore"):
        record = rnn.forward(np.array([[[1e308], [1e308]]]), [[10.0]], [[1.0]], [0.0], [0.0], activation="tanh")
    assert np.isinf(record["u"][0, 0, 0])
    assert np.isnan(record["h"][0, 0, 0]) and np.isnan(record["slope"][0, 0, 0])
    assert np.isnan(record["h"][0, 1, 0])


def test_bad_shapes_and_non_elementwise_activation_are_refused():
    x = np.zeros((1, 2, 3))
    with pytest.raises(ValueError, match="samples × time × features"):
        rnn.forward(np.zeros((2, 3)), np.zeros((3, 1)), np.zeros((1, 1)), np.zeros(1), np.zeros(1))
    with pytest.raises(ValueError, match="recurrent_weights must be 2 × 8"):
        lstm.forward(x, np.zeros((3, 8)), np.zeros((2, 2)), np.zeros(8), np.zeros(8))
    with pytest.raises(ValueError, match="weights must be features × 3·units"):
        gru.forward(x, np.zeros((3, 4)), np.zeros((1, 4)), np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="recurrent_bias must have 6 entries"):
        gru.forward(x, np.zeros((3, 6)), np.zeros((2, 6)), np.zeros(6), np.zeros(5))
    with pytest.raises(ValueError, match="elementwise"):
        rnn.forward(x, np.zeros((3, 2)), np.zeros((2, 2)), np.zeros(2), np.zeros(2), activation="softmax")
