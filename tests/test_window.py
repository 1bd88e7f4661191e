"""Zooming into a long run: a window exported as live formulas equals the full run's numbers."""
import functools

import numpy as np
import pytest

from tracer.training import engine, scenario as scenario_module

LATE = {
    # E = (w·1 − 0)², w ← (1 − 2·lr)·w = −1.021·w: the sign flips every step and |w| grows slowly,
    # until w² overflows near step 17,000 of 20,000.
    "steps": 20_000,
    "data": {"inputs": [[1.0]], "targets": [[0.0]]},
    "layers": [{"units": 1, "activation": "identity", "init": "explicit", "weights": [[1.0]], "bias": [0.0],
                "train_bias": False}],
    "loss": {"name": "sse"},
    "optimizer": {"lr": 1.0105},
}


@functools.lru_cache(maxsize=1)
def late_run():
    return engine.run(scenario_module.from_dict(dict(LATE)))


def zoom_of_late_run():
    trace = late_run()
    bad = trace.first_nonfinite_step()
    return trace.window(bad - 3, bad + 2)


@pytest.mark.libreoffice(workbooks=zoom_of_late_run)
def test_late_divergence_can_be_zoomed_and_verified(recomputed):
    trace = late_run()
    bad = trace.first_nonfinite_step()
    assert 15_000 < bad < 20_000
    zoom, report = recomputed.trace, recomputed.report
    assert zoom.first_step == bad - 3 and zoom.steps == 6
    assert (zoom.W[0][0] == trace.W[0][bad - 3]).all()
    assert report.ok, report.summary()
    assert report.errors_matched > 0   # the overflow is inside the window
    finite = np.isfinite(zoom.loss)
    assert finite.any() and not finite.all()


def test_window_cli(tmp_path, invoke):
    out = tmp_path / "zoom.xlsx"
    result = invoke("run", "leaky-relu-explosion", "--window", "2:4", "-o", out)
    assert result.exit_code == 0 and out.exists() and "steps 2..4" in result.output
    result = invoke("run", "leaky-relu-explosion", "--window", "4:9", "-o", tmp_path / "z2.xlsx")
    assert result.exit_code == 2 and "0 <= A <= B <= 5" in result.output
