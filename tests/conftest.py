"""Shared fixtures: a CLI runner, scenario builders, and LibreOffice availability."""
import copy
import os
import shutil

import pytest
from click.testing import CliRunner

from tracer import engine, scenario as scenario_module
from tracer.cli import main

BASE = {
    "name": "small",
    "seed": 1,
    "steps": 3,
    "data": {"inputs": [[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0]], "targets": [[1.0], [0.0], [0.5]]},
    "layers": [
        {"units": 3, "activation": "tanh", "init": "xavier_uniform", "bias_init": "normal", "bias_std": 0.1},
        {"units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": {"name": "half_sse", "reduction": "sum"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "training": {"batch": "full"},
}


@pytest.fixture
def base_raw():
    """A small valid scenario as a dict (a fresh copy per test)."""
    return copy.deepcopy(BASE)


def build(raw):
    """Validate a scenario dict and run it."""
    return engine.run(scenario_module.from_dict(copy.deepcopy(raw)))


@pytest.fixture
def invoke():
    """Run the `tracer` CLI in-process; returns the click Result."""
    runner = CliRunner()

    def call(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
    return call


def assert_refused(result, *fragments):
    """Bad input: exit code 2 and one line `Error: ...` holding every fragment, no traceback."""
    message = result.output.strip()
    assert result.exit_code == 2, result.output
    assert len(message.splitlines()) == 1 and message.startswith("Error: "), message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)
    return message


@pytest.fixture(scope="session")
def soffice():
    """LibreOffice must be there in CI (never mocked); locally a missing one skips."""
    found = shutil.which("soffice") or shutil.which("libreoffice")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("LibreOffice is required in CI: apt-get install -y libreoffice-calc-nogui")
        pytest.skip("LibreOffice (soffice) not installed")
    return found


def write_toml(tmp_path, text, name="scenario.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path
