"""The recurrent kinds' shared faces (tracer/layers/recurrent/base.py) that no cell overrides:
the links diagnose follows through a recurrent layer, the pass faces' hand-over to the layer above."""
import numpy as np
import pytest

from tracer import layers
from tracer.training import engine, scenario as scenario_module

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _net(cell, per_time=False, seed=3, units=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 4, 2))
    t = rng.normal(size=(3, 4, 1) if per_time else (3, 1))
    return scenario_module.from_dict({
        "steps": 2, "seed": seed, "data": {"inputs": x.tolist(), "targets": t.tolist()},
        "layers": [{"kind": cell, "units": units}, {"units": 1, "activation": "identity"}],
        "optimizer": {"name": "sgd", "lr": 0.1}})


@pytest.mark.parametrize("cell", list(GATES))
def test_links_are_the_gates_weights_summed(cell):
    """Σ over the gates of |W| per (input, unit), and on each edge the W of the strongest gate (one
    gate: |W| and W, as a dense layer's)."""
    trace = engine.run(_net(cell))
    layer = trace.scenario.layers[0]
    magnitude, weight = layers.of(layer).diagnose_links(layer, 1, trace, 0)
    W, units = trace.W[0][0], layer.units
    blocks = [W[:, k * units:(k + 1) * units] for k in range(GATES[cell])]
    assert magnitude.shape == weight.shape == (W.shape[0], units)
    np.testing.assert_allclose(magnitude, sum(np.abs(block) for block in blocks))
    for i in range(W.shape[0]):
        for j in range(units):
            assert any(weight[i, j] == block[i, j] for block in blocks)
            assert abs(weight[i, j]) == max(abs(block[i, j]) for block in blocks)


@pytest.mark.parametrize("per_time", [False, True])
@pytest.mark.parametrize("cell", list(GATES))
def test_the_pass_hands_up_the_last_state_or_every_state(cell, per_time):
    """forward_pass: the sequence of hidden states, and as rows h at the last time step (targets
    after the sequence) or every h_t, sample by sample (targets per time step)."""
    scenario = _net(cell, per_time)
    layer, kind = scenario.layers[0], layers.of(scenario.layers[0])
    params = engine.initial_parameters(scenario)
    values = [params[name][0] for name in kind.stored_params]
    x = scenario.inputs
    state = kind.forward_pass(layer, layers.Signal(x, x, per_time), values)
    h = state.up.sequence
    assert h.shape == (3, 4, layer.units) and np.array_equal(state.a, h[:, -1])
    rows = state.up.rows
    assert np.array_equal(rows, h.reshape(-1, layer.units) if per_time else h[:, -1])
    if per_time:
        assert np.array_equal(rows[4 * 1 + 2], h[1, 2])      # sample 1, time step 2
