"""tracer sweep: outcomes of a Monte Carlo over seeds re-derived independently, the remedies of the
exploding run ranked, grids, and outputs that are written whole or not at all."""
import csv

import numpy as np
import pytest

from tracer.training import engine, scenario as scenario_module
from tracer.studies import sweep
from tests.conftest import assert_refused

RAW_SIGMOID = ["layers.0.activation=\"sigmoid\"", "layers.0={units = 3, activation = \"sigmoid\", init = \"uniform\", "
               "low = 0.0, high = 1.0, bias_init = \"uniform\", bias_low = 0.0, bias_high = 1.0}"]


def read_rows(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def independent_outcome(trace):
    """The outcome from the trace's losses, gradients and parameters with plain numpy (default thresholds)."""
    L = trace.layers
    bad = ~np.isfinite(trace.loss)
    for array in trace.grad_W + trace.grad_b + [w[:-1] for w in trace.W]:
        bad |= ~np.isfinite(array.reshape(trace.steps, -1)).all(axis=1)
    if bad.any():
        return "non-finite", int(np.argmax(bad))
    E = trace.loss
    last = trace.steps - 1
    if E[-1] > E[0]:
        return "exploding", last
    if E[-1] <= 0.1 * E[0]:          # squared error: minimum 0
        return "converged", last
    norms = [np.sqrt(np.sum(trace.grad_W[l][-1] ** 2) + np.sum(trace.grad_b[l][-1] ** 2)) for l in range(L)]
    if min(norms) < 1e-7 or any(n / norms[-1] < 1e-2 for n in norms[:-1]):
        return "vanishing", last
    changes = np.abs(np.diff(E)) / np.abs(E[:-1])
    still = 0
    for change in changes:
        still = still + 1 if change < 1e-4 else 0
    if still >= 5:
        return "plateaued", last
    return "falling", last


@pytest.mark.parametrize("extra", [[], RAW_SIGMOID[1:]], ids=["leaky-relu", "sigmoid"])
def test_seed_sweep_matches_an_independent_loop(tmp_path, extra):
    steps, seeds = 8, 10
    results = sweep.sweep("leaky-relu-explosion", sweep.combine([sweep.seed_axis(seeds)]), overrides=extra,
                          steps=steps, workers=2, csv_path=tmp_path / "seeds.csv")
    found = {}
    for r in results:
        found[r.outcome] = found.get(r.outcome, 0) + 1
    expected = {}
    for seed in range(seeds):
        loaded = scenario_module.load("leaky-relu-explosion", overrides=list(extra) + [f"seed={seed}"], steps=steps)
        outcome, step = independent_outcome(engine.run(loaded))
        expected[outcome] = expected.get(outcome, 0) + 1
        assert results[seed].outcome == outcome and results[seed].outcome_step == step
    assert found == expected and sum(found.values()) == seeds
    rows = read_rows(tmp_path / "seeds.csv")
    assert [row["outcome"] for row in rows] == [r.outcome for r in results]


def test_remedies_of_the_explosion_are_ranked_above_the_plain_run():
    loaded = scenario_module.load("leaky-relu-explosion")
    results = sweep.run_jobs([sweep.Job(k, "leaky-relu-explosion", (), 30, v) for k, v in enumerate(sweep.remedies(loaded))],
                             workers=1)
    ranked = sweep.ranked(results)
    plain = next(r for r in results if not r.changes and not r.note)
    assert plain.outcome == "non-finite"
    working = []
    for r in results:
        if r.changes and r.outcome not in ("non-finite", "not applicable", "invalid"):
            trace = engine.run(scenario_module.load("leaky-relu-explosion", overrides=r.changes, steps=30))
            if np.isfinite(trace.loss).all() and trace.loss[-1] < trace.loss[0]:
                working.append(r)
    assert len(working) >= 3
    assert all(ranked.index(r) < ranked.index(plain) for r in working)
    assert any("clip_norm" in c for r in working for c in r.changes)


def test_split_values_keeps_arrays_and_strings_whole():
    assert sweep.split_values("layers.0.weights=[[1,2]],[[3,4]]") == ("layers.0.weights", ["[[1,2]]", "[[3,4]]"])
    assert sweep.split_values('name="a,b",c') == ("name", ['"a,b"', "c"])


def test_cli_grid_writes_summary_csv_and_workbooks_and_refuses_existing(tmp_path, invoke, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "xor", "--steps", "20", "--set", "optimizer.lr=0.5,5", "--set", "seed=1,2",
            "-o", "grid.xlsx", "--csv", "grid.csv", "--workbooks", "runs", "--jobs", "1"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    rows = read_rows("grid.csv")
    assert len(rows) == 4 and {row["changes"] for row in rows} >= {"optimizer.lr=0.5; seed=1", "optimizer.lr=5; seed=2"}
    assert len(list((tmp_path / "runs").glob("*.xlsx"))) == 4
    from openpyxl import load_workbook
    book = load_workbook("grid.xlsx")
    assert book["Variants"].max_row == 5 and book["Losses"]._charts and book["Outcomes"]._charts
    book.close()
    again = invoke(*args)
    assert again.exit_code == 2 and "exists; use --force" in again.output
    assert not list(tmp_path.glob(".*.part"))


def test_readme_sweep_examples_run(tmp_path, invoke, monkeypatch):
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- sweep -->", 1)[1].split("```", 2)[1].split("\n", 1)[1]   # after the fence's `sh`
    commands = [line.split()[1:] for line in block.strip().splitlines()]
    assert len(commands) == 2
    monkeypatch.chdir(tmp_path)
    for command in commands:
        result = invoke(*command, "--jobs", "1")
        assert result.exit_code == 0, result.output
    rows = read_rows("remedies.csv")
    assert {row["outcome"] for row in rows} >= {"converged", "non-finite"}
    assert len(read_rows("seeds.csv")) == 20 and (tmp_path / "seeds.xlsx").exists()


@pytest.fixture
def no_runs(monkeypatch):
    """Fail the test if a variant runs: refusals must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("ran before the outputs were checked")
    monkeypatch.setattr(sweep, "run_jobs", refuse)


@pytest.mark.parametrize("args, fragment", [
    (["-o", "s.xlsx", "--csv", "s.xlsx"], "-o and --csv name the same file"),
    (["-o", "missing/s.xlsx"], "folder missing does not exist"),
    (["-o", "s.xlsx", "--workbooks", "missing/runs"], "--workbooks missing/runs: folder missing does not exist"),
    (["-o", "s.xlsx", "--workbooks", "taken"], "Directory 'taken' is a file"),
    (["-o", "s.xlsx", "--workbooks", "runs"], "runs/000-optimizer.lr_0.5.xlsx exists; use --force"),
    (["-o", "s" * 300 + ".xlsx"], "File name too long"),
])
def test_sweep_outputs_are_checked_like_run_before_any_variant(tmp_path, invoke, monkeypatch, no_runs, args, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "000-optimizer.lr_0.5.xlsx").write_text("an earlier workbook")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    result = invoke("sweep", "xor", "--steps", "2", "--set", "optimizer.lr=0.5,5", "--jobs", "1", *args)
    assert_refused(result, fragment)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_sweep_creates_its_workbook_folder_with_safe_names(tmp_path, invoke, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("sweep", "xor", "--steps", "2", "--set", 'name="../../x","/abs/y"', "--jobs", "1",
                    "-o", "s.xlsx", "--workbooks", "runs")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == ["000-name__.._.._x_.xlsx", "001-name___abs_y_.xlsx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "s.xlsx"]
