"""The layer registry: every layer kind, each ONE object with all its faces side by side
(scenario, records, numpy, excel, chain, check, diagnose: see base.py).

Consumers ask the kind of a layer, `layers.get(layer.kind).<face>(...)`, never test a kind's name.
Registering a kind here is the only place a kind is named.
"""
from tracer.layers.base import (IN_ORDER, MATMUL, SUM_ORDERS, Layer, LayerKind, Quantity, SumOrder, back_sum, sum_order, weighted_sum)
from tracer.layers.batchnorm import BatchNorm
from tracer.layers.dense import Dense
from tracer.layers.groupnorm import GroupNorm
from tracer.layers.gru import Gru
from tracer.layers.layernorm import LayerNorm
from tracer.layers.lstm import Lstm
from tracer.layers.rnn import Rnn

DENSE, BATCHNORM, LAYERNORM, RNN, LSTM, GRU = Dense(), BatchNorm(), LayerNorm(), Rnn(), Lstm(), Gru()
GROUPNORM = GroupNorm()
LAYERS = {kind.name: kind for kind in (DENSE, BATCHNORM, LAYERNORM, RNN, LSTM, GRU, GROUPNORM)}
KEYS = tuple(dict.fromkeys(key for kind in LAYERS.values() for key in kind.keys))   # every [[layers]] key


def get(name):
    """The LayerKind registered as `name` (a layer's `kind`); KeyError naming the known kinds."""
    try:
        return LAYERS[name]
    except KeyError:
        raise KeyError(f"unknown layer kind {name!r} (known: {', '.join(LAYERS)})") from None


def of(layer):
    """The LayerKind of a scenario Layer."""
    return get(layer.kind)


def parse(v, raw, key, fan_in, is_output):
    """One [[layers]] table -> a Layer: the keys known to some kind, `kind` (default dense), then
    the keys that kind takes and its own validation (kind.parse)."""
    v.keys(raw, KEYS, key)
    kind = get(v.choice(raw, "kind", key, LAYERS, default="dense"))
    for name in raw:
        if name not in kind.keys:
            kind.refuse_key(v, key, name, [other.name for other in LAYERS.values() if name in other.keys])
    return kind.parse(v, raw, key, fan_in, is_output)
