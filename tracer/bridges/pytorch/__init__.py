"""A PyTorch model as a scenario, and the failing window of a PyTorch training loop as one.

    tracer.from_torch(model, inputs, targets, optimizer, loss=nn.CrossEntropyLoss())   # a Scenario
    with tracer.watch(model, optimizer, loss_fn, keep=50) as w:                         # the user's loop
        ...
    w.failure, w.scenario(steps=5)

One concept per module (torch is imported only when one of them is called: `pip install 'tracer[torch]'`):
  graph       the model as a chain of parts: an nn.Sequential module by module, any other nn.Module
              traced with torch.fx; the first unsupported node refused in one line
  layers      the parts as [[layers]]: Linear, x + f(x) residuals, BatchNorm1d, LayerNorm, the
              activations, Dropout in eval mode (the identity)
  recurrent   nn.RNN / LSTM / GRU (batch_first) as rnn / lstm / gru layers, gates in PyTorch's order
  losses      torch loss modules, or tracer's loss names, and the targets
  optimizers  torch.optim optimisers as [optimizer]
  convert     from_torch itself, and the dtype note (a float32 model is traced in float64)
  watch       tracer.watch: hooks on a running loop, a ring of its last steps, the failing window
"""
from tracer.bridges.pytorch.common import Conversion, ModelError
from tracer.bridges.pytorch.convert import from_torch
from tracer.bridges.pytorch.layers import known_kinds as _known_kinds
from tracer.bridges.pytorch.watch import Watch, watch

__all__ = ["Conversion", "ModelError", "Watch", "from_torch", "watch"]
