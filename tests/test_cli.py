"""The thin CLI: templates, show, run (workbook, CSV, --force), gradcheck exit codes."""
import tomllib

import pytest

from tracer import templates
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


def test_every_command_has_help_with_example(invoke):
    for command in ("run", "templates", "show", "gradcheck", "verify", "chain", "diagnose"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output


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
    assert_refused(invoke(*arguments), "steps: ", "of memory for the trace, above tracer's cap of 2 GiB",
                   "use at most 1,451,002 steps")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["hand.csv"] + (["big.toml"] if not extra else []))


def test_limit_errors_name_the_file_and_the_key(tmp_path, invoke):
    scenario = tmp_path / "wide.toml"
    scenario.write_text(templates.read("xor"), encoding="utf-8")
    out = tmp_path / "o.xlsx"
    assert_refused(invoke("run", scenario, "--steps", "300000", "-o", out), f"{scenario}: steps: ",
                   "1,048,576", "--steps 209714 or fewer")
    assert_refused(invoke("run", scenario, "--set", "layers.0.units=3000", "-o", out), f"{scenario}: layers[0].units: ",
                   "columns")
    assert_refused(invoke("run", scenario, "--set", "layers.0.units=700", "-o", out), f"{scenario}: layers[0].units: ",
                   "8192 characters")
    assert not out.exists()


def test_parameter_names_with_huge_or_long_numbers(tmp_path, invoke, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_refused(invoke("chain", "xor", "--param", "W1[" + "9" * 5000 + ",0]"), "write W<layer>[i,j]")
    message = assert_refused(invoke("run", "xor", "--trace", "x.csv", "--param", "W" + "x" * 10_000))
    assert len(message) < 300
