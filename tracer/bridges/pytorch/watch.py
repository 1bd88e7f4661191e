"""tracer.watch: the failing window of the user's own PyTorch training loop, as a Scenario.

    w = tracer.watch(model, optimizer, loss_fn, keep=50)
    with w:
        for x, y in loader:                      # the user's loop, unchanged
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    w.failure                                    # the first step with a non-finite loss, gradient or parameter
    scenario = w.scenario(steps=5)               # loop steps failure − 5 … failure, as tracer trains them

Hooks (removed when the block ends): a forward pre-hook on the model keeps the batch's inputs; a
forward hook on the loss module takes its targets and the loss, copies the batch and the parameters
(as they are during the step, before the update) into the ring slot's buffers, allocated once, and
the optimiser's state, and
checks the loss; optimizer.step's post-hook counts the steps and, every keep // 2 steps and when the
block ends, checks the parameters for inf/NaN: a non-finite gradient or update leaves them
non-finite for good, and the first snapshot holding one dates it (Watch._scan). Step k is the k-th
call of optimizer.step (from 0); its snapshot is what that step read (of several model and loss calls
in a step, the last before the update: a validation batch after step k is replaced by step k + 1's
training batch). The last `keep` snapshots are kept (a ring); recording stops at the first
non-finite step found, so the window before it stays (a window of n steps needs keep ≥ 2(n + 1)).

The scenario of a window: the model with the snapshot's parameters at its first step, its batches
one after the other as the data (batch = their size, taken in data order: step s of the scenario
trains on the window's s-th batch, the loop's own, shuffled or not), the loss module and the
optimiser's hyper-parameters (bridges.pytorch.convert). Its steps reproduce the loop's numbers
to float64 round-off when the model is float64. With a failure, the window is the `steps` steps
before it and the failing step itself (steps + 1 steps, so the trace shows the first inf/NaN);
without, the last `steps` steps; `until=k` asks for the `steps` steps that end at loop step k (a
step the user names: where a plateau began, where a metric jumped).
Refused: a window whose optimiser carries state (momentum, Adam's moments: a scenario starts every
optimiser from zero state) unless it starts at the loop's step 0, a learning rate that changes in
the window (a scheduler), batches of different sizes, a window older than the ring keeps.
"""
from collections import deque
from dataclasses import dataclass
import math

from tracer.bridges.pytorch.common import ModelError, torch_module

WHERE = "watch"


@dataclass
class Snapshot:
    """What loop step `step` read: its batch (inputs, targets), the parameters before its update (in
    model.parameters() order), the optimiser state before it ({parameter index: {name: tensor}}),
    the learning rate and the loss it computed."""

    step: int
    inputs: object
    targets: object
    parameters: list
    optimizer_state: dict
    lr: float
    loss: float


def watch(model, optimizer, loss_fn, keep=50):
    """A Watch of the loop that trains `model` with `optimizer` on `loss_fn` (an nn.Module loss);
    use it as `with tracer.watch(...) as w:` around the loop."""
    return Watch(model, optimizer, loss_fn, keep)


class Watch:
    """The hooks on a running loop and the ring of its last `keep` snapshots (module docstring)."""

    def __init__(self, model, optimizer, loss_fn, keep=50):
        torch = torch_module()
        if not isinstance(loss_fn, torch.nn.Module):
            raise ModelError(WHERE, f"loss_fn must be a torch loss module (nn.MSELoss(), ...), not "
                             f"{type(loss_fn).__name__}: its forward hook sees the targets")
        if keep < 1:
            raise ModelError(WHERE, f"keep={keep}: keep at least one step")
        self.model, self.optimizer, self.loss_fn, self.keep = model, optimizer, loss_fn, keep
        self.failure = None          # the first non-finite step, or None
        self.steps = 0               # optimizer.step calls seen
        self.ring = deque(maxlen=keep)
        self._torch, self._handles, self._inputs = torch, [], None
        self._buffers = []           # per ring slot: copies of the parameters, then the inputs and targets
        self._every = max(1, keep // 2)
        self.problem = None          # why a step could not be recorded, if one could not
        self._parameters = list(model.parameters())

    def __enter__(self):
        self._handles = [
            self.model.register_forward_pre_hook(self._on_model),
            self.loss_fn.register_forward_hook(self._on_loss, with_kwargs=True),
            self.optimizer.register_step_post_hook(self._after_step),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.failure is None:
            self._scan()
        return False

    # ------------------------------------------------------------ hooks (efficiency matters: every step)

    def _on_model(self, module, args):
        if self.failure is None:
            self._inputs = args[0] if args and isinstance(args[0], self._torch.Tensor) else None

    def _on_loss(self, module, args, kwargs, loss):
        if self.failure is not None:
            return
        targets = args[1] if len(args) > 1 else kwargs.get("target")
        if self._inputs is None or not isinstance(targets, self._torch.Tensor):
            self.problem = self.problem or (f"step {self.steps}: the model was not called with one tensor, or the "
                                            "loss without targets, so the step's batch is unknown")
            return
        self._record(targets, loss)

    def _record(self, targets, loss):
        """The step's snapshot into the ring: its parameters and batch copied into the ring slot's
        buffers (allocated once: the loop's own batch memory is freed and reused, as without the watch)."""
        slot = self.steps % self.keep
        live = [p.detach() for p in self._parameters] + [self._inputs.detach(), targets.detach()]
        buffers = self._buffers[slot] if slot < len(self._buffers) else None
        if buffers is None or any(b.shape != t.shape or b.dtype != t.dtype for b, t in zip(buffers[-2:], live[-2:])):
            buffers = [t.clone() for t in live]
            self._buffers[slot:slot + 1] = [buffers]
        else:
            self._torch._foreach_copy_(buffers, live)
        value = float(loss.detach())
        snapshot = Snapshot(self.steps, buffers[-2], buffers[-1], buffers[:-2], self._state(),
                            float(self.optimizer.param_groups[0]["lr"]), value)
        if self.ring and self.ring[-1].step == self.steps:
            self.ring.pop()              # a second loss in the same step: the last one before the update counts
        self.ring.append(snapshot)
        if not math.isfinite(value):
            self._scan()                 # parameters gone non-finite in an earlier step come first
            if self.failure is None:
                self.failure = self.steps

    def _state(self):
        """The optimiser's state tensors, copied ({} for plain SGD)."""
        state = {}
        for index, parameter in enumerate(self._parameters):
            tensors = {name: value.detach().clone() for name, value in self.optimizer.state.get(parameter, {}).items()
                       if isinstance(value, self._torch.Tensor)}
            if tensors:
                state[index] = tensors
        return state

    def _after_step(self, optimizer, args, kwargs):
        """Counts the step; every `_every` steps, the parameters are checked (_scan)."""
        self.steps += 1
        if self.failure is None and self.steps % self._every == 0:
            self._scan()

    def _scan(self):
        """Sets the failure where the parameters first became non-finite, if they have.

        A non-finite parameter stays non-finite (inf − x is inf or NaN, NaN − x is NaN) and a
        non-finite gradient makes a non-finite update (θ − lr·g; Adam's m/√v is NaN for g = ±inf),
        so the first step k whose gradient or updated parameters are non-finite is the step before
        the first snapshot whose parameters (read before its update) are non-finite — or the last
        step, when only the live parameters are. Checking the live parameters every keep // 2 steps
        (not every step) finds it while the ring still holds the steps before it."""
        if _finite([p.detach() for p in self._parameters], self._torch):
            return
        bad = next((s for s in self.ring if not _finite(s.parameters, self._torch)), None)
        self.failure = self.steps - 1 if bad is None else max(bad.step - 1, 0)

    # ------------------------------------------------------------ the window

    def window(self, steps, until=None):
        """The snapshots of the window (module docstring): `steps` before the failure and the failing
        one, or the last `steps`; `until` names the window's last loop step instead (n steps to it)."""
        if steps < 1:
            raise ModelError(WHERE, f"steps={steps}: a window has at least one step")
        if self.problem is not None:
            raise ModelError(WHERE, self.problem)
        if not self.ring:
            raise ModelError(WHERE, "no step was recorded (was the loop inside `with w:`, and did it call the "
                             "model, loss_fn and optimizer.step?)")
        recorded = self.ring[-1].step if self.failure is None else min(self.failure, self.ring[-1].step)
        if until is not None and not 0 <= until <= recorded:
            raise ModelError(WHERE, f"until={until}: the recorded steps end at {recorded}")
        ends_at_failure = until is None and self.failure is not None
        last = recorded if until is None else until
        first = last - steps if ends_at_failure else last - steps + 1
        if first < 0:
            raise ModelError(WHERE, f"steps={steps}: the loop ran only {last + 1} step(s) up to step {last}")
        if first < self.ring[0].step:
            raise ModelError(WHERE, f"steps={steps} reaches back to step {first}, but keep={self.keep} holds steps "
                             f"{self.ring[0].step}..{self.ring[-1].step}: watch with a larger keep")
        return [s for s in self.ring if first <= s.step <= last]

    def scenario(self, steps=5, name="watched-window", until=None):
        """The Scenario of the window (module docstring, `until` as in `window`); its step 0 is the
        loop's step `scenario.first_loop_step`, its `conversion` notes say which steps it holds."""
        from tracer.bridges.pytorch.convert import convert
        window = self.window(steps, until)
        first = window[0]
        _check_window(window)
        torch = self._torch
        inputs = torch.cat([s.inputs for s in window])
        targets = torch.cat([s.targets for s in window])
        failing = self.failure is not None and window[-1].step == self.failure
        description = (f"Loop steps {first.step}..{window[-1].step} of a watched PyTorch training loop"
                       + (f" (step {self.failure} is the first non-finite one)" if failing else "") + ".")
        with _parameters_set(self._parameters, first.parameters, torch):
            scenario = convert(self.model, inputs, targets, self.optimizer, loss=self.loss_fn, steps=len(window),
                               batch=len(first.inputs), name=name, description=description, reduction=None, fresh=False)
        if scenario.optimizer_params["lr"] != first.lr:
            raise ModelError(WHERE, f"the optimiser's lr is now {scenario.optimizer_params['lr']:g}, the window's "
                             f"{first.lr:g} (a scheduler stepped since): a scenario has one")
        scenario.conversion.notes.append(description)
        scenario.first_loop_step = first.step
        return scenario


def _finite(tensors, torch):
    """Whether every element of `tensors` is finite. The 2-norms first (one pass over all of them):
    inf/NaN anywhere makes its norm inf/NaN, so finite norms settle it; a non-finite norm can also
    be the square of a huge finite value, which the exact element-wise check then decides."""
    if not tensors:
        return True
    with torch.no_grad():
        if math.isfinite(float(torch.stack(torch._foreach_norm(tensors)).sum())):
            return True
        return all(bool(torch.isfinite(t).all()) for t in tensors)


def _check_window(window):
    """One batch size, one learning rate, and no optimiser state to start from (or the loop's step 0)."""
    first = window[0]
    sizes = sorted({len(s.inputs) for s in window})
    if len(sizes) > 1 or any(len(s.targets) != len(s.inputs) for s in window):
        raise ModelError(WHERE, f"the window's batches have sizes {sizes}: a scenario trains on batches of one size")
    rates = sorted({s.lr for s in window})
    if len(rates) > 1:
        raise ModelError(WHERE, f"the learning rate changes in the window ({rates[0]:g} … {rates[-1]:g}): a scenario "
                         "has one (watch a window without a scheduler step)")
    if first.optimizer_state and first.step > 0:
        names = sorted({name for state in first.optimizer_state.values() for name in state})
        raise ModelError(WHERE, f"the optimiser carries state into step {first.step} ({', '.join(names)}); a scenario "
                         "starts every optimiser from zero state: watch plain SGD, or a window from step 0")


class _parameters_set:
    """The model's parameters set to `values` inside the block, restored after it."""

    def __init__(self, parameters, values, torch):
        self.parameters, self.values, self.torch = parameters, values, torch

    def __enter__(self):
        with self.torch.no_grad():
            self.saved = [p.detach().clone() for p in self.parameters]
            for parameter, value in zip(self.parameters, self.values):
                parameter.copy_(value)

    def __exit__(self, *exc):
        with self.torch.no_grad():
            for parameter, value in zip(self.parameters, self.saved):
                parameter.copy_(value)
        return False
