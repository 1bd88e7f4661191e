"""The layer registry: every layer kind, each ONE object with all its faces side by side
(scenario, records, numpy, excel, chain, check, diagnose: see protocol.py).

Consumers ask the kind of a layer, `layers.of(layer).<face>(...)`, never test a kind's name.
`register(kind)` adds a kind at run time (a user's own kind, or a built-in one subclassed under a
new name); the built-in kinds are registered below, the only place a kind is named.
"""
import sys

from tracer.layers.batchnorm import BatchNorm
from tracer.layers.dense import Dense
from tracer.layers.groupnorm import GroupNorm
from tracer.layers.layernorm import LayerNorm
from tracer.layers.parsing import Layer  # noqa: F401
from tracer.layers.passes import LayerPass, Signal  # noqa: F401
from tracer.layers.protocol import LayerKind
from tracer.layers.quantities import Quantity  # noqa: F401
from tracer.layers.recurrent import gru, lstm, rnn
from tracer.layers.recurrent.gru import Gru
from tracer.layers.recurrent.lstm import Lstm
from tracer.layers.recurrent.rnn import Rnn
from tracer.layers.sums import IN_ORDER, MATMUL, SUM_ORDERS, SumOrder, back_sum, sum_order, weighted_sum  # noqa: F401

for _cell in (rnn, lstm, gru):     # the cells' first home: tracer.layers.rnn, .lstm, .gru
    sys.modules[f"{__name__}.{_cell.__name__.rpartition('.')[2]}"] = _cell

LAYERS = {}
KEYS = ()   # every [[layers]] key some registered kind takes


def register(kind):
    """Add `kind` (a LayerKind instance, or a LayerKind subclass: instantiated) under kind.name, the
    `kind = "..."` value of the scenario's [[layers]] tables; it then runs everywhere a built-in
    kind does. Returns the registered instance. ValueError for a nameless kind or a name taken by
    another kind (registering the same class again replaces it)."""
    global KEYS
    if isinstance(kind, type):
        kind = kind()
    if not isinstance(kind, LayerKind) or not kind.name:
        raise ValueError(f"register() takes a LayerKind with a name, not {kind!r}")
    known = LAYERS.get(kind.name)
    if known is not None and type(known) is not type(kind):
        raise ValueError(f"layer kind {kind.name!r} is registered already ({type(known).__name__})")
    LAYERS[kind.name] = kind
    KEYS = tuple(dict.fromkeys(key for registered in LAYERS.values() for key in registered.keys))
    return kind


def unregister(name):
    """Remove the kind registered as `name` (a test's or a session's own kind); KeyError if unknown."""
    global KEYS
    get(name)
    del LAYERS[name]
    KEYS = tuple(dict.fromkeys(key for registered in LAYERS.values() for key in registered.keys))


DENSE, BATCHNORM, LAYERNORM, RNN, LSTM, GRU = (register(kind) for kind in (Dense, BatchNorm, LayerNorm, Rnn, Lstm, Gru))
GROUPNORM = register(GroupNorm)


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
