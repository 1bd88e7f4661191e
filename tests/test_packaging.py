"""The wheel holds every package of the source tree (pyproject.toml lists them by hand)."""
from pathlib import Path
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_under_tracer_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "tracer").rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
