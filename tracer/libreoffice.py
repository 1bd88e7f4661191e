"""Run LibreOffice headless: recompute a workbook (every formula, on load) and convert it."""
from pathlib import Path
import shutil
import subprocess
import tempfile

from .errors import LibreOfficeMissing, TracerError

# Recalculate every formula when a file is loaded (0 = always), for xlsx and ods alike.
_PROFILE = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Calc/Formula/Load"><prop oor:name="OOXMLRecalcMode" oor:op="fuse"><value>0</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Formula/Load"><prop oor:name="ODFRecalcMode" oor:op="fuse"><value>0</value></prop></item>
</oor:items>
"""
FILTERS = {"xlsx": "xlsx:Calc MS Excel 2007 XML", "pdf": "pdf:calc_pdf_Export"}


def executable():
    """Path of soffice, or raise LibreOfficeMissing with the install command."""
    found = shutil.which("soffice") or shutil.which("libreoffice")
    if not found:
        raise LibreOfficeMissing()
    return found


def convert(source, fmt, outdir, timeout=3600):
    """Open `source` in LibreOffice (recomputing every formula) and save it as `fmt` in `outdir`.

    Returns the path of the converted file.
    """
    soffice = executable()
    source, outdir = Path(source).resolve(), Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tracer-lo-") as profile:
        (Path(profile) / "user").mkdir()
        (Path(profile) / "user" / "registrymodifications.xcu").write_text(_PROFILE, encoding="utf-8")
        command = [
            soffice, "--headless", "--norestore", "--nolockcheck", "--nodefault",
            f"-env:UserInstallation={Path(profile).as_uri()}",
            "--convert-to", FILTERS[fmt], "--outdir", str(outdir), str(source),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TracerError(f"LibreOffice did not finish converting {source.name} within {timeout} s") from None
    result = outdir / f"{source.stem}.{fmt}"
    if done.returncode != 0 or not result.exists():
        raise TracerError(f"LibreOffice could not convert {source.name}: {(done.stderr or done.stdout).strip()[-300:]}")
    return result
