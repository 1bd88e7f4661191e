"""Shared fixtures: a CLI runner, scenario builders, LibreOffice availability; hypothesis profiles."""
import builtins
import copy
import errno
import io
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


class _FullFile:
    """A file that takes `budget` bytes, then fails every write like a full disk."""

    def __init__(self, handle, budget):
        self._handle, self._budget = handle, budget

    def write(self, data):
        if len(data) > self._budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= len(data)
        return self._handle.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)


@pytest.fixture
def full_disk(monkeypatch):
    """`full_disk(folder, budget)`: files opened for writing under `folder` take `budget` bytes,
    then raise OSError(ENOSPC), in this process (chmod does not stop root; a real full disk cannot
    be made in a test)."""
    def install(folder, budget=0):
        folder, real_open = os.path.abspath(folder), io.open

        def open_full(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            inside = isinstance(file, (str, bytes, os.PathLike)) and \
                os.path.abspath(os.fsdecode(file)).startswith(folder + os.sep)
            return _FullFile(handle, budget) if inside and set(mode) & set("wax+") else handle
        monkeypatch.setattr(io, "open", open_full)
        monkeypatch.setattr(builtins, "open", open_full)
    return install
