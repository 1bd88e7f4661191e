"""The README cannot drift: its tour commands run as written, and the cells it points at hold
what it says."""
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tracer import engine, scenario as scenario_module
from tracer.workbook import writer

README = Path(__file__).resolve().parent.parent / "README.md"


def tour_commands():
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- tour -->", 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


def test_setup_block_has_two_commands():
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```", 2)[1]
    lines = [line for line in first_block.splitlines() if line.strip()]
    assert len(lines) == 2
    assert lines[0].startswith("pip install . && tracer run ")
    assert "python -m pytest" in lines[1]


@pytest.mark.libreoffice
def test_tour_commands_run(tmp_path, soffice):
    commands = tour_commands()
    assert len(commands) >= 8
    for command in commands:
        done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert (tmp_path / "explosion.xlsx").exists() and (tmp_path / "my-run.xlsx").exists()


def test_cells_named_in_the_tour():
    text = README.read_text(encoding="utf-8")
    trace = engine.run(scenario_module.load("leaky-relu-explosion"))
    layout = writer.build_layout(trace)
    slope = re.search(r"Column `(\w+)` is `LReLU'\(u₀⁽¹⁾\)`", text).group(1)
    gradient = re.search(r"Column `(\w+)` is `∂E/∂W1\[0,0\]`", text).group(1)
    weight = re.search(r"Column `(\w+)` is `W1\[0,0\]` itself", text).group(1)
    assert (slope, gradient, weight) == (layout.cell(("slope", 1, 0)), layout.cell(("grad_W", 1, (0, 0))),
                                         layout.cell(("W", 1, (0, 0))))
    totals = [layout.total_row(step) for step in range(5)]
    assert "Σ rows 7, 12, 17, 22" in text and totals[:4] == [7, 12, 17, 22] and "from row 27 on" in text
    assert totals[4] == 27 and not np.isfinite(trace.grad_W[0][4, 0, 0])
    assert (trace.slope[0][1, :, 0] == 0.01).all() and "rows 8–11" in text
    shown = [f"{v:.2E}".replace("E+0", "E+") for v in trace.grad_W[0][:4, 0, 0]]
    assert ", ".join(shown) in text.replace("3.98E+06", "3.98E+6")


def test_check_example_prints_what_the_readme_shows(tmp_path, invoke):
    text = README.read_text(encoding="utf-8")
    after = text.split("<!-- check-example -->", 1)[1]
    blocks = after.split("```")
    hand, shown = blocks[1].strip("\n"), blocks[3].strip("\n")
    (tmp_path / "my-numbers.csv").write_text(hand + "\n", encoding="utf-8")
    result = invoke("check", "linear-regression", tmp_path / "my-numbers.csv")
    assert result.exit_code == 1
    assert result.output.strip("\n") == shown
    assert "1 mistake(s), 4 number(s) that only follow from earlier ones" in shown
