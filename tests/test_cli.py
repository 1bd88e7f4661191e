"""The thin CLI: templates, show, run (workbook, CSV, --force), gradcheck exit codes."""
import tomllib

from tracer import templates


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
