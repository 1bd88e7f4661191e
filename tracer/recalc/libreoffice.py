"""Run LibreOffice headless: recompute workbooks (every formula, on load) and convert them, one
file or many in one process."""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import shutil
import subprocess
import tempfile

from tracer.errors import LibreOfficeMissing, TracerError

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
    return convert_many([source], fmt, outdir, timeout=timeout)[0]


def convert_many(sources, fmt, outdir, timeout=3600, processes=1):
    """Recompute and convert every file of `sources` to `fmt` in `outdir` with ONE LibreOffice
    process (its start-up, about 2 s, is paid once instead of once per file), or with
    `processes` processes side by side, each given about the same number of bytes (LibreOffice
    computes on one core).

    Returns the converted paths in the order of `sources`. The sources' file stems must differ
    (each becomes `outdir/<stem>.<fmt>`). If any file could not be converted, raises TracerError
    naming those files (LibreOffice itself says only "source file could not be loaded").
    """
    sources = [Path(source).resolve() for source in sources]
    outdir = Path(outdir).resolve()
    results = [outdir / f"{source.stem}.{fmt}" for source in sources]
    if len(set(results)) < len(results):
        repeated = sorted({r.stem for r in results if results.count(r) > 1})
        raise ValueError(f"files to convert together need different names; repeated: {', '.join(repeated)}")
    if set(results) & set(sources):
        raise ValueError(f"converting into the folder of the sources would replace them: choose another outdir than {outdir}")
    if not sources:
        return []
    soffice = executable()
    outdir.mkdir(parents=True, exist_ok=True)
    for result in results:
        result.unlink(missing_ok=True)   # a stale file must not pass for a conversion
    groups = _balanced(sources, processes)
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        problems = [p for p in pool.map(lambda group: _run(soffice, group, fmt, outdir, timeout), groups) if p]
    if problems:
        raise TracerError("; ".join(problems))
    return results


def _balanced(sources, processes):
    """`sources` split into at most `processes` groups of about the same size in bytes."""
    groups = [[] for _ in range(max(1, min(processes, len(sources))))]
    sizes = [0] * len(groups)
    for source in sorted(sources, key=lambda path: -path.stat().st_size if path.exists() else 0):
        smallest = sizes.index(min(sizes))
        groups[smallest].append(source)
        sizes[smallest] += source.stat().st_size if source.exists() else 0
    return [sorted(group, key=sources.index) for group in groups]


def _run(soffice, sources, fmt, outdir, timeout):
    """One LibreOffice process converting `sources`; None, or the problem in one sentence."""
    names = sources[0].name if len(sources) == 1 else f"{len(sources)} files"
    with tempfile.TemporaryDirectory(prefix="tracer-lo-") as profile:
        (Path(profile) / "user").mkdir()
        (Path(profile) / "user" / "registrymodifications.xcu").write_text(_PROFILE, encoding="utf-8")
        command = [
            soffice, "--headless", "--norestore", "--nolockcheck", "--nodefault",
            f"-env:UserInstallation={Path(profile).as_uri()}",
            "--convert-to", FILTERS[fmt], "--outdir", str(outdir), *map(str, sources),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"LibreOffice did not finish converting {names} within {timeout} s"
    failed = [source.name for source in sources if not (outdir / f"{source.stem}.{fmt}").exists()]
    if done.returncode != 0 or failed:
        which = ", ".join(failed) if failed else names
        return f"LibreOffice could not convert {which}: {(done.stderr or done.stdout).strip()[-300:]}"
    return None
