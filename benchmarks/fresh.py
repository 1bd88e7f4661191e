"""One measurement in a fresh Python process, so that its peak RSS (getrusage) is its own."""
import json
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parent.parent


def measure(module, function, *args):
    """benchmarks.<module>.<function>(*args) in a fresh process (this checkout's tracer first on
    the path); returns the JSON value it returns."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.argv = ['x'];"
            f"from benchmarks import {module}; print(json.dumps({module}.{function}(*{tuple(args)!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])
