"""The thin CLI: templates, show, run (workbook, CSV, --force, outputs checked first, signals),
gradcheck exit codes."""

import os
from pathlib import Path
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile

import pytest

from tracer import cli
from tracer.training import engine, templates, trace as trace_module
from tracer.training.scenario import load as engine_scenario
from tracer.training.trace import Trace
from tracer.workbook import writer
from tests.conftest import assert_refused


def test_templates_lists_every_template(invoke):
    result = invoke("templates")
    assert result.exit_code == 0
    for name in templates.names():
        assert name in result.output


def test_show_prints_valid_toml(invoke):
    result = invoke("show", "leaky-relu-explosion")
    assert result.exit_code == 0
    assert tomllib.loads(result.output)["name"] == "leaky-relu-explosion"


def test_run_writes_workbook_and_refuses_to_overwrite(tmp_path, invoke):
    out = tmp_path / "x.xlsx"
    result = invoke("run", "xor", "--steps", "2", "-o", out)
    assert result.exit_code == 0 and out.exists()
    before = out.read_bytes()
    result = invoke("run", "xor", "--steps", "3", "-o", out)
    assert result.exit_code == 2 and "--force" in result.output
    assert out.read_bytes() == before
    result = invoke("run", "xor", "--steps", "3", "-o", out, "--force")
    assert result.exit_code == 0 and out.read_bytes() != before
    assert not list(tmp_path.glob(".*.part"))


def test_run_trace_only(tmp_path, invoke):
    result = invoke("run", "xor", "--steps", "2", "--trace", tmp_path / "t.csv")
    assert result.exit_code == 0 and (tmp_path / "t.csv").exists()
    assert not list(tmp_path.glob("*.xlsx"))


def test_gradcheck_passes_and_reports(invoke):
    result = invoke("gradcheck", "xor", "--step", "0", "--step", "3")
    assert result.exit_code == 0, result.output
    assert "largest relative error" in result.output


def test_gradcheck_rejects_step_outside_run(invoke):
    result = invoke("gradcheck", "xor", "--steps", "2", "--step", "5")
    assert result.exit_code == 2


def test_gradcheck_of_a_small_template_prints_one_line_and_no_progress(invoke):
    result = invoke("gradcheck", "xor")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("checked 27 gradients at step(s) 0, 150, 299; largest relative error")
    assert len(result.stdout.splitlines()) == 1


def test_gradcheck_checks_a_sample_of_a_wide_net(invoke):
    result = invoke("gradcheck", "wide-784-32-10", "--sample", "300", "--seed", "1", "--step", "0")
    assert result.exit_code == 0, result.output
    assert " (a sample of 300 of the 25450 parameters, seed 1) at step(s) 0; largest relative error" in result.stdout


@pytest.mark.parametrize("args, fragments", [
    (("--sample", "4"), ("--sample 4", "every bias and one weight of every weight array, 5 parameters here (of 9)")),
    (("--seed", "3"), ("--seed", "add --sample N")),
    (("--sample", "0"), ("--sample", "x>=1")),
])
def test_gradcheck_refuses_a_sample_it_cannot_draw(invoke, args, fragments):
    assert_refused(invoke("gradcheck", "xor", *args), *fragments)


def test_gradcheck_progress_is_a_line_every_few_seconds_on_stderr(capsys):
    now = [0.0]
    progress = cli._ProgressLines("gradcheck", every=3.0, clock=lambda: now[0])
    for done, seconds in [(1000, 1.0), (2000, 2.0), (3000, 3.5), (4000, 4.0), (5000, 7.0), (10000, 20.0)]:
        now[0] = seconds
        progress(done, 10000)
    assert capsys.readouterr().err.splitlines() == [
        "gradcheck: 3000 of 10000 parameters checked, about 9 s left",     # 2.5 s for 2000 since the first report
        "gradcheck: 5000 of 10000 parameters checked, about 8 s left",
    ]


def test_every_command_has_help_with_example(invoke):
    for command in ("run", "templates", "show", "gradcheck", "verify", "chain", "diagnose"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output


LONG = "9" * 5000     # beyond the 4,300 digits Python converts to an int
USAGE_ERRORS = [
    (("diagnose", "xor", "--rows", "0"), "Invalid value for '--rows': 0 is not in the range x>=1."),
    (("run", "xor", "--steps", "abc"), "Invalid value for '--steps'"),
    (("chain", "xor", "--param", "W1[0,0]", "--step", "-1"), "Invalid value for '--step'"),
    (("check", "xor", "no-such-hand.csv"), "File 'no-such-hand.csv' does not exist"),
    (("run",), "Missing argument 'SCENARIO'"),
    (("no-such-command",), "No such command 'no-such-command'"),
    (("--bogus",), "No such option '--bogus'"),
    (("diagnose", "xor", "--steps", LONG), "Invalid value for '--steps'"),
    (("diagnose", "xor", "--rows", "1\r2\u2028"), "Invalid value for '--rows'"),
]


@pytest.mark.parametrize("args, fragment", USAGE_ERRORS, ids=[" ".join(a)[:40] for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_with_exit_2(invoke, args, fragment):
    """click's own usage errors (Usage:/Try/blank/Error: by default) are one line like every other
    bad input, with the command's --help named; a value is shortened and its line breaks escaped."""
    args = [a.encode().decode("unicode_escape") for a in args]
    result = invoke(*args)
    assert_refused(result, fragment, "--help)")
    assert len(result.output) < 500 and "Usage:" not in result.output


def test_help_is_unchanged_by_one_line_usage_errors(invoke):
    result = invoke("diagnose", "--help")
    assert result.exit_code == 0 and result.output.startswith("Usage: ") and "--rows" in result.output


def test_no_usable_temporary_folder_is_one_line(tmp_path, invoke, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    assert_refused(invoke("run", "xor", "--steps", "2", "--trace", tmp_path / "t.csv"), "cannot create a temporary folder")
    assert files_in(tmp_path) == []


# --- outputs: all checked before training, each written under a temporary name ---

def files_in(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the engine runs: refusals must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("trained before the outputs were checked")
    monkeypatch.setattr(engine, "run", refuse)


def test_an_interrupted_csv_keeps_the_old_one(tmp_path, invoke, monkeypatch):
    old = tmp_path / "t.csv"
    old.write_text("step,sample,quantity,layer,row,col,value\n")
    before = old.read_bytes()
    tables = Trace.tables

    def stop_half_way(self, *args, **kwargs):   # after the steps' rows, before the final parameters
        for number, table in enumerate(tables(self, *args, **kwargs)):
            if number == 1:
                raise RuntimeError("stopped")
            yield table
    monkeypatch.setattr(Trace, "tables", stop_half_way)
    with pytest.raises(RuntimeError):
        invoke("run", "xor", "--steps", "3", "--trace", old, "--force")
    assert old.read_bytes() == before and files_in(tmp_path) == ["t.csv"]


@pytest.mark.parametrize("second", ["same", "dotted"])
def test_one_file_for_workbook_and_trace_is_refused(tmp_path, invoke, no_training, second):
    path = tmp_path / "out.xlsx"
    other = path if second == "same" else f"{tmp_path}/./out.xlsx"
    result = invoke("run", "xor", "-o", path, "--trace", other)
    assert result.exit_code == 2 and result.output.startswith("Error: -o and --trace")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("option", ["-o", "--trace"])
def test_a_missing_folder_is_refused_before_training(tmp_path, invoke, no_training, option):
    good = {"-o": tmp_path / "t.csv", "--trace": tmp_path / "w.xlsx"}[option]
    other = "--trace" if option == "-o" else "-o"
    result = invoke("run", "xor", option, tmp_path / "missing" / "x", other, good)
    assert result.exit_code == 2
    assert result.output == f"Error: folder {tmp_path / 'missing'} does not exist\n"
    assert files_in(tmp_path) == []


def test_an_existing_trace_is_refused_before_training(tmp_path, invoke, no_training):
    (tmp_path / "t.csv").write_text("old")
    result = invoke("run", "xor", "-o", tmp_path / "w.xlsx", "--trace", tmp_path / "t.csv")
    assert result.exit_code == 2 and "--force" in result.output
    assert files_in(tmp_path) == ["t.csv"]


def test_a_name_too_long_for_the_filesystem_is_refused(tmp_path, invoke, no_training):
    path = tmp_path / ("w" * 256 + ".xlsx")
    result = invoke("run", "xor", "-o", path)
    assert result.exit_code == 2 and result.output == f"Error: cannot write {path}: File name too long\n"


@pytest.mark.parametrize("option, name", [("-o", "w.xlsx"), ("--trace", "t.csv")])
def test_a_full_disk_keeps_the_old_file(tmp_path, invoke, full_disk, option, name):
    target = tmp_path / name
    target.write_bytes(b"old")
    full_disk(tmp_path, budget=1000)
    result = invoke("run", "xor", "--steps", "3", option, target, "--force")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == f"Error: cannot write {target}: No space left on device"
    assert target.read_bytes() == b"old" and files_in(tmp_path) == [name]


def test_verify_without_a_workbook_is_refused(tmp_path, invoke, no_training):
    result = invoke("run", "xor", "--trace", tmp_path / "t.csv", "--verify")
    assert result.exit_code == 2 and "--verify" in result.output and "-o" in result.output
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("name, written", [("../../x", "_.._x.xlsx"), ("/tmp/abs", "_tmp_abs.xlsx"),
                                           ("a b:c\\\\d", "a_b_c_d.xlsx"), ("n" * 400, "n" * 100 + ".xlsx")])
def test_the_default_workbook_name_stays_in_the_current_folder(tmp_path, invoke, monkeypatch, name, written):
    here = tmp_path / "deep" / "er"
    here.mkdir(parents=True)
    (tmp_path / "s.toml").write_text(
        templates.read("linear-regression").replace('name = "linear-regression"', f'name = "{name}"'), encoding="utf-8")
    monkeypatch.chdir(here)
    result = invoke("run", tmp_path / "s.toml", "--steps", "1")
    assert result.exit_code == 0, result.output
    assert files_in(tmp_path) == ["deep", "deep/er", f"deep/er/{written}", "s.toml"]


# --- signals: old outputs kept, temporaries removed, conventional exit codes ---

def _kill_self_when(monkeypatch, module, name, signum, after=1):
    """Send `signum` to this process on the `after`-th call of module.name."""
    original, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == after:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("phase", ["csv", "workbook"])
def test_a_signal_keeps_old_outputs_and_removes_temporaries(tmp_path, invoke, monkeypatch, signum, code, phase):
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    workbook, trace_csv = tmp_path / "w.xlsx", tmp_path / "t.csv"
    workbook.write_bytes(b"old workbook")
    trace_csv.write_bytes(b"old csv")
    if phase == "csv":
        _kill_self_when(monkeypatch, trace_module, "_csv_text", signum)
    else:  # after the Trace sheet: openpyxl's temporary files exist by then
        _kill_self_when(monkeypatch, writer, "_write_settings", signum)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = invoke("run", "xor", "--steps", "5", "-o", workbook, "--trace", trace_csv, "--force")
    assert result.exit_code == code
    assert result.output.splitlines()[-1] == f"Error: interrupted by {signal.Signals(signum).name}; no partial file was left"
    # the complete new CSV waits for the workbook: both outputs are renamed together at the end
    assert workbook.read_bytes() == b"old workbook" and trace_csv.read_bytes() == b"old csv"
    assert files_in(tmp_path) == ["t.csv", "tmp", "w.xlsx"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert tempfile.gettempdir() == str(private)


def test_the_first_time_estimate_ignores_the_set_up_before_the_first_step():
    """Bug: 100 s of layout before step 1 made click estimate 100 s per step (08:35:27 for 62 s)."""
    now = [0.0]
    remaining = cli._Remaining(total=1000, clock=lambda: now[0])
    now[0] = 100.0
    assert remaining.estimate(1) is None  # one point gives no rate
    now[0] = 100.5
    assert remaining.estimate(6) is None  # too soon to say
    now[0] = 102.0
    assert remaining.estimate(21) == pytest.approx(979 * 0.1)
    assert remaining.text(21) == "about 1 min 38 s left"
    now[0] = 160.0
    assert remaining.text(601) == "about 40 s left"


def _wait_for(condition, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, ("the run never got there", process.poll())
        time.sleep(0.01)


def _holds_data(paths):
    """Whether one of `paths` is a non-empty file (the probe of the outputs comes and goes empty)."""
    for path in paths:
        try:
            if path.stat().st_size:
                return True
        except FileNotFoundError:
            pass
    return False


def _ends_with_last_row(paths, last="20000,,b,1,0,,"):
    """Whether one of `paths` is a CSV whose last line is the last row of the run's trace."""
    for path in paths:
        try:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 200))
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            continue
        if lines and lines[-1].startswith(last):
            return True
    return False


@pytest.mark.slow
def test_killed_runs_leave_every_target_as_it_was_or_complete(tmp_path):
    """`python -m tracer run` killed with SIGINT and SIGTERM at seeded random moments of a
    20,000-step run (at start-up, while the CSV is written, while the workbook is written) over
    existing outputs: each target is byte-identical to before or complete, both come from the same
    run (both old or both new: the CSV is not renamed before the workbook is complete), and no
    temporary file is left beside the targets or in the run's own TMPDIR."""
    rng = random.Random(10)
    folder, private = tmp_path / "out", tmp_path / "tmp"
    folder.mkdir()
    private.mkdir()
    workbook, trace_csv = folder / "run.xlsx", folder / "run.csv"
    environment = dict(os.environ, TMPDIR=str(private), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    command = [sys.executable, "-m", "tracer", "run", "linear-regression", "--steps", "20000",
               "-o", str(workbook), "--trace", str(trace_csv), "--force"]
    for signum, moment in [(signal.SIGINT, "start"), (signal.SIGTERM, "csv"), (signal.SIGINT, "workbook"),
                           (signal.SIGTERM, "workbook")]:
        workbook.write_bytes(b"the old workbook")
        trace_csv.write_bytes(b"the old trace")
        before = {target: target.read_bytes() for target in (workbook, trace_csv)}
        process = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        if moment == "start":
            time.sleep(rng.uniform(0.2, 1.5))
        elif moment == "csv":
            _wait_for(lambda: _holds_data(folder.glob(".run.csv.*.part")), process)
            time.sleep(rng.uniform(0, 0.5))
        else:  # the workbook is written once the staged CSV is complete (it is renamed only at the end)
            _wait_for(lambda: _ends_with_last_row(folder.glob(".run.csv.*.part")), process)
            time.sleep(rng.uniform(0, 2))
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
        assert process.returncode in (128 + signum, -signum), (moment, err)
        if process.returncode > 0:  # not killed before the handlers were in place
            assert err.splitlines() == [f"Error: interrupted by {signal.Signals(signum).name}; no partial file was left"]
        new_csv, new_workbook = (target.read_bytes() != before[target] for target in (trace_csv, workbook))
        assert new_csv == new_workbook, (moment, "one target is new, the other old")
        if new_csv:
            lines = trace_csv.read_text().splitlines()
            assert lines[0] == "step,sample,quantity,layer,row,col,value,time" and lines[-1].startswith("20000,,b,1,0,,")
            with zipfile.ZipFile(workbook) as opened:
                assert opened.testzip() is None
        assert sorted(p.name for p in folder.iterdir()) == ["run.csv", "run.xlsx"], moment
        assert list(private.iterdir()) == [], moment


@pytest.mark.libreoffice
def test_verify_a_scenario_with_a_long_name(tmp_path, invoke, soffice):
    """verify names its temporary workbook after the scenario: 300 characters must not break it."""
    scenario = tmp_path / "s.toml"
    scenario.write_text(templates.read("linear-regression").replace('name = "linear-regression"', f'name = "{"v" * 300}"'),
                        encoding="utf-8")
    result = invoke("verify", scenario, "--steps", "2")
    assert result.exit_code == 0, result.output
    assert files_in(tmp_path) == ["s.toml"]


# ------------------------------------------------------------------ bad input at the command line

COMMANDS = {"run": ["-o", "out.xlsx", "--trace", "out.csv"], "diagnose": [], "chain": ["--param", "W1[0,0]"],
            "gradcheck": [], "verify": [], "check": ["hand.csv"]}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("how", ["--steps 100000000000", "steps = 9223372036854775807", "--steps 10000000"])
def test_every_command_refuses_a_run_too_large_for_memory(tmp_path, invoke, monkeypatch, command, how):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hand.csv").write_text("loss,1\n", encoding="utf-8")
    if how.startswith("--steps"):
        scenario, extra = "xor", how.split()
    else:
        scenario, extra = tmp_path / "big.toml", []
        scenario.write_text(templates.read("xor").replace("steps = ", f"{how}\n# steps = "), encoding="utf-8")
    arguments = [command, scenario, *extra, *COMMANDS[command]]
    # xor (2-2-1, 4 samples, sgd, half_sse): per sample 6 values per unit (u a slope delta h e) × 3 units
    # + ∂E/∂a + loss + the sample id = 21 (the per-sample grad_W, grad_b of dense layers are derived, not
    # kept); per step 4 × 21 + 3 × 9 (θ, g, Δθ) + loss + lr = 113 scalars of 8 bytes; once the final 9
    # parameters: (2 GiB − 72) // 904 = 2,375,534 steps
    assert_refused(invoke(*arguments), "steps: ", "of memory for the trace, above tracer's cap of 2 GiB",
                   f"use at most {(2 * 2**30 - 8 * 9) // (8 * 113):,} steps")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["hand.csv"] + (["big.toml"] if not extra else []))


def test_limit_errors_name_the_file_and_the_key(tmp_path, invoke):
    scenario = tmp_path / "wide.toml"
    scenario.write_text(templates.read("xor"), encoding="utf-8")
    out = tmp_path / "o.xlsx"
    assert_refused(invoke("run", scenario, "--steps", "300000", "-o", out), f"{scenario}: steps: ",
                   "1,048,576", "--steps 209714 or fewer")
    # the column layout's limits (without --layout, a net this wide is written in the matrix layout)
    assert_refused(invoke("run", scenario, "--set", "layers.0.units=3000", "--layout", "column", "-o", out),
                   f"{scenario}: layers[0].units: ", "columns")
    assert_refused(invoke("run", scenario, "--set", "layers.0.units=700", "--layout", "column", "-o", out),
                   f"{scenario}: layers[0].units: ", "8192 characters")
    assert not out.exists()


def test_a_net_too_wide_for_the_column_layout_is_written_in_the_matrix_layout(tmp_path, invoke):
    out = tmp_path / "wide.xlsx"
    result = invoke("run", "xor", "--set", "layers.0.units=3000", "--steps", "1", "-o", out)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as archive:
        formulas = re.findall(r"<f>([^<]*)</f>", archive.read("xl/worksheets/sheet1.xml").decode())
    assert sum(f.startswith("MMULT(") for f in formulas) == 4 * 3000 + 4   # u of every unit and sample
    forced = invoke("run", "xor", "--set", "layers.0.units=3000", "--steps", "1", "--layout", "column", "-o", out,
                    "--force")
    assert forced.exit_code == 2 and "columns" in forced.output
    assert invoke("run", "xor", "--steps", "2", "--layout", "matrix", "-o", out, "--force").exit_code == 0


def test_parameter_names_with_huge_or_long_numbers(tmp_path, invoke, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_refused(invoke("chain", "xor", "--param", "W1[" + "9" * 5000 + ",0]"), "write W<layer>[i,j]")
    message = assert_refused(invoke("run", "xor", "--trace", "x.csv", "--param", "W" + "x" * 10_000))
    assert len(message) < 300


@pytest.fixture
def sum_orders(monkeypatch):
    """The sum order of every engine.run the CLI makes, in order (the runs still happen)."""
    used, run = [], engine.run

    def recording(scenario, sums="in_order"):
        used.append(sums)
        return run(scenario, sums=sums)
    monkeypatch.setattr(engine, "run", recording)
    return used


@pytest.mark.parametrize("args, order", [
    (("run", "wide-784-32-10", "--steps", "1", "-o", "w.xlsx"), "matmul"),        # the matrix layout, chosen
    (("run", "wide-784-32-10", "--steps", "1", "--trace", "w.csv"), "matmul"),    # no workbook: the one it would have
    (("run", "xor", "--steps", "2", "-o", "x.xlsx"), "in_order"),
    (("run", "xor", "--steps", "2", "--trace", "x.csv"), "in_order"),
    (("run", "xor", "--steps", "2", "--layout", "matrix", "-o", "x.xlsx"), "matmul"),
    (("run", "xor", "--steps", "3", "--layout", "matrix", "--window", "1:2", "-o", "x.xlsx"), "matmul"),
    (("run", "xor", "--steps", "2", "--layout", "column", "-o", "x.xlsx"), "in_order"),
    (("diagnose", "wide-784-32-10", "--steps", "1"), "matmul"),
    (("chain", "wide-784-32-10", "--steps", "1", "--param", "W2[0,0]"), "matmul"),
    (("gradcheck", "xor", "--steps", "2"), "in_order"),
])
def test_commands_sum_in_the_order_of_the_workbooks_layout(tmp_path, monkeypatch, invoke, sum_orders, args, order):
    """matmul exactly when the workbook is (or would be) in the matrix layout: its MMULT and
    SUMPRODUCT do not add in order; in_order for the column layout's =t₀+t₁+… formulas."""
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert sum_orders == [order]


@pytest.mark.parametrize("name, order", [("wide-784-32-10", "matmul"), ("xor", "in_order")])
def test_verify_sums_in_the_order_of_the_workbooks_layout(monkeypatch, invoke, name, order):
    checked = []
    monkeypatch.setattr(cli.verify, "verify", lambda trace, layout: checked.append((trace.sum_order, layout)) or _Passed())
    assert invoke("verify", name, "--steps", "1").exit_code == 0
    assert checked == [(order, {"matmul": "matrix", "in_order": "column"}[order])]


class _Passed:
    ok = True

    def summary(self):
        return "compared"


def test_the_trace_csv_of_a_wide_net_holds_the_matmul_run(tmp_path, invoke):
    """`tracer run wide-784-32-10 --trace` writes the run its matrix workbook shows (matmul sums),
    which differs in the last bits from the in-order run."""
    result = invoke("run", "wide-784-32-10", "--steps", "1", "--trace", tmp_path / "cli.csv")
    assert result.exit_code == 0, result.output
    loaded = engine_scenario("wide-784-32-10", steps=1)
    for order, path in (("matmul", tmp_path / "matmul.csv"), ("in_order", tmp_path / "in_order.csv")):
        engine.run(loaded, sums=order).write_csv(path)
    cli_text = (tmp_path / "cli.csv").read_bytes()
    assert cli_text == (tmp_path / "matmul.csv").read_bytes()
    assert cli_text != (tmp_path / "in_order.csv").read_bytes()
