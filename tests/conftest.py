"""Shared fixtures: a CLI runner, scenario builders, LibreOffice availability; hypothesis profiles."""
import copy
import os
import shutil

import pytest
from click.testing import CliRunner
from hypothesis import settings

from tracer import engine, scenario as scenario_module
from tracer.cli import main

# Property tests draw the same examples on every run and machine ("ci", the default: the random
# generator is seeded from each test's source, no example database), so CI is not flaky; a failure
# prints a blob for @reproduce_failure. To hunt for new failures, draw fresh examples and replay
# the ones saved in .hypothesis/: python -m pytest --hypothesis-profile=explore --hypothesis-seed=N
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)


def pytest_configure(config):
    """Load the "ci" hypothesis profile unless --hypothesis-profile names another (loaded in a hook,
    not on import: the test modules import this file again as tests.conftest)."""
    settings.load_profile(config.getoption("hypothesis_profile", None) or "ci")


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
