"""The layer registry (tracer/layers/): every kind's numpy face against finite differences, the
scenario face of layernorm (a batch of 1, its one-line refusals), its records in the CSV, and
layernorm against torch.nn.LayerNorm in float64."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tracer.training import engine, records, scenario as scenario_module
from tracer.explain import gradcheck
from tracer import layers
from tracer.maths import procedures
from tracer.layers import Layer, base
from tracer.training.trace import Trace
from tests.conftest import assert_refused, build, write_toml

INPUTS = [[0.5, -1.0, 0.3], [1.5, 0.2, -0.4], [0.1, 0.7, 0.9], [-0.6, 0.4, 1.2]]
TARGETS = [[1.0], [0.0], [0.4], [0.8]]


def layer_of(kind, units, residual=False):
    return Layer(units=units, activation="identity", activation_params={}, init="uniform",
                 init_params={"low": -1.0, "high": 1.0}, weights=None, bias_init="constant", bias_params={"value": 0.0},
                 bias=None, train_bias=True, residual=residual, kind=kind, eps=1e-5)


# the kinds of one row per sample; the recurrent kinds (sequences) are tested in tests/test_recurrent.py
ROW_KINDS = [name for name, kind in layers.LAYERS.items() if not kind.recurrent]


def kind_cases():
    """(kind, residual) for every registered kind of rows, dense also with its residual skip."""
    return [(name, False) for name in ROW_KINDS] + [("dense", True)]


def numeric_gradient(function, array, h=1e-6):
    """Central differences of the scalar function() by every entry of `array` (changed in place)."""
    out = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + h
        up = function()
        array[index] = original - h
        down = function()
        array[index] = original
        out[index] = (up - down) / (2 * h)
    return out


@pytest.mark.parametrize("name,residual", kind_cases(), ids=[f"{n}{'-residual' if r else ''}" for n, r in kind_cases()])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 4))
def test_every_kind_backward_is_the_derivative_of_its_forward(name, residual, seed, batch):
    """With E = Σ c·u + Σ e·(the skip's share of a), δ = ∂E/∂u = c and the error arriving at the layer
    e = ∂E/∂a: kind.error_down must be ∂E/∂a⁽ˡ⁻¹⁾ and the batch sum of kind.gradients ∂E/∂W, ∂E/∂b,
    each against central differences of the kind's forward."""
    kind = layers.get(name)
    rng = np.random.default_rng(seed)
    fan_in = 3
    layer = layer_of(name, fan_in, residual)
    below = rng.normal(size=(batch, fan_in))
    W, b = (rng.normal(size=shape) for shape in kind.param_shapes(fan_in, layer.units))
    c, e = rng.normal(size=(batch, layer.units)), rng.normal(size=(batch, layer.units))

    def objective():
        u, _ = kind.forward(layer, below, W, b)
        return np.sum(c * u) + np.sum(e * kind.combine(layer, np.zeros_like(u), below))

    _, record = kind.forward(layer, below, W, b)
    kind.backward(layer, record, c, W)
    error = kind.error_down(layer, record, c, W, e)
    grad_W, grad_b = kind.gradients(layer, record, below, c)
    assert grad_W.shape == (batch,) + W.shape and grad_b.shape == (batch,) + b.shape
    np.testing.assert_allclose(error, numeric_gradient(objective, below), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_W.sum(axis=0), numeric_gradient(objective, W), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_b.sum(axis=0), numeric_gradient(objective, b), rtol=1e-6, atol=1e-8)


def network(kind, optimizer="sgd", steps=3, batch=2, activation="tanh"):
    """Linear (identity, no trained bias) → `kind` → f → a dense output: as the normalisation remedies
    are built (README, "Remedies")."""
    options = {"adam": {"betas": [0.8, 0.99]}, "momentum": {"nesterov": True}, "rmsprop": {"alpha": 0.9}}.get(optimizer, {})
    hidden = [{"kind": kind, "activation": activation}] if kind != "dense" else [{"units": 3, "activation": activation}]
    return {
        "seed": 2, "steps": steps, "data": {"inputs": INPUTS, "targets": TARGETS},
        "layers": [{"units": 3, "activation": "identity", "init": "xavier_uniform", "train_bias": False}] + hidden
        + [{"units": 1, "activation": "identity", "init": "xavier_uniform"}],
        "loss": {"name": "half_sse", "reduction": "mean"},
        "optimizer": dict({"name": optimizer, "lr": 0.05}, **options),
        "training": {"batch": batch},
    }


@pytest.mark.parametrize("name", ROW_KINDS)
def test_gradcheck_passes_on_a_net_of_every_kind(name):
    trace = build(network(name, steps=2))
    report = gradcheck.check(trace, steps=(0, 1))
    assert report.checks and report.worst.error < 1e-6, report.worst


def test_gradcheck_passes_on_a_layernorm_net_with_batches_of_one():
    trace = build(network("layernorm", steps=3, batch=1, activation="sigmoid"))
    report = gradcheck.check(trace, steps=(0, 1, 2))
    assert len(report.checks) == 3 * (9 + 3 + 3 + 3 + 3 + 1), report   # W1, b1, γ, β, W3, b3 at 3 steps
    assert report.worst.error < 1e-6, report.worst


def test_layernorm_forward_and_backward_by_hand():
    """μ, σ² per sample over the units (biased), x̂, u = γ·x̂ + β; the error passed down is
    (dx̂ − m1 − x̂·m2)/√(σ² + eps) with the per-sample m1, m2."""
    trace = build(network("layernorm"))
    x = trace.a[0][0, :2]                                   # step 0's batch entering layer 2
    mean, var = x.mean(axis=1), x.var(axis=1)
    xhat = (x - mean[:, None]) / np.sqrt(var[:, None] + 1e-5)
    np.testing.assert_allclose(trace.norm["mean"][1][0], mean, rtol=1e-14)
    np.testing.assert_allclose(trace.norm["var"][1][0], var, rtol=1e-13)
    np.testing.assert_allclose(trace.norm["xhat"][1][0], xhat, rtol=1e-12)
    np.testing.assert_allclose(trace.u[1][0], xhat)         # γ = 1, β = 0 at the start
    delta = trace.delta[1][0]
    m1, m2 = delta.mean(axis=1), (delta * xhat).mean(axis=1)
    np.testing.assert_allclose(trace.norm["m1"][1][0], m1, rtol=1e-12)
    expected = (delta - m1[:, None] - xhat * m2[:, None]) / np.sqrt(var[:, None] + 1e-5)
    np.testing.assert_allclose(trace.error[0][0], expected, rtol=1e-10)
    np.testing.assert_allclose(trace.grad_W[1][0, 0], (delta * xhat).mean(axis=0), rtol=1e-12)


def test_layernorm_records_in_the_csv_and_the_accessor():
    trace = build(network("layernorm", steps=2))
    rows = [row for row in trace.rows() if row[0] == 0 and row[1] == 0]
    by_name = {}
    for row in rows:
        by_name.setdefault(row[2], []).append(row)
    for name in ("ln_mean", "ln_var", "ln_m1", "ln_m2"):   # one per sample, row and col empty
        assert [(r[3], r[4], r[5]) for r in by_name[name]] == [(2, None, None)]
    assert [r[4] for r in by_name["xhat"]] == [0, 1, 2] and "gamma" in {r[2] for r in trace.rows()}
    assert "bn_mean" not in by_name
    below = trace.a[0][1, 1]                                 # step 1, slot 1
    value = trace.values(("ln_var", 2), "sample", np.array([1]), np.array([1]), np.array([0]))
    np.testing.assert_allclose(value, [below.var()], rtol=1e-13)
    parts = np.concatenate([t["value"] for t in trace.tables()])
    np.testing.assert_array_equal(parts, np.array([r[6] for r in trace.rows()]))


def test_layernorm_trace_bytes_are_what_allocate_takes():
    loaded = scenario_module.from_dict(network("layernorm", steps=4, batch=1))
    trace = Trace.allocate(loaded, engine.batch_schedule(loaded))
    assert records.bytes_needed(loaded, 4, 1) == trace.sample_ids.nbytes + sum(a.nbytes for a in trace.arrays.values())


def test_layernorm_window_keeps_its_records():
    trace = build(network("layernorm", steps=4, optimizer="adam"))
    window = trace.window(1, 2)
    np.testing.assert_array_equal(window.norm["mean"][1], trace.norm["mean"][1][1:3])
    np.testing.assert_array_equal(window.initial_state[("exp_avg", "W")][1], trace.state[("exp_avg", "W")][1][0])


# ------------------------------------------------------------------ scenario face

def test_layernorm_accepts_a_batch_of_one_and_batchnorm_refuses_it(tmp_path, invoke):
    loaded = scenario_module.from_dict(network("layernorm", batch=1))
    assert loaded.batch_size == 1 and loaded.layers[1].kind == "layernorm" and loaded.layers[1].units == 3
    path = write_toml(tmp_path, scenario_module.dump_toml(network("batchnorm", batch=1)))
    assert_refused(invoke("run", path, "--trace", tmp_path / "t.csv"), "training.batch",
                   "batchnorm (layers[1]) needs more than 1 sample in every batch")
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("edit,key,fragment", [
    ({"units": 5}, "layers[1].units", "a layernorm layer keeps the width of the layer below (3)"),
    ({"init": "normal"}, "layers[1].init", "does not apply to a layernorm layer"),
    ({"residual": True}, "layers[1].residual", "does not apply to a layernorm layer"),
    ({"eps": 0}, "layers[1].eps", "must be positive"),
    ({"eps": "small"}, "layers[1].eps", "must be a number"),
    ({"activation": "softmax"}, "layers[1].activation", "allowed on the output layer only"),
])
def test_layernorm_settings_are_refused_in_one_line(tmp_path, invoke, edit, key, fragment):
    raw = network("layernorm")
    raw["layers"][1].update(edit)
    path = write_toml(tmp_path, scenario_module.dump_toml(raw))
    assert_refused(invoke("run", path, "--trace", tmp_path / "t.csv"), f"{path}: {key}: ", fragment)
    assert not (tmp_path / "t.csv").exists()


def test_eps_on_a_dense_layer_names_the_kinds_it_applies_to(tmp_path, invoke):
    raw = network("dense")
    raw["layers"][1]["eps"] = 1e-3
    path = write_toml(tmp_path, scenario_module.dump_toml(raw))
    assert_refused(invoke("run", path, "--trace", tmp_path / "t.csv"), "layers[1].eps",
                   "applies to kind = \"batchnorm\" or \"layernorm\"", "\"groupnorm\" layers")


def test_an_unknown_kind_lists_the_registered_ones():
    raw = network("dense")
    raw["layers"][1]["kind"] = "layernrom"
    with pytest.raises(scenario_module.ScenarioError) as caught:
        scenario_module.from_dict(raw)
    assert "did you mean 'layernorm'" in str(caught.value)
    assert all(name in str(caught.value) for name in layers.LAYERS)
    with pytest.raises(KeyError, match="known: dense, batchnorm, layernorm"):
        layers.get("conv")


def test_parameter_names_come_from_the_kind():
    loaded = scenario_module.from_dict(network("layernorm"))
    from tracer.training.trace import param_name, param_quantity
    assert param_name(loaded, "W", 2, (0, 1)) == "gamma2[1]" and param_name(loaded, "b", 2, (1,)) == "beta2[1]"
    assert param_name(loaded, "W", 1, (0, 1)) == "W1[0,1]"
    assert param_quantity(loaded, "update_b", 2) == "update_beta" and param_quantity(loaded, "m_W", 3) == "m_W"


# ------------------------------------------------------------------ parity with torch

OPTIMIZERS = ["sgd", "momentum", "adagrad", "rmsprop", "adam"]


def _torch_optimizer(torch, parameters, scenario):
    h, name = scenario.optimizer_params, scenario.optimizer
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=h["lr"])
    if name == "momentum":
        return torch.optim.SGD(parameters, lr=h["lr"], momentum=h["momentum"], nesterov=h["nesterov"])
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=h["lr"], eps=h["eps"])
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=h["lr"], alpha=h["alpha"], eps=h["eps"])
    return torch.optim.Adam(parameters, lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_layernorm_matches_torch_after_five_steps(optimizer):
    """Linear(bias=False) → LayerNorm(3) → tanh → Linear in torch (float64) from the engine's
    initial parameters, the same batches and optimiser: every parameter after 5 steps to 1e-9."""
    torch = pytest.importorskip("torch")
    trace = build(network("layernorm", optimizer=optimizer, steps=5))
    s = trace.scenario
    first = torch.nn.Linear(3, 3, bias=False, dtype=torch.float64)
    norm = torch.nn.LayerNorm(3, eps=s.layers[1].eps, elementwise_affine=True, dtype=torch.float64)
    last = torch.nn.Linear(3, 1, dtype=torch.float64)
    with torch.no_grad():
        first.weight.copy_(torch.tensor(trace.W[0][0].T))
        last.weight.copy_(torch.tensor(trace.W[2][0].T))
        last.bias.copy_(torch.tensor(trace.b[2][0]))
    parameters = [first.weight, norm.weight, norm.bias, last.weight, last.bias]
    step_with = _torch_optimizer(torch, parameters, s)
    for step in range(5):
        ids = trace.samples(step)
        step_with.zero_grad()
        y = last(torch.tanh(norm(first(torch.tensor(s.inputs[ids])))))
        loss = 0.5 * ((y - torch.tensor(s.targets[ids])) ** 2).sum() / len(ids)   # half_sse, mean
        assert loss.item() == pytest.approx(trace.loss[step], rel=1e-12)
        loss.backward()
        step_with.step()
    ours = [trace.W[0][5], trace.W[1][5][0], trace.b[1][5], trace.W[2][5], trace.b[2][5]]
    theirs = [first.weight.detach().numpy().T, norm.weight.detach().numpy(), norm.bias.detach().numpy(),
              last.weight.detach().numpy().T, last.bias.detach().numpy()]
    for mine, reference in zip(ours, theirs):
        np.testing.assert_allclose(mine, reference, rtol=1e-9, atol=1e-15)
    assert trace.b[0][5].tolist() == [0.0, 0.0, 0.0]          # the frozen bias of the Linear


# ---------------------------------------------------------------- the ordered sums (layers/sums.py)
# The engine's sums are a contract with the workbook: Σ_i a_i·W[i,j] left to right, the batch
# gradient Σ_s in sample order from 0.0 (np.sum's bits). The blocked forms must give the bits of
# the plain loops on every shape class (a run of one value, one block, many blocks) and at the ends
# of the double range (−0.0, subnormals, overflow, NaN).

SPECIAL = [0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, 1e300, -1e300, 1.7e308, np.inf, -np.inf, np.nan, 1.0, -1.0, 3.0]


def doubles():
    return st.one_of(st.sampled_from(SPECIAL), st.floats(-1e3, 1e3, allow_nan=False), st.floats(allow_nan=True))


def arrays(draw, shape):
    return np.array(draw(st.lists(doubles(), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                    dtype=float).reshape(shape)


def assert_same_bits(actual, expected):
    """Equal bit for bit (−0.0 is not 0.0); any NaN equals any NaN (a payload is not observable)."""
    assert actual.shape == expected.shape
    nan = np.isnan(expected)
    assert (np.isnan(actual) == nan).all()
    np.testing.assert_array_equal(actual[~nan].view(np.int64), expected[~nan].view(np.int64))


def loop_weighted_sum(a, W, b):
    """The engine's weighted sum as it was written before the blocks: one numpy call per term."""
    total = a[:, 0:1] * W[0]
    for i in range(1, W.shape[0]):
        total = total + a[:, i:i + 1] * W[i]
    return total + b


def loop_back_sum(delta_next, W_next):
    total = delta_next[:, 0:1] * W_next[:, 0]
    for k in range(1, W_next.shape[1]):
        total = total + delta_next[:, k:k + 1] * W_next[:, k]
    return total


@st.composite
def sum_cases(draw):
    count, rows, cols = draw(st.integers(1, 40)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return arrays(draw, (count, rows, cols)), draw(st.sampled_from([-0.0, 0.0])), draw(st.sampled_from([1, 2, 3, 8, 1 << 17]))


@given(sum_cases())
@settings(max_examples=50, deadline=None)
def test_sum_in_order_adds_the_terms_one_after_another(case):
    terms, initial, cells = case
    expected = np.full(terms.shape[1:], initial)
    with pytest.MonkeyPatch.context() as patch, np.errstate(all="ignore"):
        for term in terms:
            expected = expected + term
        patch.setattr(base, "SUM_BLOCK_CELLS", cells)
        total = base.sum_in_order(len(terms), terms.shape[1:], lambda out, start, stop: np.copyto(out, terms[start:stop]), initial)
    assert_same_bits(total, expected)


@st.composite
def sum_networks(draw):
    batch, fan_in, units = draw(st.integers(1, 5)), draw(st.integers(1, 24)), draw(st.integers(1, 5))
    return (arrays(draw, (batch, fan_in)), arrays(draw, (fan_in, units)), arrays(draw, (units,)), arrays(draw, (batch, units)),
            draw(st.sampled_from([1, 5, 64, 1 << 17])), draw(st.sampled_from([0, 8])))


@given(sum_networks())
@settings(max_examples=50, deadline=None)
def test_weighted_and_back_sums_have_the_bits_of_the_loops(case):
    a, W, b, delta, cells, loop_terms = case
    with pytest.MonkeyPatch.context() as patch, np.errstate(all="ignore"):
        patch.setattr(base, "SUM_BLOCK_CELLS", cells)
        patch.setattr(base, "LOOP_TERMS", loop_terms)
        assert_same_bits(base.weighted_sum(a, W, b), loop_weighted_sum(a, W, b))
        assert_same_bits(base.back_sum(delta, W), loop_back_sum(delta, W))


@given(sum_networks(), st.sampled_from(["sum", "mean"]))
@settings(max_examples=50, deadline=None)
def test_dense_batch_gradient_has_the_bits_of_the_summed_per_sample_gradients(case, reduction):
    """Σ_s a_s ⊗ δ_s added in blocks of samples equals reduce_samples of the per-sample products."""
    below, W, _, delta, cells, _ = case
    kind, layer = layers.of(layer_of("dense", W.shape[1])), layer_of("dense", W.shape[1])
    with pytest.MonkeyPatch.context() as patch, np.errstate(all="ignore"):
        patch.setattr(base, "SUM_BLOCK_CELLS", cells)
        grad_W, grad_b = kind.batch_gradients(layer, {}, below, delta, reduction)
        per_W, per_b = kind.gradients(layer, {}, below, delta)
        assert_same_bits(grad_W, procedures.reduce_samples(per_W, reduction))
        assert_same_bits(grad_b, procedures.reduce_samples(per_b, reduction))


def test_weighted_sum_of_a_wide_layer_is_left_to_right_in_blocks():
    """784 inputs, 3 blocks of 300: the running total carries over from block to block."""
    rng = np.random.default_rng(4)
    a, W, b = rng.normal(size=(3, 784)) * 10.0 ** rng.integers(-8, 8, (3, 784)), rng.normal(size=(784, 5)), rng.normal(size=5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(base, "SUM_BLOCK_CELLS", 300 * 15)
        assert_same_bits(base.weighted_sum(a, W, b), loop_weighted_sum(a, W, b))
    assert_same_bits(base.weighted_sum(a, W, b), loop_weighted_sum(a, W, b))


# ---------------------------------------------------------------- sum orders: in order, or numpy's matmul

EPS = 2.0 ** -53   # the unit roundoff of a double


@st.composite
def finite_sums(draw):
    batch, fan_in, units = draw(st.integers(1, 6)), draw(st.integers(1, 40)), draw(st.integers(1, 12))
    finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    draw_array = lambda shape: np.array(draw(st.lists(finite, min_size=int(np.prod(shape)),  # noqa: E731
                                                      max_size=int(np.prod(shape)))), dtype=float).reshape(shape)
    return draw_array((batch, fan_in)), draw_array((fan_in, units)), draw_array((units,)), draw_array((batch, units))


@given(finite_sums())
@settings(max_examples=60, deadline=None)
def test_the_matmul_order_agrees_with_the_in_order_sums_within_their_rounding_bound(case):
    """Any order of n additions is within (n − 1)·ε·Σ|terms| of the exact sum, so the two orders
    differ by at most 2n·ε·Σ|terms| (u's + b one more term): u, the error down and the batch sum."""
    a, W, b, delta = case
    pairs = [
        (lambda order: order.weighted_sum(a, W, b), np.abs(a) @ np.abs(W) + np.abs(b), W.shape[0] + 1),
        (lambda order: order.back_sum(delta, W), np.abs(delta) @ np.abs(W).T, W.shape[1]),
        (lambda order: order.sample_product_sum(a, delta), np.abs(a).T @ np.abs(delta), a.shape[0]),
    ]
    for compute, magnitude, terms in pairs:
        in_order, matmul = compute(layers.IN_ORDER), compute(layers.MATMUL)
        assert in_order.shape == matmul.shape
        assert (np.abs(matmul - in_order) <= 2 * terms * EPS * magnitude).all()


def test_the_matmul_order_is_not_finite_wherever_a_sum_reads_a_non_finite_term():
    """BLAS multiplies every term: 0·NaN and 0·inf are NaN, so a non-finite input poisons the sums
    that read it (the spreadsheet shows an error there) even where its weights are 0."""
    rng = np.random.default_rng(0)
    a, W, delta = rng.normal(size=(4, 30)), rng.normal(size=(30, 6)), rng.normal(size=(4, 6))
    a[1, 7], a[2, 3], W[7], W[3] = np.nan, np.inf, 0.0, 0.0
    delta[3, 2], W[:, 2] = np.inf, 0.0
    zero_delta = rng.normal(size=(4, 6))      # δ of the samples whose inputs are not finite: 0
    zero_delta[1] = zero_delta[2] = 0.0
    with np.errstate(all="ignore"):
        for order in (layers.IN_ORDER, layers.MATMUL):
            u = order.weighted_sum(a, W, np.zeros(6))
            assert not np.isfinite(u[1:3]).any() and np.isfinite(u[[0, 3]]).all(), order
            e = order.back_sum(delta, W)
            assert not np.isfinite(e[3]).any() and np.isfinite(e[:3]).all(), order
            g = order.sample_product_sum(a, zero_delta)
            assert not np.isfinite(g[[3, 7]]).any() and np.isfinite(np.delete(g, [3, 7], axis=0)).all(), order


def test_sum_orders_are_named():
    assert layers.sum_order("in_order") is layers.IN_ORDER and layers.sum_order("matmul") is layers.MATMUL
    assert layers.sum_order(layers.MATMUL) is layers.MATMUL
    with pytest.raises(ValueError, match="unknown sum order 'left'.*in_order, matmul"):
        layers.sum_order("left")
