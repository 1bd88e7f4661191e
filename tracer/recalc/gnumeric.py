"""Run Gnumeric's ssconvert: recompute workbooks (`--recalc`) as a second spreadsheet engine.

ssconvert converts one file per process; its start-up is short (about 0.1 s), so many files are
run a few processes at a time instead of in one process.
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import shutil
import subprocess

from tracer.errors import TracerError

INSTALL = "apt-get install -y --no-install-recommends gnumeric"


def executable():
    """Path of ssconvert, or raise TracerError with the install command."""
    found = shutil.which("ssconvert")
    if not found:
        raise TracerError(f"Gnumeric's ssconvert was not found on PATH; install it with `{INSTALL}` and try again")
    return found


def recalc_many(sources, outdir, timeout=3600, processes=2):
    """Recompute every formula of each .xlsx in `sources` with Gnumeric and save it as
    `outdir/<stem>.xlsx`, `processes` files at a time. Returns the paths in the order of
    `sources`; raises TracerError naming the files that could not be recomputed."""
    sources = [Path(source).resolve() for source in sources]
    outdir = Path(outdir).resolve()
    results = [outdir / f"{source.stem}.xlsx" for source in sources]
    if len(set(results)) < len(results) or set(results) & set(sources):
        raise ValueError("files to recompute together need different names and another folder than their own")
    if not sources:
        return []
    ssconvert = executable()
    outdir.mkdir(parents=True, exist_ok=True)

    def recalc(pair):
        source, result = pair
        result.unlink(missing_ok=True)
        try:
            done = subprocess.run([ssconvert, "--import-type=Gnumeric_Excel:xlsx", "--export-type=Gnumeric_Excel:xlsx",
                                   "--recalc", str(source), str(result)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"{source.name} (no result within {timeout} s)"
        if done.returncode != 0 or not result.exists():
            return f"{source.name} ({(done.stderr or done.stdout).strip()[-200:]})"
        return None

    with ThreadPoolExecutor(max_workers=max(1, processes)) as pool:
        failed = [problem for problem in pool.map(recalc, zip(sources, results)) if problem]
    if failed:
        raise TracerError(f"Gnumeric could not recompute {'; '.join(failed)}")
    return results
