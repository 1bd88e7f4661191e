"""Recurrent models (bridges.pytorch.recurrent): nn.RNN (tanh, relu), nn.LSTM and nn.GRU with
batch_first=True, stacked, read at the last step (out[:, -1]) or at every step, then Linear heads.
Their weights map to W = weight_ih.T, Wh = weight_hh.T, b = bias_ih, bh = bias_hh in PyTorch's gate
order, and the traces match the models' own backward()/step() over 3 steps to 1e-9 in float64."""
import pytest

import tracer
from tracer.bridges import pytorch

torch = pytest.importorskip("torch")
nn = torch.nn

from tests.pytorch_parity import parity  # noqa: E402  (imports torch)

TOLERANCE = 1e-9


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class GRURegressor(nn.Module):
    """Every step: the head reads each h_t (targets samples × time × outputs)."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(2, 3, batch_first=True)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(self.gru(x)[0])


class StackedRNN(nn.Module):
    def __init__(self, nonlinearity):
        super().__init__()
        self.rnn1 = nn.RNN(2, 3, nonlinearity=nonlinearity, batch_first=True)
        self.rnn2 = nn.RNN(3, 3, nonlinearity=nonlinearity, batch_first=True, bias=False)
        self.head = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))

    def forward(self, x):
        out, _ = self.rnn1(x)
        out, _ = self.rnn2(out)
        return self.head(out[:, -1, :])


def _recurrent_mapping(module, first_layer):
    mapping = []
    for k in range(module.num_layers):
        for torch_name, tracer_name in (("weight_ih", "W"), ("weight_hh", "Wh"), ("bias_ih", "b"), ("bias_hh", "bh")):
            parameter = getattr(module, f"{torch_name}_l{k}", None)
            if parameter is not None:
                mapping.append((parameter, first_layer + k, tracer_name))
    return mapping


def _dense_mapping(modules, first_layer):
    names = {"weight": "W", "bias": "b"}
    return [(getattr(m, name), first_layer + i, names[name]) for i, m in enumerate(modules) for name in names]


def _sequences(samples, steps, features, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(samples, steps, features, generator=generator, dtype=torch.float64), generator


def _model(seed, build):
    torch.manual_seed(seed)
    return build().double()


def test_an_lstm_classifier_matches_its_own_training():
    model = _model(1, LSTMClassifier)
    x, generator = _sequences(5, 4, 3, 1)
    t = torch.randint(0, 3, (5,), generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    scenario = tracer.from_torch(model, x, t, optimizer, loss=nn.CrossEntropyLoss(), steps=1)
    assert [layer.kind for layer in scenario.layers] == ["lstm", "lstm", "dense"]
    assert (scenario.layers[0].recurrent_weights == model.lstm.weight_hh_l0.detach().numpy().T).all()
    mapping = _recurrent_mapping(model.lstm, 0) + _dense_mapping([model.head], 2)
    worst = parity(model, x, t, optimizer, nn.CrossEntropyLoss(), mapping)
    assert max(worst.values()) < TOLERANCE, worst


def test_a_gru_regressor_read_at_every_step_matches_its_own_training():
    model = _model(2, GRURegressor)
    x, generator = _sequences(4, 5, 2, 2)
    t = torch.randn(4, 5, 1, generator=generator, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    loss = nn.MSELoss(reduction="sum")
    mapping = _recurrent_mapping(model.gru, 0) + _dense_mapping([model.head], 1)
    worst = parity(model, x, t, optimizer, loss, mapping, batch=2)
    assert max(worst.values()) < TOLERANCE, worst


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_stacked_rnns_with_a_frozen_bias_match_their_own_training(nonlinearity):
    model = _model(3, lambda: StackedRNN(nonlinearity))
    x, generator = _sequences(6, 3, 2, 3)
    t = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01)
    scenario = tracer.from_torch(model, x, t, optimizer, loss=nn.MSELoss(), steps=1)
    assert [layer.activation for layer in scenario.layers[:2]] == [nonlinearity] * 2
    assert [layer.train_bias for layer in scenario.layers[:2]] == [True, False]
    mapping = (_recurrent_mapping(model.rnn1, 0) + _recurrent_mapping(model.rnn2, 1)
               + _dense_mapping([model.head[0], model.head[2]], 2))
    worst = parity(model, x, t, optimizer, nn.MSELoss(), mapping)
    assert max(worst.values()) < TOLERANCE, worst


def _refusal(model, x, t, loss):
    with pytest.raises(pytorch.ModelError) as caught:
        tracer.from_torch(model, x, t, loss=loss)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


class Sequencer(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.rnn, self.head = nn.GRU(2, 3, **options), nn.Linear(3, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


REFUSED = {
    "time first": ({}, ["node rnn (GRU", "batch_first=False"]),
    "bidirectional": ({"batch_first": True, "bidirectional": True}, ["bidirectional"]),
    "dropout between layers in training": ({"batch_first": True, "num_layers": 2, "dropout": 0.5}, ["dropout=0.5"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_tracer_cannot_run_through_time_is_refused_naming_the_module(case):
    options, fragments = REFUSED[case]
    model = _model(4, lambda: Sequencer(**options))
    x, _ = _sequences(3, 4, 2, 4)
    message = _refusal(model, x, torch.zeros(3, 1, dtype=torch.float64), nn.MSELoss())
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_mean_over_every_time_step_is_refused_for_what_it_divides_by():
    model = _model(2, GRURegressor)
    x, _ = _sequences(3, 4, 2, 2)
    message = _refusal(model, x, torch.zeros(3, 4, 1, dtype=torch.float64), nn.MSELoss())
    assert "reduction='sum'" in message, message


def test_dropout_between_stacked_layers_in_eval_mode_is_noted_and_the_final_state_is_refused():
    model = _model(5, lambda: Sequencer(batch_first=True, num_layers=2, dropout=0.5)).eval()
    x, _ = _sequences(3, 4, 2, 5)
    t = torch.zeros(3, 1, dtype=torch.float64)
    notes = tracer.from_torch(model, x, t, loss=nn.MSELoss(), steps=1).conversion.notes
    assert len(notes) == 1 and "node rnn (GRU" in notes[0] and "identity in eval mode" in notes[0], notes

    class FinalState(Sequencer):
        def forward(self, x):
            return self.head(self.rnn(x)[1][-1])

    model = _model(5, lambda: FinalState(batch_first=True))
    message = _refusal(model, x, t, nn.MSELoss())
    assert "node getitem" in message and "out[:, -1]" in message, message
