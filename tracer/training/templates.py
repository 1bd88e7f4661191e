"""Built-in templates: the top-level `templates/*.toml`, installed as package data."""
from importlib import resources
from pathlib import Path

# Templates too large for the tests and campaigns that run every template in full (a 64-32-10 net:
# 7,475 Trace columns, a million formula cells, about a minute to recompute; a 784-32-10 net in the
# matrix layout: 580,677 formula cells, half a minute): tests/conftest.py
# leaves them out of the every-template tests, benchmarks/fuzz.py out of its mutations; their own
# tests (tests/test_datasets.py, tests/test_matrix.py) and benchmarks/digits.py, matrix.py cover them.
LARGE = ("digits-64-32-10", "wide-784-32-10")


def _folder():
    try:
        folder = resources.files("tracer.templates_data")
        if folder.is_dir():
            return folder
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "templates"


def names():
    """Sorted names of the built-in templates."""
    return sorted(p.name[:-5] for p in _folder().iterdir() if p.name.endswith(".toml"))


def exists(name):
    return name in names()


def read(name):
    """The TOML text of template `name`."""
    return (_folder() / f"{name}.toml").read_text(encoding="utf-8")


def data_file(name):
    """The path of the shipped data file `name` (templates/data/, installed with the templates)."""
    return Path(str(_folder() / "data" / name))
