"""Shared fixtures: a CLI runner, scenario builders, LibreOffice and Gnumeric availability, and the
session's recomputation: the workbooks of every selected test recomputed together.

A test that needs workbooks recomputed says so with its marker and a factory:

    @pytest.mark.libreoffice(workbooks=lambda name: engine.run(scenario_module.load(name)))
    @pytest.mark.parametrize("name", NAMES)
    def test_x(recomputed, name):
        (trace, report), = recomputed      # one Verified per Trace the factory returned

The factory receives the test's parameters by name (and `folder`, a scratch folder, if it asks)
and returns a Trace, a Path of a workbook, or a list of them. After collection a child process
is forked that calls the factories of ALL selected tests and recomputes their workbooks together
while this process runs the ordinary tests (the tests that read the results run last; see
pytest_collection_modifyitems): three LibreOffice processes (two at a time) share every
`libreoffice` workbook (about 2 s of start-up paid three times, not once per test), each started
as soon as its workbooks are written, while Gnumeric recomputes every `gnumeric` workbook. Each
test then finds its Traces as Verified(trace, report) and its Paths as the recomputed Paths.
"""
import builtins
import contextlib
import copy
import errno
import io
import pickle
import signal
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import inspect
import os
from pathlib import Path
import shutil
import tempfile

import pytest
from click.testing import CliRunner
from hypothesis import settings

from tracer.training import engine, scenario as scenario_module, templates
from tracer.recalc import gnumeric, libreoffice, verify
from tracer.cli import main
from tracer.training.trace import Trace
from tracer.workbook import writer

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


@pytest.fixture(scope="session")
def ssconvert():
    """Gnumeric's ssconvert must be there in CI; locally a missing one skips."""
    found = shutil.which("ssconvert")
    if not found:
        if os.environ.get("CI"):
            pytest.fail(f"Gnumeric is required in CI: {gnumeric.INSTALL}")
        pytest.skip("Gnumeric (ssconvert) not installed")
    return found


@dataclass
class Verified:
    trace: Trace
    report: verify.Report


SPREADSHEETS = ("libreoffice", "gnumeric")


def _call_factory(factory, item, folder):
    """The factory's workbooks for one test item, as a list (and whether it returned one thing)."""
    params = getattr(item, "callspec", None)
    params = params.params if params else {}
    wanted = inspect.signature(factory).parameters
    if "folder" in wanted:
        folder.mkdir()
    made = factory(**{name: (folder if name == "folder" else params[name]) for name in wanted})
    single = not isinstance(made, (list, tuple))
    return ([made] if single else list(made)), single


def _recompute_all(spreadsheet, entries, folder):
    """Recompute every workbook of `entries` ({nodeid: [Trace | Path, ...]}); returns {nodeid:
    [Verified | Path, ...]}. Writing and recomputing overlap: LibreOffice gets the workbooks in
    three groups, each started (two at a time) as soon as it is written; Gnumeric file by file."""
    jobs = [(nodeid, thing) for nodeid, things in entries.items() for thing in things]
    exported, outdir = folder / f"{spreadsheet}-exported", folder / f"{spreadsheet}-recomputed"
    exported.mkdir()
    groups = 3 if spreadsheet == "libreoffice" else len(jobs)
    chunks = [list(range(len(jobs)))[k::groups] for k in range(groups)]
    done = [None] * len(jobs)

    def recompute(chunk, sources, layouts):
        """Recompute one group; a failure is kept for the tests of the group (not the session)."""
        try:
            if spreadsheet == "gnumeric":
                results = gnumeric.recalc_many(sources, outdir, processes=1)
            else:
                results = libreoffice.convert_many(sources, "xlsx", outdir)
        except Exception as exc:
            results = [exc] * len(chunk)
        for k, layout, result in zip(chunk, layouts, results):
            thing = jobs[k][1]
            try:
                done[k] = (result if isinstance(result, Exception) or not isinstance(thing, Trace) else
                           Verified(thing, verify.compare(thing, layout, result, spreadsheet=verify.SPREADSHEETS[spreadsheet])))
            except Exception as exc:
                done[k] = exc

    with ThreadPoolExecutor(max_workers=2 if spreadsheet == "libreoffice" else 1) as pool:
        running = []
        for chunk in (c for c in chunks if c):
            sources, layouts = [], []
            for k in chunk:
                thing = jobs[k][1]
                sources.append(exported / f"workbook-{k}.xlsx")
                if isinstance(thing, Trace):
                    layouts.append(writer.write(thing, sources[-1]))
                else:
                    shutil.copyfile(thing, sources[-1])
                    layouts.append(None)
            running.append(pool.submit(recompute, chunk, sources, layouts))
        for future in running:
            future.result()
    found = {}
    for (nodeid, _), result in zip(jobs, done):
        found.setdefault(nodeid, []).append(result)
    return found


def _recomputes(item):
    return any((m := item.get_closest_marker(s)) is not None and "workbooks" in m.kwargs for s in SPREADSHEETS)


# The large built-in templates (tracer.training.templates.LARGE: digits-64-32-10) are left out of the tests
# that run every template in full; tests/test_datasets.py checks it on its first steps (LibreOffice)
# and tests/test_pytorch.py its gradients against PyTorch's.
EVERY_TEMPLATE_TESTS = ("test_every_template_verifies", "test_every_formula_carries_the_engines_value",
                        "test_gradcheck_passes_on_every_template", "test_csv_is_byte_for_byte_the_row_writers",
                        "test_every_finite_template_recomputes_in_gnumeric")


def _large_template_run(item):
    callspec = getattr(item, "callspec", None)
    return (callspec is not None and callspec.params.get("name") in templates.LARGE
            and item.originalname in EVERY_TEMPLATE_TESTS)


def pytest_collection_modifyitems(config, items):
    """Leave the large templates out of the every-template tests (templates.LARGE). Order: the
    ordinary tests first, then the tests that read the recomputation (they wait for it, and it
    runs in a child process meanwhile)."""
    large = [item for item in items if _large_template_run(item)]
    if large:
        config.hook.pytest_deselected(items=large)
        items[:] = [item for item in items if not _large_template_run(item)]
    items.sort(key=_recomputes)   # stable: the order within each part is kept


def _recompute_session(items, folder):
    """In the child process: call every factory, recompute the workbooks (LibreOffice and Gnumeric
    side by side) and return what the tests read: ({nodeid: (results, single)}, {nodeid: exception})."""
    entries = {spreadsheet: {} for spreadsheet in SPREADSHEETS}
    shapes, failures = {}, {}
    for number, item in enumerate(items):
        for spreadsheet in SPREADSHEETS:
            marker = item.get_closest_marker(spreadsheet)
            if marker is None or "workbooks" not in marker.kwargs:
                continue
            try:
                things, single = _call_factory(marker.kwargs["workbooks"], item, folder / f"item-{number}")
            except Exception as exc:  # reported by the test itself
                failures[item.nodeid] = exc
                continue
            entries[spreadsheet][item.nodeid] = things
            shapes[item.nodeid] = single
    installed = {"libreoffice": shutil.which("soffice") or shutil.which("libreoffice"),
                 "gnumeric": shutil.which("ssconvert")}
    wanted = [s for s in SPREADSHEETS if entries[s] and installed[s]]   # the tests skip (or fail in CI) otherwise
    with ThreadPoolExecutor(max_workers=2) as pool:
        running = [pool.submit(_recompute_all, s, entries[s], folder) for s in wanted]
        found = {}
        for future in running:
            found.update(future.result())
    return {nodeid: (results, shapes[nodeid]) for nodeid, results in found.items()}, failures


def _picklable(thing):
    """`thing`, or for an exception that does not survive pickling (one whose __init__ takes other
    arguments than its args), a RuntimeError saying what it was. Only exceptions are tried: a
    Verified or a Path always pickles, and trying a Verified would pickle its whole Trace twice."""
    if not isinstance(thing, BaseException):
        return thing
    try:
        pickle.loads(pickle.dumps(thing))
        return thing
    except Exception:
        return RuntimeError(f"{type(thing).__name__}: {thing}")


def _child(items, folder):
    """The recomputation process: write its findings to folder/results.pickle, then leave without
    running anything of pytest's (os._exit)."""
    status = 1
    try:
        os.setpgid(0, 0)   # its own process group: the session can stop it and its soffice at once
        found, failures = _recompute_session(items, folder)
        found = {nodeid: ([_picklable(r) for r in results], single) for nodeid, (results, single) in found.items()}
        failures = {nodeid: _picklable(exc) for nodeid, exc in failures.items()}
        partial = folder / "results.pickle.part"
        with open(partial, "wb") as handle:
            pickle.dump((found, failures), handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, folder / "results.pickle")
        status = 0
    except BaseException:
        (folder / "traceback.txt").write_text(traceback.format_exc(), encoding="utf-8")
    finally:
        os._exit(status)


def pytest_collection_finish(session):
    """Start recomputing the workbooks of every selected test whose `libreoffice`/`gnumeric`
    marker names `workbooks`, in a child process (forked here, after collection): the factories,
    the writing and the comparisons use the second core while this process runs the ordinary
    tests, and nothing those tests change in this process (monkeypatched limits, signal handlers,
    tempfile.tempdir) can reach it."""
    session.config.stash[_RECOMPUTATION] = None
    items = [item for item in session.items if _recomputes(item)]
    if session.config.option.collectonly or not items:
        return
    folder = Path(tempfile.mkdtemp(prefix="tracer-tests-recomputed-"))
    pid = os.fork()
    if pid == 0:
        _child(items, folder)
    with contextlib.suppress(OSError):   # as the child does itself (whichever runs first)
        os.setpgid(pid, pid)
    session.config.stash[_RECOMPUTATION] = {"folder": folder, "pid": pid, "results": None}


def _wait(started):
    """The child's findings (waiting for it once)."""
    if started["results"] is None:
        _, status = os.waitpid(started["pid"], 0)
        started["pid"] = None
        found = started["folder"] / "results.pickle"
        if not found.exists():
            told = started["folder"] / "traceback.txt"
            raise RuntimeError(f"the recomputation process failed (wait status {status}):\n"
                               + (told.read_text(encoding="utf-8") if told.exists() else "it left no traceback"))
        with open(found, "rb") as handle:
            started["results"] = pickle.load(handle)
    return started["results"]


def pytest_sessionfinish(session):
    started = session.config.stash.get(_RECOMPUTATION, None)
    if started:
        if started["pid"] is not None:   # no test waited for it (e.g. -x stopped early): stop it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started["pid"], signal.SIGTERM)
            os.waitpid(started["pid"], 0)
        shutil.rmtree(started["folder"], ignore_errors=True)


_RECOMPUTATION = pytest.StashKey()


@pytest.fixture(scope="session")
def recomputations(request):
    """{nodeid: (results, single)} and {nodeid: the exception its factory raised}: the child
    process's recomputation, waited for."""
    started = request.config.stash.get(_RECOMPUTATION, None)
    if started is None:
        return {}, {}
    return _wait(started)


@pytest.fixture
def recomputed(request, recomputations):
    """This test's workbooks after the session's recomputation (see the module docstring)."""
    for spreadsheet, fixture in zip(SPREADSHEETS, ("soffice", "ssconvert")):
        if request.node.get_closest_marker(spreadsheet):
            request.getfixturevalue(fixture)   # skips when missing locally, fails in CI
    results, failures = recomputations
    if request.node.nodeid in failures:
        raise failures[request.node.nodeid]
    if request.node.nodeid not in results:
        pytest.fail("the test's libreoffice/gnumeric marker names no `workbooks` factory")
    found, single = results[request.node.nodeid]
    for result in found:
        if isinstance(result, Exception):
            raise result
    return found[0] if single else found


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
