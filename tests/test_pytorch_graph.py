"""Models written as classes, read through torch.fx (bridges.pytorch.graph and .layers): modules and
their functional forms, x + f(x) residuals, nested Sequentials and ModuleLists, Dropout in eval mode;
their traces match the models' own backward()/step() over 3 steps to 1e-9 in float64; a forward of
functional forms reads as the nn.Sequential of their modules; what cannot be read is refused in ONE
line naming the node, what it calls and the forward's source line."""
import inspect

from hypothesis import given, settings, strategies as st
import pytest

import tracer
from tracer.bridges import pytorch

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from tests.pytorch_parity import parity  # noqa: E402  (imports torch)

TOLERANCE = 1e-9


class ResidualMLP(nn.Module):
    """x -> relu(fc_in x) -> h + tanh(block h) -> h + block2(h) -> head: a residual MLP as a class."""

    def __init__(self):
        super().__init__()
        self.fc_in = nn.Linear(4, 5)
        self.block = nn.Linear(5, 5)
        self.blocks = nn.ModuleList([nn.Linear(5, 5)])
        self.head = nn.Sequential(nn.Sequential(nn.Linear(5, 3)))

    def forward(self, x):
        h = F.relu(self.fc_in(x))
        h = h + torch.tanh(self.block(h))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(3, 6), nn.Dropout(0.3), nn.Linear(6, 2)

    def forward(self, x):
        x = self.drop(self.fc1(x).sigmoid())
        return self.fc2(F.dropout(x, 0.2, training=self.training))


class CustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        x = torch.clamp(self.fc1(x), -1.0, 1.0)
        return self.fc2(x)


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.a(x) * self.b(x)


def _double(seed, build):
    torch.manual_seed(seed)
    return build().double()


def _data(samples, features, outputs, seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(samples, features, generator=generator, dtype=torch.float64),
            torch.randn(samples, outputs, generator=generator, dtype=torch.float64))


def test_a_residual_mlp_written_as_a_class_matches_its_own_training():
    model = _double(1, ResidualMLP)
    x, _ = _data(6, 4, 3, 1)
    t = torch.tensor([0, 2, 1, 1, 0, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mapping = [(model.fc_in.weight, 0, "W"), (model.fc_in.bias, 0, "b"), (model.block.weight, 1, "W"),
               (model.block.bias, 1, "b"), (model.blocks[0].weight, 2, "W"), (model.blocks[0].bias, 2, "b"),
               (model.head[0][0].weight, 3, "W"), (model.head[0][0].bias, 3, "b")]
    scenario = tracer.from_torch(model, x, t, optimizer, loss=nn.CrossEntropyLoss(), steps=1)
    assert [layer.residual for layer in scenario.layers] == [False, True, True, False]
    assert [layer.activation for layer in scenario.layers] == ["relu", "tanh", "identity", "softmax"]
    worst = parity(model, x, t, optimizer, nn.CrossEntropyLoss(), mapping)
    assert max(worst.values()) < TOLERANCE, worst


def test_dropout_in_eval_mode_is_the_identity_and_the_scenario_says_so():
    model = _double(2, DropoutNet).eval()
    x, t = _data(5, 3, 2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scenario = tracer.from_torch(model, x, t, optimizer, loss=nn.MSELoss(), steps=1)
    notes = scenario.conversion.notes
    assert len(notes) == 2 and all("identity in eval mode" in note for note in notes), notes
    assert "identity in eval mode" in scenario.description
    mapping = [(model.fc1.weight, 0, "W"), (model.fc1.bias, 0, "b"), (model.fc2.weight, 1, "W"), (model.fc2.bias, 1, "b")]
    worst = parity(model, x, t, optimizer, nn.MSELoss(), mapping)
    assert max(worst.values()) < TOLERANCE, worst


def _refusal(build):
    with pytest.raises(pytorch.ModelError) as caught:
        build()
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


def _source_line(model_class, text):
    """'test_pytorch_graph.py:N' of the line of model_class.forward holding `text`."""
    lines, first = inspect.getsourcelines(model_class.forward)
    number = first + next(i for i, line in enumerate(lines) if text in line)
    return f"test_pytorch_graph.py:{number}"


def test_a_custom_op_is_refused_naming_the_node_its_function_and_the_forward_line():
    model = _double(3, CustomOp)
    x, t = _data(4, 3, 2, 3)
    message = _refusal(lambda: tracer.from_torch(model, x, t, loss=nn.MSELoss()))
    for fragment in ("node clamp", "torch.clamp", _source_line(CustomOp, "torch.clamp"), "is not supported"):
        assert fragment in message, (fragment, message)


def test_dropout_in_training_mode_is_refused_naming_it():
    model = _double(2, DropoutNet).train()
    x, t = _data(4, 3, 2, 2)
    message = _refusal(lambda: tracer.from_torch(model, x, t, loss=nn.MSELoss()))
    for fragment in ("node drop", "Dropout", _source_line(DropoutNet, "self.drop"), "eval mode"):
        assert fragment in message, (fragment, message)


def test_a_branch_that_is_not_a_residual_is_refused_at_its_node():
    model = _double(4, Branching)
    x, t = _data(4, 3, 2, 4)
    message = _refusal(lambda: tracer.from_torch(model, x, t, loss=nn.MSELoss()))
    assert "node b (Linear" in message and _source_line(Branching, "self.b(x)") in message, message


class WideResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.block = nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

    def forward(self, x):
        x = self.fc(x)
        return x + self.block(x)


def test_a_residual_branch_of_two_layers_is_refused_in_one_line():
    model = _double(5, WideResidual)
    x, t = _data(4, 3, 4, 5)
    message = _refusal(lambda: tracer.from_torch(model, x, t, loss=nn.MSELoss()))
    assert "node add" in message and "Linear, ReLU, Linear" in message, message


def test_functional_forms_read_as_their_modules():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(6, 4), nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x):
            x = torch.flatten(x, 1)
            x = F.leaky_relu(self.fc1(x), 0.1)
            x = F.elu(self.fc2(x), alpha=0.5)
            return self.fc3(x)

    model = _double(6, Functional)
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    t = torch.randint(0, 2, (5, 1), generator=generator).double()
    scenario = tracer.from_torch(model, x, t, loss=nn.BCEWithLogitsLoss(), steps=1)
    assert [(layer.activation, layer.activation_params) for layer in scenario.layers] == [
        ("leaky_relu", {"slope": 0.1}), ("elu", {"alpha": 0.5}), ("sigmoid", {})]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    mapping = [(module.weight, index, "W") for index, module in enumerate((model.fc1, model.fc2, model.fc3))]
    worst = parity(model, x, t, optimizer, nn.BCEWithLogitsLoss(), mapping)
    assert max(worst.values()) < TOLERANCE, worst


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_a_forward_fx_cannot_trace_is_refused_in_one_line():
    model = _double(7, DataDependent)
    x, t = _data(4, 3, 2, 7)
    message = _refusal(lambda: tracer.from_torch(model, x, t, loss=nn.MSELoss()))
    assert message.startswith("from_torch: DataDependent: torch.fx cannot trace its forward"), message


# name -> (the functional form a forward writes, the module an nn.Sequential holds)
FORMS = {
    "relu": (F.relu, nn.ReLU), "tanh": (torch.tanh, nn.Tanh), "sigmoid": (lambda x: x.sigmoid(), nn.Sigmoid),
    "silu": (F.silu, nn.SiLU), "elu": (lambda x: F.elu(x, alpha=0.5), lambda: nn.ELU(alpha=0.5)),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.3), lambda: nn.LeakyReLU(0.3)), "none": (None, None),
}


class Chain(nn.Module):
    """Linear layers from a ModuleList, each followed by a functional form (or nothing)."""

    def __init__(self, linears, forms):
        super().__init__()
        self.linears, self.forms = nn.ModuleList(linears), forms

    def forward(self, x):
        for linear, form in zip(self.linears, self.forms):
            x = linear(x)
            if form is not None:
                x = form(x)
        return x



@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.sampled_from(sorted(FORMS))), min_size=1, max_size=4),
       st.integers(0, 2 ** 16))
def test_a_forward_of_functional_forms_reads_as_the_sequential_of_their_modules(layers, seed):
    torch.manual_seed(seed)
    widths = [3] + [units for units, _ in layers]
    linears = [nn.Linear(a, b).double() for a, b in zip(widths, widths[1:])]
    modules = []
    for linear, (_, name) in zip(linears, layers):
        modules += [linear] + ([FORMS[name][1]()] if FORMS[name][1] else [])
    x, t = _data(4, 3, widths[-1], seed)
    scenarios = [tracer.from_torch(model, x, t, loss="half_sse", steps=1)
                 for model in (nn.Sequential(*modules), Chain(linears, [FORMS[name][0] for _, name in layers]))]
    described = [[(layer.units, layer.activation, layer.activation_params, layer.weights.tolist(), layer.bias.tolist())
                  for layer in scenario.layers] for scenario in scenarios]
    assert described[0] == described[1]
    assert [layer.activation for layer in scenarios[1].layers] == [
        {"none": "identity"}.get(name, name) for _, name in layers]


class Convolutional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv1d(1, 2, 3), nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_a_convolution_is_refused_by_its_node_not_by_the_shape_of_the_inputs():
    model = _double(8, Convolutional)
    x = torch.randn(4, 1, 8, dtype=torch.float64)
    message = _refusal(lambda: tracer.from_torch(model, x, torch.zeros(4, 2, dtype=torch.float64), loss=nn.MSELoss()))
    assert "node conv (Conv1d" in message and "Conv1d is not supported" in message, message
