"""nn.RNN, nn.LSTM and nn.GRU as tracer's recurrent layers (kinds rnn, lstm, gru).

The modules come first in the chain and read the inputs as samples × time × features
(batch_first=True). Layer k of a module (num_layers stacks them; stacked modules chain the same
way) becomes one recurrent layer with PyTorch's weights in tracer's orientation, the gates stacked
in PyTorch's order (lstm i, f, g, o; gru r, z, n), one block of H columns each:

    W  = weight_ih_lk.T   (features, G·H)      Wh = weight_hh_lk.T   (H, G·H)
    b  = bias_ih_lk       (G·H,)               bh = bias_hh_lk       (G·H,)

nn.RNN's nonlinearity (tanh or relu) is the rnn layer's activation; bias=False gives b = bh = 0, not
trained. After the recurrent layers the chain reads out[:, -1] (the dense layers above read
h_{T−1}) or every step (the dense layers run at every time step, and the targets are samples ×
time × outputs: a sample's loss is the sum over time of the per-step losses).
Refused: batch_first=False, bidirectional, an LSTM's proj_size, dropout between stacked layers in
training mode (in eval mode it is the identity, noted).
"""
from tracer.bridges.pytorch.common import ModelError, values

KINDS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}


def is_recurrent(module, torch):
    return isinstance(module, (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU))


def layers_first(parts, x, torch, layers, words, notes=None):
    """Appends the recurrent layers the chain begins with to `layers`; returns (index of the next
    part, the width it reads, whether the dense layers run at every time step)."""
    index, width = 0, x.shape[-1]
    while index < len(parts) and is_recurrent(parts[index].module, torch):
        part = parts[index]
        if x.ndim != 3:
            raise ModelError(part.where, f"reads sequences: the inputs must be samples × time × features, not of "
                             f"shape {tuple(x.shape)}")
        layers.extend(module_layers(part.module, part.where, width, notes))
        words.append(_words(part.module))
        width = part.module.hidden_size
        index += 1
    if not layers:
        return index, width, False
    if index == len(parts):
        raise ModelError(parts[-1].where, "ends the model: tracer's recurrent layers are read by a Linear head "
                         "(out[:, -1] or every step, then nn.Linear)")
    if parts[index].last_step:
        words.append("out[:, -1]")
        return index + 1, width, False
    words.append("every step")
    return index, width, True


def _words(module):
    extra = f", {module.nonlinearity}" if type(module).__name__ == "RNN" else ""
    stacked = f", num_layers={module.num_layers}" if module.num_layers > 1 else ""
    return f"{type(module).__name__}({module.input_size}, {module.hidden_size}{extra}{stacked})"


def module_layers(module, where, width, notes=None):
    """One layer dict (see bridges.pytorch.layers) per stacked layer of an RNN/LSTM/GRU."""
    _check(module, where, width, notes)
    kind = KINDS[type(module).__name__]
    layers = []
    for k in range(module.num_layers):
        weight_ih, weight_hh = getattr(module, f"weight_ih_l{k}"), getattr(module, f"weight_hh_l{k}")
        biases = [getattr(module, f"bias_ih_l{k}"), getattr(module, f"bias_hh_l{k}")] if module.bias else []
        columns = weight_ih.shape[0]
        table = {"kind": kind, "units": module.hidden_size, "init": "explicit",
                 "weights": values(weight_ih).T.tolist(), "recurrent_weights": values(weight_hh).T.tolist(),
                 "bias": values(biases[0]).tolist() if biases else [0.0] * columns,
                 "recurrent_bias": values(biases[1]).tolist() if biases else [0.0] * columns}
        if kind == "rnn":
            table["activation"] = module.nonlinearity
        if not biases:
            table["train_bias"] = False
        layers.append({"table": table, "module": module, "where": f"{where} layer {k}" if module.num_layers > 1 else where,
                       "activation_module": None, "weights": [weight_ih, weight_hh], "biases": biases})
    return layers


def _check(module, where, width, notes):
    if not module.batch_first:
        raise ModelError(where, "batch_first=False: tracer's sequences are samples × time × features "
                         "(build the module with batch_first=True)")
    if module.bidirectional:
        raise ModelError(where, "bidirectional=True: tracer's recurrent layers run forward in time only")
    if getattr(module, "proj_size", 0):
        raise ModelError(where, f"proj_size={module.proj_size}: tracer's LSTM has no projection")
    if module.input_size != width:
        raise ModelError(where, f"takes {module.input_size} features, but {width} arrive")
    if module.dropout and module.num_layers > 1:
        if module.training:
            raise ModelError(where, f"dropout={module.dropout} between stacked layers in training mode is not "
                             "supported (random masks): in eval mode it is the identity")
        if notes is not None:
            notes.append(f"{where}: dropout between stacked layers is the identity in eval mode (left out).")
