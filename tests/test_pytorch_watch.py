"""tracer.watch around a user's own training loop (bridges.pytorch.watch): a 784-32-10 net whose
learning rate makes it diverge at step ~40 (46 here) is watched; the scenario of the failing window
reproduces the loop's own losses and parameters at steps failure − 5 … failure (its actual,
shuffled batches) to 1e-9, and the diagnosis of its trace names the producer of the first inf."""
import numpy as np
import pytest

import tracer
from tracer.bridges import pytorch

torch = pytest.importorskip("torch")
nn = torch.nn

import tests.pytorch_parity  # noqa: E402,F401  (one torch thread: the loops here are small)

TOLERANCE = 1e-9
WINDOW = 5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _loader(samples=640, batch=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, 784, generator=generator, dtype=torch.float64)
    y = nn.functional.one_hot(torch.randint(0, 10, (samples,), generator=generator), 10).double()
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed + 1))


def _train(lr, epochs, keep=50, seed=0):
    """The user's loop, unchanged, inside `with w:`; also the parameters it had at every step."""
    torch.manual_seed(seed)
    model = Net().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss(reduction="sum")
    seen, loader = [], _loader(seed=seed)
    with tracer.watch(model, optimizer, loss_fn, keep=keep) as w:
        for _ in range(epochs):
            for x, y in loader:
                seen.append([p.detach().clone() for p in model.parameters()])
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                if not torch.isfinite(loss):
                    return model, w, seen
    return model, w, seen


@pytest.fixture(scope="module")
def diverged():
    return _train(lr=12.0, epochs=10)


@pytest.fixture(scope="module")
def window_trace(diverged):
    """The failing window's scenario and its trace."""
    scenario = diverged[1].scenario(steps=WINDOW)
    return scenario, tracer.run(scenario)


def test_the_first_non_finite_step_is_found(diverged):
    model, w, seen = diverged
    assert w.failure is not None and 35 <= w.failure <= 50, w.failure
    losses = [s.loss for s in w.ring]
    assert np.isfinite(losses[:-1]).all() and not np.isfinite(losses[-1]) and w.ring[-1].step == w.failure


def test_the_window_reproduces_the_loops_own_numbers(diverged, window_trace):
    model, w, seen = diverged
    scenario, trace = window_trace
    first = w.failure - WINDOW
    assert scenario.steps == WINDOW + 1 and scenario.first_loop_step == first
    window = w.window(WINDOW)
    for k, snapshot in enumerate(window):
        assert snapshot.step == first + k
        # the batch the loop drew at that step, and the parameters it had then
        assert (scenario.inputs[64 * k:64 * (k + 1)] == snapshot.inputs.numpy()).all()
        for index, (ours, layer) in enumerate(((trace.W, 0), (trace.b, 0), (trace.W, 1), (trace.b, 1))):
            theirs = seen[first + k][index].numpy()
            theirs = theirs.T if theirs.ndim == 2 else theirs
            assert np.max(np.abs(ours[layer][k] - theirs)) <= TOLERANCE * np.max(np.abs(theirs))
        if k < WINDOW:
            assert abs(trace.loss[k] - snapshot.loss) <= TOLERANCE * abs(snapshot.loss)
    assert not np.isfinite(trace.loss[WINDOW]), trace.loss


def test_the_diagnosis_names_the_producer_of_the_first_inf(window_trace):
    scenario, trace = window_trace
    diagnosis = tracer.diagnose_run(trace)
    producer = diagnosis.producer
    assert producer is not None and producer.step == WINDOW, producer
    # the sum of squares overflows before any product a·W can: |y| > 1e154 squares past 1.8e308
    assert producer.name.startswith("E (sample") and "overflows" in producer.operation, producer
    assert all(np.isfinite(value) for _, value in producer.operands), producer
    assert any("The first non-finite value" in finding for finding in diagnosis.findings)


def test_without_a_failure_the_window_is_the_last_steps():
    model, w, seen = _train(lr=0.01, epochs=1, keep=4)
    assert w.failure is None and w.steps == 10 and [s.step for s in w.ring] == [6, 7, 8, 9]
    scenario = w.scenario(steps=3)
    assert scenario.steps == 3 and scenario.first_loop_step == 7
    with pytest.raises(pytorch.ModelError, match="keep=4 holds steps 6..9"):
        w.scenario(steps=5)


def _small_loop(inject_at, steps, keep=8):
    """A 3-4-2 net trained on fixed batches; at step `inject_at` an inf is written into a gradient
    after backward() (as an overflow in a custom backward would leave it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, generator=generator, dtype=torch.float64),
                torch.randn(4, 2, generator=generator, dtype=torch.float64)) for _ in range(steps)]
    with tracer.watch(model, optimizer, loss_fn, keep=keep) as w:
        for step, (x, y) in enumerate(batches):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            if step == inject_at:
                model[2].weight.grad[0, 0] = float("inf")
            optimizer.step()
    return w


@pytest.mark.parametrize("inject_at", [3, 7, 9])
def test_a_non_finite_gradient_dates_the_failure_to_its_own_step(inject_at):
    w = _small_loop(inject_at, steps=10)
    assert w.failure == inject_at, (w.failure, [(s.step, s.loss) for s in w.ring])
    window = w.window(2)
    assert [s.step for s in window] == [inject_at - 2, inject_at - 1, inject_at]


def test_a_window_older_than_the_ring_is_refused_naming_keep():
    w = _small_loop(9, steps=10, keep=4)
    with pytest.raises(pytorch.ModelError, match="keep=4"):
        w.scenario(steps=6)


def test_the_readme_example_writes_the_workbook_of_the_failing_window(tmp_path, capsys):
    """examples/torch_watch.py: the practitioner's module and loop, watched; the workbook of the
    failing window is written and the diagnosis names the product that overflowed first."""
    from pathlib import Path
    import importlib.util
    path = Path(__file__).resolve().parent.parent / "examples" / "torch_watch.py"
    spec = importlib.util.spec_from_file_location("torch_watch_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    w, trace = example.main(tmp_path)
    assert (tmp_path / "failing-window.xlsx").stat().st_size > 0
    producer = tracer.diagnose_run(trace).producer
    assert trace.first_step + producer.step == w.failure
    assert producer.operation.startswith("the product") and "overflows" in producer.operation, producer
    printed = capsys.readouterr().out
    assert f"the loop failed at step {w.failure}" in printed and "it is produced by the product" in printed


def test_a_loss_called_with_keywords_is_recorded_and_a_model_called_without_a_tensor_is_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.MSELoss()
    x, y = torch.ones(4, 3, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)
    with tracer.watch(model, optimizer, loss_fn, keep=4) as w:
        for _ in range(3):
            optimizer.zero_grad()
            loss_fn(input=model(x), target=y).backward()
            optimizer.step()
    assert [s.step for s in w.ring] == [0, 1, 2] and w.scenario(steps=2).steps == 2
    with tracer.watch(model, optimizer, loss_fn, keep=4) as w:
        optimizer.zero_grad()
        loss_fn(model(input=x), y).backward()
        optimizer.step()
    with pytest.raises(pytorch.ModelError, match="step 0: the model was not called with one tensor"):
        w.scenario(steps=1)


def test_a_named_step_ends_the_window():
    w = _small_loop(9, steps=10, keep=8)
    assert [s.step for s in w.window(3, until=6)] == [4, 5, 6]
    scenario = w.scenario(steps=3, until=6)
    assert scenario.first_loop_step == 4 and scenario.steps == 3 and "non-finite" not in scenario.description
    losses = tracer.run(scenario).loss
    assert np.allclose(losses, [s.loss for s in w.window(3, until=6)], rtol=TOLERANCE, atol=0)
    with pytest.raises(pytorch.ModelError, match="until=10: the recorded steps end at 9"):
        w.window(2, until=10)


def _adam_loop(steps, scheduler=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2) if scheduler else None
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(2)
    with tracer.watch(model, optimizer, loss_fn, keep=8) as w:
        for _ in range(steps):
            x = torch.randn(4, 3, generator=generator, dtype=torch.float64)
            y = torch.randn(4, 2, generator=generator, dtype=torch.float64)
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            if schedule:
                schedule.step()
    return w


def test_an_optimiser_with_state_reproduces_from_step_0_and_is_refused_later():
    w = _adam_loop(3)
    losses = tracer.run(w.scenario(steps=3)).loss
    assert np.allclose(losses, [s.loss for s in w.ring], rtol=TOLERANCE, atol=0)
    with pytest.raises(pytorch.ModelError, match="carries state into step 1 .*exp_avg"):
        w.scenario(steps=2)


def test_a_learning_rate_that_changes_in_the_window_is_refused():
    w = _adam_loop(4, scheduler=True)
    with pytest.raises(pytorch.ModelError, match="learning rate changes in the window"):
        w.scenario(steps=4)
