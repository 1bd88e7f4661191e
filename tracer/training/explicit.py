"""A scenario with its drawn initial parameters written out, so a person can start a hand
calculation from the file: `tracer show --explicit`.

Every layer that takes explicit weights gets init = "explicit" with `weights` (fan_in × units, W[i][j]
joins unit i below to unit j) and `bias` as the seeded generator drew them (recurrent layers also
`recurrent_weights`, `recurrent_bias`); the keys of the distributions they were drawn from are
dropped. Each number is written as the shortest text that reads back as the same double, so the
explicit file trains to the same trace, bit for bit. Layers without such keys (normalisation: γ = 1,
β = 0) are left as they are.
"""
import copy

from tracer import layers as layer_kinds
from tracer.training import engine
from tracer.training.scenario import dump_toml

DRAWN_FROM = ("init", "low", "high", "mean", "std", "value",
              "bias_init", "bias_low", "bias_high", "bias_mean", "bias_std", "bias_value")
EXPLICIT_KEYS = (("W", "weights"), ("b", "bias"), ("Wh", "recurrent_weights"), ("bh", "recurrent_bias"))


def explicit_raw(scenario):
    """The scenario's TOML table (scenario.raw) with every layer's initial parameters explicit."""
    raw = copy.deepcopy(scenario.raw)
    drawn = engine.initial_parameters(scenario)
    for l, (layer, table) in enumerate(zip(scenario.layers, raw.get("layers", []))):
        accepted = layer_kinds.of(layer).keys
        if "weights" not in accepted:
            continue
        for key in DRAWN_FROM:
            table.pop(key, None)
        table["init"] = "explicit"
        for name, key in EXPLICIT_KEYS:
            if key in accepted and drawn.get(name) and drawn[name][l] is not None:
                table[key] = drawn[name][l].tolist()
    return raw


def explicit_text(scenario):
    """The TOML of explicit_raw, opened by a comment saying where the numbers came from."""
    return (f"# {scenario.name}: the initial weights and biases drawn with seed {scenario.seed}, written out\n"
            + dump_toml(explicit_raw(scenario)))
