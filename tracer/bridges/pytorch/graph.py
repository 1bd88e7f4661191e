"""A PyTorch model as a chain of parts: an nn.Sequential read module by module, any other nn.Module
traced with torch.fx (symbolic tracing) and its graph read node by node.

A chain: one input x, every node reading the value the node before it made, and the model's output
the last value. Within it:
  a module call             self.fc(x), self.act(x): the module (nested Sequentials, ModuleLists and
                            modules with their own forward are traced through; torch.nn's own are leaves)
  a functional form         F.relu, torch.relu, torch.tanh, torch.sigmoid, F.gelu, F.silu, F.elu,
                            F.leaky_relu, F.softplus, F.softmax, F.log_softmax, x.relu(), x.tanh(),
                            x.sigmoid(), torch.flatten / x.flatten, F.dropout: its module
                            (F.relu -> nn.ReLU(), F.leaky_relu(x, 0.2) -> nn.LeakyReLU(0.2), ...)
  a residual                x + f(x) (operator.add, torch.add, +=): a Part holding f's parts
  a recurrent module        nn.RNN/LSTM/GRU, whose (out, state) tuple is read as out (`out, _ = ...`,
                            `...[0]`), then out[:, -1] (a "last step" part) or every step (nothing)
Anything else (another function, a method, a parameter read directly, a second input, a branch that
is not a residual) is refused in one line naming the node, its function or module type, and the
line of the model's forward that made it.
"""
from dataclasses import dataclass, field
import operator
import os

from tracer.bridges.pytorch.common import ModelError

ADDITIONS = {operator.add, operator.iadd}


@dataclass
class Part:
    """One link of the chain. module: an nn.Module (a functional form as its module); where: how an
    error names it; residual: the parts of f in x + f(x) (module None); last_step: out[:, -1]."""

    module: object
    where: str
    residual: list = field(default_factory=list)
    last_step: bool = False


def parts_of(model, torch):
    """The model as a list of Parts (see the module docstring)."""
    if isinstance(model, torch.nn.Sequential):
        return [Part(module, f"model[{index}] {type(module).__name__}")
                for index, module in enumerate(_flattened(model, torch))]
    if not isinstance(model, torch.nn.Module):
        raise ModelError("model", f"must be a torch.nn.Module, not {type(model).__name__}")
    graph = _traced(model, torch)
    return _Chain(model, torch).read(graph)


def _flattened(model, torch):
    for module in model:
        if isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList)):
            yield from _flattened(module, torch)
        else:
            yield module


def _traced(model, torch):
    import torch.fx
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True
    try:
        return tracer.trace(model)
    except Exception as error:   # torch.fx raises many kinds (TraceError, TypeError, RuntimeError, ...)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelError(type(model).__name__, f"torch.fx cannot trace its forward ({type(error).__name__}: {first}); "
                         "tracer reads a forward that is a chain of modules and functional activations") from None


class _Chain:
    """Reads an fx graph in order, keeping the chain's current value and, for each value, how many
    parts had been applied when it was made (where a residual's skip leaves the chain)."""

    def __init__(self, model, torch):
        self.model, self.torch = model, torch
        self.parts, self.position, self.current = [], {}, None
        self.recurrent_outputs = set()

    def read(self, graph):
        for node in graph.nodes:
            if node.op == "placeholder":
                self._input(node)
            elif node.op == "output":
                if node.args[0] is not self.current:
                    raise ModelError(where(node, self.model, self.torch), "the model's output is not the chain's last "
                                     "value (tracer's model returns one tensor made by a chain of parts)")
            elif node.users:        # an unused value (the states of `out, _ = self.lstm(x)`) is left out
                self._step(node)
        if not self.parts:
            raise ModelError(type(self.model).__name__, "has no layers (its forward applies no Linear, "
                             "normalisation or recurrent module)")
        return self.parts

    def _input(self, node):
        if self.current is not None:
            raise ModelError(where(node, self.model, self.torch), "a second input: tracer's model takes one tensor x")
        self.current, self.position[node] = node, 0

    def _step(self, node):
        if _is_addition(node):
            self._residual(node)
        else:
            inputs = node.all_input_nodes
            if inputs != [self.current]:
                read = ", ".join(n.name for n in inputs) or "no tensor"
                raise ModelError(where(node, self.model, self.torch), f"reads {read}, not the value just made "
                                 f"({self.current.name}): tracer's model is a chain, with x + f(x) residuals")
            part = self._part(node)
            if part is not None:
                self.parts.append(part)
        self.current, self.position[node] = node, len(self.parts)

    def _residual(self, node):
        place = where(node, self.model, self.torch)
        operands = [a for a in node.args if hasattr(a, "op")]
        if len(node.args) != 2 or len(operands) != 2 or node.kwargs or self.current not in operands:
            raise ModelError(place, "adds something other than the chain's value and an earlier value (tracer's "
                             "residual is x + f(x))")
        skip = operands[0] if operands[1] is self.current else operands[1]
        start = self.position.get(skip)
        if start is None or skip is self.current:
            raise ModelError(place, f"adds {skip.name}, which is not an earlier value of the chain")
        branch = self.parts[start:]
        self.parts[start:] = [Part(None, place, residual=branch)]
        # the branch's own values are inside the new part now: no later residual can start there
        self.position = {n: p for n, p in self.position.items() if p <= start}

    def _part(self, node):
        place = where(node, self.model, self.torch)
        if node.op == "call_module":
            module = self.model.get_submodule(node.target)
            if isinstance(module, (self.torch.nn.RNN, self.torch.nn.LSTM, self.torch.nn.GRU)):
                self.recurrent_outputs.add(node)
            return Part(module, place)
        name = _callable_name(node)
        if name == "getitem":
            return self._item(node, place)
        build = FUNCTIONAL.get(name) if node.op in ("call_function", "call_method") else None
        if build is None:
            raise ModelError(place, "is not supported (tracer reads Linear, BatchNorm1d, LayerNorm, RNN/LSTM/GRU, "
                             "Dropout in eval mode, Flatten, the activations and their functional forms, x + f(x))")
        return Part(build(self.torch.nn, _Arguments(node)), place)

    def _item(self, node, place):
        """out of `out, state = rnn(x)` (index 0, the hidden state of every step), then out[:, -1]."""
        source, index = node.args
        if source in self.recurrent_outputs:
            if index != 0:
                raise ModelError(place, "reads the recurrent module's final state: read its output out[:, -1] "
                                 "(the same h of the last step) instead")
            return None
        if _is_last_step(index):
            return Part(None, place, last_step=True)
        raise ModelError(place, f"indexes [{_index_text(index)}]: tracer reads out[:, -1] (the last time step) only")


class _Arguments:
    """A call's arguments after the tensor: by position or by keyword, with the function's default."""

    def __init__(self, node):
        self.args, self.kwargs = node.args[1:], node.kwargs

    def get(self, name, position, default):
        """The argument `name`, or the one at `position` after the tensor (None: keyword-only)."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[position] if position is not None and position < len(self.args) else default


def _dropout(nn, arguments):
    module = nn.Dropout(arguments.get("p", 0, 0.5))
    return module.train(bool(arguments.get("training", 1, True)))


# The functional forms, by the name fx records (torch.relu, F.relu and x.relu() are all "relu"),
# each as the module that computes the same thing.
FUNCTIONAL = {
    "relu": lambda nn, a: nn.ReLU(),
    "tanh": lambda nn, a: nn.Tanh(),
    "sigmoid": lambda nn, a: nn.Sigmoid(),
    "silu": lambda nn, a: nn.SiLU(),
    "gelu": lambda nn, a: nn.GELU(approximate=a.get("approximate", None, "none")),
    "elu": lambda nn, a: nn.ELU(alpha=a.get("alpha", 0, 1.0)),
    "leaky_relu": lambda nn, a: nn.LeakyReLU(a.get("negative_slope", 0, 0.01)),
    "softplus": lambda nn, a: nn.Softplus(beta=a.get("beta", 0, 1.0), threshold=a.get("threshold", 1, 20.0)),
    "softmax": lambda nn, a: nn.Softmax(dim=a.get("dim", 0, None)),
    "log_softmax": lambda nn, a: nn.LogSoftmax(dim=a.get("dim", 0, None)),
    "flatten": lambda nn, a: nn.Flatten(start_dim=a.get("start_dim", 0, 0), end_dim=a.get("end_dim", 1, -1)),
    "dropout": _dropout,
}


def _is_addition(node):
    if node.op == "call_function":
        return node.target in ADDITIONS or getattr(node.target, "__name__", None) == "add"
    return node.op == "call_method" and node.target in ("add", "add_")


def _callable_name(node):
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))


def _is_last_step(index):
    everything = slice(None, None, None)
    return isinstance(index, tuple) and index[:2] == (everything, -1) and all(i == everything for i in index[2:])


def _index_text(index):
    items = index if isinstance(index, tuple) else (index,)
    return ", ".join(":" if item == slice(None, None, None) else repr(item) for item in items)


def where(node, model, torch):
    """'node relu (F.relu, model.py:12 `x = F.relu(self.fc(x))`)': the node, what it calls, and the
    line of the model's forward that made it."""
    if node.op == "call_module":
        what = type(model.get_submodule(node.target)).__name__
    elif node.op == "call_method":
        what = f"Tensor.{node.target}"
    elif node.op == "call_function":
        what = _function_text(node.target)
    else:
        what = node.op
    line = _source_line(node, torch)
    return f"node {node.name} ({what}{', ' + line if line else ''})"


def _function_text(function):
    module = getattr(function, "__module__", None) or ""
    short = {"torch.nn.functional": "F", "_operator": "operator", "torch._C._VariableFunctions": "torch"}.get(module, module)
    return f"{short}.{getattr(function, '__name__', function)}" if short else str(function)


def _source_line(node, torch):
    """'file.py:12 `code`' of the first frame of the node's stack outside torch itself."""
    stack = (node.stack_trace or "").splitlines()
    inside_torch = os.path.dirname(torch.__file__)
    for index, line in enumerate(stack):
        text = line.strip()
        if text.startswith('File "') and inside_torch not in text:
            path, _, rest = text[len('File "'):].partition('", line ')
            number = rest.split(",")[0]
            code = stack[index + 1].strip() if index + 1 < len(stack) else ""
            return f"{os.path.basename(path)}:{number} `{code}`"
    return ""
