"""from_torch's conversion notes and loss names (bridges.pytorch.convert, .losses): a float32 model
is traced in float64 and the scenario says so with the difference to expect; tracer's own loss names
are accepted as well as torch loss modules."""
import numpy as np
import pytest

import tracer
from tracer.bridges import pytorch

torch = pytest.importorskip("torch")
nn = torch.nn

from tests.pytorch_parity import parity, train_in_torch  # noqa: E402  (imports torch)

TOLERANCE = 1e-9


def _model(seed, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


def _data(seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, generator=generator, dtype=dtype), torch.randn(6, 2, generator=generator, dtype=dtype)


def test_a_float64_model_has_no_note():
    model = _model(1)
    x, t = _data(1)
    conversion = tracer.from_torch(model, x, t, loss=nn.MSELoss()).conversion
    assert conversion.dtype == "float64" and conversion.notes == []


def test_a_float32_model_is_traced_in_float64_and_the_scenario_names_the_difference_to_expect():
    model = _model(2, torch.float32)
    x, t = _data(2, torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scenario = tracer.from_torch(model, x, t, optimizer, loss=nn.MSELoss(), steps=3)
    conversion = scenario.conversion
    assert conversion.dtype == "float32" and conversion.expected_difference == torch.finfo(torch.float32).eps
    assert "float32" in scenario.description and "float64" in conversion.notes[0]
    trace = tracer.run(scenario)
    losses, _, _ = train_in_torch(model, x, t, optimizer, nn.MSELoss(), 3, None)
    difference = np.max(np.abs(trace.loss - np.array(losses)) / np.abs(losses))
    # the model's own float32 numbers differ from the trace by float32's round-off, not float64's
    assert 1e-12 < difference < 100 * conversion.expected_difference, difference


def _half_sse(y, t):
    return 0.5 * ((t - y) ** 2).sum()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_a_loss_named_as_tracer_names_it_trains_as_its_definition(reduction):
    model = _model(3)
    x, t = _data(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = _half_sse if reduction == "sum" else (lambda y, t: _half_sse(y, t) / len(y))
    mapping = [(model[0].weight, 0, "W"), (model[0].bias, 0, "b"), (model[2].weight, 1, "W"), (model[2].bias, 1, "b")]
    worst = parity(model, x, t, optimizer, loss_fn, mapping, loss="half_sse", reduction=reduction)
    assert max(worst.values()) < TOLERANCE, worst


def test_softmax_ce_by_name_reads_the_logits_and_one_hot_targets():
    model = _model(4)
    x, _ = _data(4)
    t = torch.tensor([0, 1, 1, 0, 1, 0])
    scenario = tracer.from_torch(model, x, t, loss="softmax_ce", reduction="mean", steps=1)
    assert scenario.layers[-1].activation == "softmax" and (scenario.targets == np.eye(2)[t.numpy()]).all()
    worst = parity(model, x, t, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                   [(model[2].weight, 1, "W")], loss="softmax_ce", reduction="mean")
    assert max(worst.values()) < TOLERANCE, worst


@pytest.mark.parametrize("loss, reduction, fragment", [("hinge", None, "not one of tracer's losses"),
                                                       ("mse", "none", "reduction='none'"),
                                                       (nn.MSELoss(), "sum", "reduction= is for a loss named")])
def test_an_unknown_loss_name_or_reduction_is_refused(loss, reduction, fragment):
    model = _model(5)
    x, t = _data(5)
    with pytest.raises(pytorch.ModelError, match=fragment):
        tracer.from_torch(model, x, t, loss=loss, reduction=reduction)
