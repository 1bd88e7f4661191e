"""Render the Steps sheet of a template's workbook as LibreOffice prints it: examples/steps-page.png.

    python examples/render_steps.py [TEMPLATE]     (needs LibreOffice and poppler-utils' pdftoppm)
"""
from pathlib import Path
import subprocess
import sys
import tempfile

from tracer.training import engine, scenario
from tracer.recalc import libreoffice
from tracer.workbook import writer

TARGET = Path(__file__).resolve().parent / "steps-page.png"


def main(name="leaky-relu-explosion"):
    with tempfile.TemporaryDirectory() as folder:
        workbook = Path(folder) / f"{name}.xlsx"
        writer.write(engine.run(scenario.load(name)), workbook)
        pdf = libreoffice.convert(workbook, "pdf", folder)
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
        pages = int(next(line.split()[1] for line in info.splitlines() if line.startswith("Pages:")))
        for page in range(1, pages + 1):
            text = subprocess.run(["pdftotext", "-f", str(page), "-l", str(page), str(pdf), "-"],
                                  capture_output=True, text=True, check=True).stdout
            if "log10|W1" in text:   # the Steps sheet's header
                subprocess.run(["pdftoppm", "-f", str(page), "-l", str(page), "-png", "-r", "110", "-x", "60", "-y", "90", "-W", "1100", "-H", "700", "-singlefile",
                                str(pdf), str(TARGET.with_suffix(""))], check=True)
                print(f"wrote {TARGET} (page {page} of {pages})")
                return
    raise SystemExit("the Steps sheet was not found in the PDF")


if __name__ == "__main__":
    main(*sys.argv[1:])
