"""Regenerate examples/workbooks/: one workbook per built-in template.

    python examples/regenerate.py
"""
from pathlib import Path

from tracer.training import engine, scenario, templates
from tracer.workbook import writer

FOLDER = Path(__file__).resolve().parent / "workbooks"


def main():
    FOLDER.mkdir(exist_ok=True)
    for name in templates.names():
        trace = engine.run(scenario.load(name))
        writer.write(trace, FOLDER / f"{name}.xlsx", force=True)
        print(f"wrote {FOLDER / name}.xlsx ({trace.steps} steps)")


if __name__ == "__main__":
    main()
