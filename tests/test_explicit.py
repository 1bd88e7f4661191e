"""`tracer show --explicit`: the drawn initial parameters written out train to the same trace."""
import numpy as np
import pytest

import tracer
from tracer.training import explicit


@pytest.mark.parametrize("name", ["xor", "deep-sigmoid", "batchnorm-deep", "rnn-vanishing", "lstm-long", "gru-long"])
def test_the_explicit_scenario_trains_bit_for_bit_as_the_drawn_one(name):
    scenario = tracer.load(name)
    written = tracer.loads(explicit.explicit_text(scenario))
    assert all(layer.init == "explicit" for layer in written.layers if "weights" in tracer.layers.of(layer).keys)
    drawn, again = tracer.run(scenario), tracer.run(written)
    for name_ in ("W", "b", "Wh", "bh"):
        for first, second in zip(getattr(drawn, name_), getattr(again, name_)):
            assert (first is None and second is None) or np.array_equal(first, second, equal_nan=True)
    assert np.array_equal(drawn.loss, again.loss, equal_nan=True)


def test_show_explicit_prints_the_numbers(invoke):
    result = invoke("show", "xor", "--explicit")
    assert result.exit_code == 0
    drawn = tracer.run("xor").W[0][0]
    assert "init = \"explicit\"" in result.output and repr(float(drawn[0, 0])) in result.output
    assert "low" not in result.output.split("[[layers]]", 1)[1]
