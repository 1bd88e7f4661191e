"""The README and docs/ cannot drift: every command they show runs as written, in order, in a fresh
folder (each page its own), and the cells and outputs they quote are what the program gives.

A fenced block tagged `sh` is commands; `text`, `toml`, `csv` and `python` blocks are not (the
README's `python` blocks are run as Python). A command expected to fail ends with `# exit N`; a
block right after `<!-- not run: REASON -->` is shown but not run."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tracer.training import engine, scenario as scenario_module
from tracer.workbook import writer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LANGUAGES = {"sh", "text", "toml", "csv", "python"}
_FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.M | re.S)
_EXPECTED_EXIT = re.compile(r"\s+# exit (\d+)\s*$")


def blocks(text):
    """(language, body, not_run_reason or None) of every fenced block, in order."""
    found = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = re.fullmatch(r"<!-- not run: (.+) -->", before)
        found.append((match.group(1), match.group(2), reason.group(1) if reason else None))
    return found


def command_blocks(text):
    return [body for language, body, reason in blocks(text) if language == "sh" and reason is None]


def shell_script(bodies):
    """One bash script of the blocks' commands: stop at the first command that fails, except that a
    line ending in `# exit N` must exit with N (its output is kept, the script goes on)."""
    lines = ["set -euo pipefail"]
    for body in bodies:
        for line in body.splitlines():
            expected = _EXPECTED_EXIT.search(line)
            lines.append(f"{line[:expected.start()]} && exit 97 || test $? -eq {expected.group(1)}" if expected else line)
    return "\n".join(lines) + "\n"


def run_commands(bodies, folder):
    """Run the blocks in `folder` with this checkout's `tracer` first on the PATH and HOME inside the
    folder (the tour's ~/tracer-tour stays in the test's folder); the finished process."""
    bin_folder, home = folder / "bin", folder / "home"
    folder.mkdir(parents=True, exist_ok=True)
    bin_folder.mkdir()
    home.mkdir()
    (bin_folder / "tracer").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tracer "$@"\n', encoding="utf-8")
    (bin_folder / "tracer").chmod(0o755)
    environment = dict(os.environ, PATH=f"{bin_folder}{os.pathsep}{os.environ['PATH']}", HOME=str(home),
                       PYTHONPATH=str(ROOT))
    return subprocess.run(["bash", "-c", shell_script(bodies)], cwd=folder, env=environment, capture_output=True,
                          text=True, timeout=900)


def setup_commands():
    """The `tracer` parts of the README's first set-up command (after `pip install .`)."""
    first = next(line for line in README.read_text(encoding="utf-8").split("```", 2)[1].splitlines() if line.strip())
    return [part.strip() for part in first.split("&&") if part.strip().startswith("tracer ")]


def test_setup_block_has_two_commands():
    first_block = README.read_text(encoding="utf-8").split("```", 2)[1]
    lines = [line for line in first_block.splitlines() if line.strip()]
    assert len(lines) == 2
    assert lines[0].startswith("pip install . && tracer run ")
    assert "python -m pytest" in lines[1]


def test_every_block_says_what_it_is():
    """Only the README's set-up block is untagged (.ci/run reads it); every other block names its
    language, so no command hides from the tests."""
    for page in [README, *DOCS]:
        found = blocks(page.read_text(encoding="utf-8"))
        tagged = found[1:] if page == README else found
        assert all(language in LANGUAGES for language, _, _ in tagged), (page.name, [b[0] for b in tagged])
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300


@pytest.mark.libreoffice
def test_readme_commands_run_in_order_in_a_fresh_folder(tmp_path):
    """As a user runs them: the set-up command's `tracer run ...`, then every command block of the
    README in order (the tour in a folder of its own), each with the exit code it shows."""
    done = run_commands(["\n".join(setup_commands())] + command_blocks(README.read_text(encoding="utf-8")), tmp_path)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    tour = tmp_path / "home" / "tracer-tour"
    assert (tour / "explosion.xlsx").exists() and (tour / "my-run.xlsx").exists()
    assert (tour / "explosion.png").read_bytes()[:4] == b"\x89PNG" and (tour / "explosion.svg").exists()
    assert not list(tmp_path.rglob(".*.part"))


def test_readme_check_output_is_what_the_program_prints(tmp_path):
    """The hand check shown in the README: its commands, then the output block right after them."""
    found = blocks(README.read_text(encoding="utf-8"))
    index = next(i for i, (language, body, _) in enumerate(found) if language == "sh" and "tracer check" in body)
    done = run_commands([found[index][1].replace("  # exit 1", "")], tmp_path)
    assert done.returncode == 1
    assert done.stdout.strip("\n") == found[index + 1][1].strip("\n")


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in DOCS if command_blocks(page.read_text(encoding="utf-8"))],
                         ids=lambda page: page.name)
def test_docs_commands_run_in_order_in_a_fresh_folder(page, tmp_path):
    done = run_commands(command_blocks(page.read_text(encoding="utf-8")), tmp_path)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr and (tmp_path / "site" / "maths" / "index.html").exists()


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
    assert "Σ rows 7, 12, 17, 22" in text and totals[:4] == [7, 12, 17, 22]
    # step 4's sample rows start right after step 3's Σ row, and their gradients are already inf/NaN
    first_bad = re.search(r"from row (\d+) on `#NUM!`", text).group(1)
    assert int(first_bad) == totals[3] + 1 and not np.isfinite(trace.grad_W_sample[0][4, 0][0, 0])
    assert not np.isfinite(trace.grad_W[0][4, 0, 0])
    assert (trace.slope[0][1, :, 0] == 0.01).all() and "rows 8–11" in text
    shown = [f"{v:.2E}".replace("E+0", "E+") for v in trace.grad_W[0][:4, 0, 0]]
    assert ", ".join(shown) in text.replace("3.98E+06", "3.98E+6")


def test_check_example_prints_what_the_docs_show(tmp_path, invoke):
    text = (ROOT / "docs" / "check.md").read_text(encoding="utf-8")
    after = text.split("<!-- check-example -->", 1)[1]
    found = blocks(after)
    hand = found[0][1].split("<<'END'\n", 1)[1].split("END\n", 1)[0]
    (tmp_path / "my-numbers.csv").write_text(hand, encoding="utf-8")
    result = invoke("check", "linear-regression", tmp_path / "my-numbers.csv")
    assert result.exit_code == 1
    assert result.output.strip("\n") == found[1][1].strip("\n")
    assert "1 mistake(s), 4 number(s) that only follow from earlier ones" in found[1][1]


def test_the_pytorch_example_runs_and_matches_pytorch(tmp_path, monkeypatch, capsys):
    """The README's "Trace my PyTorch model" block, executed as written in a scratch folder: it
    writes its workbook and prints the largest difference between the traced and PyTorch's weights."""
    pytest.importorskip("torch")
    text = README.read_text(encoding="utf-8")
    code = text.split("<!-- torch -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (torch example)", "exec"), {})
    assert (tmp_path / "my-model.xlsx").exists()
    difference = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert difference < 1e-12


@pytest.mark.libreoffice
def test_the_api_block_runs(tmp_path, monkeypatch):
    """The README's Python API block, as written, in a scratch folder (verify_workbook starts LibreOffice)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    code = next(body for language, body, _ in blocks(README.read_text(encoding="utf-8"))
                if language == "python" and "tracer.load(" in body)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (API block)", "exec"), {})
    assert (tmp_path / "xor.xlsx").exists() and (tmp_path / "xor.png").exists()


def test_recurrent_walkthrough_prints_what_the_page_says(tmp_path):
    """The commands of the recurrent page in one folder, and the figures it quotes: 1.1¹⁰⁰ by hand
    (Fraction), the crossing 73 time steps back (1.1⁷² < 1000 < 1.1⁷³)."""
    from fractions import Fraction
    page = (ROOT / "docs" / "recurrent.md").read_text(encoding="utf-8")
    commands = [line for line in command_blocks(page.split("<!-- recurrent -->", 1)[1])[0].splitlines() if line.strip()]
    assert [c.split()[1] for c in commands] == ["run", "chain", "diagnose", "plot"]
    outputs = [run_commands([command], tmp_path / str(k)) for k, command in enumerate(commands)]
    assert all(done.returncode == 0 for done in outputs), [done.stderr for done in outputs]
    chain_output, diagnose_output = outputs[1].stdout, outputs[2].stdout
    power = Fraction(11, 10) ** 100
    assert f"{float(power):.10g}" == "13780.61234" and "1.1¹⁰⁰ = 13780.61234" in page
    assert "∂h_100/∂h_0 = (1.1)^100 = 13780.61234" in chain_output and "(equal)" in chain_output
    assert Fraction(11, 10) ** 72 < 1000 < Fraction(11, 10) ** 73
    assert f"1.1⁷² ≈ {float(Fraction(11, 10) ** 72):.0f}, 1.1⁷³ ≈ {float(Fraction(11, 10) ** 73):.0f}" in page
    assert "time step 27 (73 time steps back)" in diagnose_output and "time step 27 (73 steps back" in page
    gradient = float(re.search(r"engine's ∂E/∂Wh1\[0,0\] for this sample = (\S+)", chain_output).group(1))
    assert f"{gradient:.4g}".replace("e+", "e") in page
