"""Fuzz campaign: mutated scenarios, data files, hand CSVs and --map files against the real CLI.

Every built-in template (templates/*.toml) is mutated — deleted and renamed keys, wrong types
(array, table, string, bool, date where a number or a name is expected), extreme numbers (0, -1,
1e308, 1e-320, 2⁶³−1, steps up to 1e11 and beyond), NaN/inf, ragged and empty arrays, unicode and
control characters in names, descriptions and comments, unknown activation/loss/optimiser/init
names, odd layer combinations, sizes beyond the sheet, data files (not UTF-8, BOM, /dev/zero, huge
fields, NaN cells) — and run through `run -o out.xlsx --trace out.csv`, `diagnose`,
`chain --param`, `gradcheck` and `check` (mutated hand CSVs, `--map` files with bad cell references,
a workbook that is not an xlsx).

Each case runs as its own process in a fresh folder (cwd three levels below the case root, so a
name like "../../x" stays inside it) with a private TMPDIR, a 30 s timeout, a 3 GB address-space
limit and no core files. It is classified:

    ok             exit 0
    refusal        exit 2 and stderr is exactly one line starting with "Error:"
    wrong answer   exit 1 where allowed: `check` reporting differences (report on stdout, empty
                   stderr), `gradcheck` failing ("Error: gradient check failed" / "no gradient")
    TRACEBACK      "Traceback" in the output, or an exit code other than 0/1/2 (a signal)
    HANG           still running after the timeout (the process group is killed)
    LOST FILE      an output that existed before was changed or removed by a failed run, or
                   replaced without --force
    STRAY FILES    a *.part file, any file other than the inputs and the requested outputs (those
                   only after exit 0), a folder left by a failed run, anything left in TMPDIR
    BAD OUTPUT     after exit 0, a workbook that is not a zip of well-formed XML (U+FFFE in a cell),
                   or a trace CSV without its header line
    EXIT 1         exit 1 where it is not the "your numbers are wrong" answer
    MULTI-LINE     exit 2 with a stderr that is not exactly one "Error: ..." line (a \\r or U+2028
                   inside counts as a line break)
    LONG LINE      a refusal line over 500 characters (the offending value echoed whole)
    WARNING        a RuntimeWarning on stderr (also on success)

A case gets the first of these that applies (in the order above, HANG first); its other flags are
kept in the results. The script prints the counts per class and per command and the failing
mechanisms (a signature: the exception and the innermost tracer function, or the first line of
the message with numbers blanked), and writes every failing case to FAILURES/<class>/<number>/
(its input files, command.sh to rerun it with `python -m tracer`, result.txt).

Two ways to start a case, the same process model:
    --mode fork   (default) a pre-imported parent forks one child per case; the child sets its
                  cwd, TMPDIR, limits and file descriptors and calls the click entry point like
                  `python -m tracer` does (uncaught exceptions print a traceback and exit 1,
                  atexit handlers run). About 1 s of interpreter start-up (sympy, numpy,
                  openpyxl) saved per case; hangs, signals and exit codes are real.
    --mode exec   `python -m tracer ...` as a subprocess (the reference).
`--compare N` runs the first N cases both ways and prints every case whose class differs.

Cases are deterministic for a seed: case i is generated from random.Random(f"{seed}/{i}"), so
`--cases N` runs a prefix of the same sequence and `--case i` reruns one case.

    python benchmarks/fuzz.py [--seed 1] [--cases 3000] [--jobs 2] [--failures fuzz-failures]
                              [--mode fork|exec] [--results results.jsonl] [--no-soffice]
    python benchmarks/fuzz.py --case 17 --show        # print one case's files and command
"""
import argparse
import collections
import datetime
import io
import json
import math
import os
from pathlib import Path
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0
MEMORY_LIMIT = 3 << 30          # bytes of address space per case (numpy's huge allocations fail here)
STEP_CAP = 8                    # steps of every case that does not test sizes (ok runs stay ~1 s)
CWD = Path("w1") / "w2" / "work"   # the case's working folder, below its root
CLASSES = ("ok", "refusal", "wrong answer", "HANG", "TRACEBACK", "LOST FILE", "STRAY FILES", "BAD OUTPUT",
           "EXIT 1", "MULTI-LINE", "LONG LINE", "WARNING")
FAILURES = CLASSES[3:]
COMMANDS = ("run", "diagnose", "chain", "gradcheck", "check")

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before numpy is imported (2 shared cores)
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(REPO))   # this checkout's tracer: its TOML writer (after the thread settings: it imports numpy)
from tracer.training.scenario import dump_toml, toml_value  # noqa: E402


# ============================================================ cases

@dataclass
class Case:
    """One run of the CLI: arguments after `tracer`, the files laid out before it, what it may write."""

    number: int
    command: str
    template: str
    args: list
    files: dict = field(default_factory=dict)        # path relative to the cwd -> bytes
    outputs: tuple = ()                              # requested outputs (relative to the cwd)
    preexisting: tuple = ()                          # outputs present before the run
    force: bool = False
    default_output: bool = False                     # run without -o/--trace: NAME.xlsx in the cwd
    workbook: str | None = None                      # the -o of run
    trace: str | None = None                         # the --trace of run
    mutations: list = field(default_factory=list)
    file_limit: int | None = None                    # RLIMIT_FSIZE: a full disk
    soffice: bool = False                            # starts LibreOffice (slow)

    def shell(self):
        """The command line, as a user types it (placeholders filled by `materialize`)."""
        import shlex
        return "python -m tracer " + " ".join(shlex.quote(a) for a in self.args)


# tracer.training.templates.LARGE (the campaign takes only its TOML writer from tracer): a 64-32-10 net whose every run writes
# a million formula cells; its keys are those of the other templates, so mutating it adds no coverage
LARGE_TEMPLATES = ("digits-64-32-10", "wide-784-32-10")


def _templates():
    """{name: TOML text} of the built-in templates (the folder `tracer templates` lists), but the large ones."""
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted((REPO / "templates").glob("*.toml"))
            if p.stem not in LARGE_TEMPLATES}


TEMPLATES = _templates()

# ------------------------------------------------------------ values

NAME_KEYS = {  # key -> a few wrong names for it
    "activation": ["sigmoidd", "ReLU", "", "softmax", "tanh ", "leaky-relu", "swish", "relu6", "Identity"],
    "init": ["kaiming", "xavier", "Uniform", "", "he", "orthogonal", "explicit"],
    "bias_init": ["glorot", "zeros", "", "explicit", "Constant"],
    "kind": ["conv", "BatchNorm", "", "layer_norm", "dense ", "residual"],
    "normalize": ["zscore", "Standard", "", "minmax ", "l2"],
    "reduction": ["avg", "Mean", "", "none", "sum "],
    "schedule": ["cosine", "Step", "", "linear"],
    "batch": ["half", "Full", "", "all", "1"],
}
LOSS_NAMES = ["mse2", "MSE", "", "cross_entropy", "softmax-ce", "bce ", "nll", "huber"]
OPTIMIZER_NAMES = ["adamw", "SGD", "", "lbfgs", "adamax", "rms_prop", "nadam"]
EXTREMES = [0, -1, 1e308, -1e308, 1e-320, 5e-324, -5e-324, 9223372036854775807, -9223372036854775808,
            1.7976931348623157e308, 2.2250738585072014e-308, -0.0, 1e11, 100000000000, 0.5, -1e-300, 1e300,
            1e-200, 3, 1e15, 4294967297, 10**7]
NONFINITE = [float("nan"), float("inf"), float("-inf")]
WRONG_TYPES = [[1], [], [[]], {"a": 1}, {}, "text", "", "1.5", True, False,
               datetime.date(1979, 5, 27), datetime.datetime(1979, 5, 27, 7, 32, tzinfo=datetime.timezone.utc),
               datetime.time(7, 32), datetime.datetime(1979, 5, 27, 0, 32), 1.5, [1, "a"], [[1, 2], [3]]]
UNICODE = ["\ufffe", "\uffff", "\u0007", "\u200f", "\u202e", "\u0000", "\u001b[31m", "\r", "\t", "\u2028",
           "\U0001F600", "e\u0301", "\ufeff", "\u0085", "\u00a0", "Ω≈ç√", "日本語", "\\", '"', "'",
           "\x7f", "\u200b", "=1+1", "@SUM(A1)"]


def unicode_text(rng, base="scenario"):
    parts = [base] + rng.sample(UNICODE, rng.randint(1, 4))
    rng.shuffle(parts)
    text = "".join(parts)
    if rng.random() < 0.1:
        text = text * rng.choice([50, 400])
    return text


def typo(rng, key):
    if not key:
        return "x"
    kind = rng.randrange(6)
    i = rng.randrange(len(key))
    if kind == 0:
        return key[:i] + key[i + 1:] or key + "_"
    if kind == 1 and len(key) > 1:
        j = min(i + 1, len(key) - 1)
        chars = list(key)
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars) if chars != list(key) else key + "s"
    if kind == 2:
        return key.upper()
    if kind == 3:
        return key + "s"
    if kind == 4:
        return key.replace("_", "-") if "_" in key else key + "_"
    return key + rng.choice(["\u200b", " ", "\u00e9"])


# ------------------------------------------------------------ paths in a parsed scenario

def paths(node, prefix=()):
    """Every (path, value) below `node`; a path is a tuple of dict keys and list indices."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,), value
        yield from paths(value, prefix + (key,))


def get(raw, path):
    for key in path:
        raw = raw[key]
    return raw


def put(raw, path, value):
    get(raw, path[:-1])[path[-1]] = value


def dotted(path):
    return ".".join(str(p) for p in path)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def widths_of(raw):
    """Units per layer (input first) of an unmutated template."""
    data = raw.get("data", {})
    widths = [len(data["inputs"][0])]
    for layer in raw["layers"]:
        widths.append(layer.get("units", widths[-1]))
    return widths


def parameters_of(raw):
    """Valid parameter names of an unmutated template (W/b of dense, gamma/beta of batchnorm layers)."""
    widths = widths_of(raw)
    names = []
    for l, layer in enumerate(raw["layers"], start=1):
        if layer.get("kind") == "batchnorm":
            names += [f"gamma{l}[{j}]" for j in range(widths[l])] + [f"beta{l}[{j}]" for j in range(widths[l])]
        else:
            names += [f"W{l}[{i},{j}]" for i in range(widths[l - 1]) for j in range(widths[l])]
            names += [f"b{l}[{j}]" for j in range(widths[l])]
    return names


# ------------------------------------------------------------ scenario mutations

class Mutator:
    """Applies random mutations to a parsed scenario; records a line per mutation."""

    def __init__(self, rng, raw, command):
        self.rng, self.raw, self.command = rng, raw, command
        self.log = []
        self.overrides = []          # --set arguments
        self.steps_option = None     # --steps argument (text)
        self.comments = []           # header comments (text-level)
        self.text_mutation = None    # a function bytes -> bytes applied last
        self.files = {}              # extra files (data.csv)

    # -- helpers
    def pick(self, predicate):
        found = [(p, v) for p, v in paths(self.raw) if predicate(p, v)]
        return self.rng.choice(found) if found else (None, None)

    def note(self, text):
        self.log.append(text)

    # -- operators (each returns nothing; logs what it did)
    def delete_key(self):
        path, _ = self.pick(lambda p, v: isinstance(p[-1], str))
        if path:
            del get(self.raw, path[:-1])[path[-1]]
            self.note(f"deleted {dotted(path)}")

    def rename_key(self):
        path, value = self.pick(lambda p, v: isinstance(p[-1], str))
        if path:
            parent = get(self.raw, path[:-1])
            new = typo(self.rng, path[-1])
            items = [(new if k == path[-1] else k, v) for k, v in parent.items()]
            parent.clear()
            parent.update(items)
            self.note(f"renamed {dotted(path)} to {new!r}")

    def wrong_type(self):
        path, value = self.pick(lambda p, v: not isinstance(v, (dict, list)) or p[-1] in ("layers", "data", "betas", "weights", "bias", "inputs", "targets"))
        if path:
            new = self.rng.choice(WRONG_TYPES)
            self.set(path, new, f"wrong type at {dotted(path)}: {toml_value(new)}")

    def extreme_number(self):
        path, value = self.pick(lambda p, v: is_number(v))
        if path:
            new = self.rng.choice(EXTREMES)
            self.set(path, new, f"{dotted(path)} = {toml_value(new)}")

    def nonfinite(self):
        path, value = self.pick(lambda p, v: is_number(v))
        if path:
            new = self.rng.choice(NONFINITE)
            self.set(path, new, f"{dotted(path)} = {toml_value(new)}")

    def ragged(self):
        path, value = self.pick(lambda p, v: isinstance(v, list) and p[-1] in ("inputs", "targets", "weights", "bias", "betas", "input_columns", "target_columns"))
        if not path:
            return self.wrong_type()
        choice = self.rng.randrange(7)
        if choice == 0:
            new = []
        elif choice == 1:
            new = [[]]
        elif choice == 2 and value and isinstance(value[0], list):
            new = [list(r) for r in value]
            new[self.rng.randrange(len(new))].append(0.5)
        elif choice == 3:
            new = value[:-1] if len(value) > 1 else value + value
        elif choice == 4:
            new = [value]
        elif choice == 5 and value and isinstance(value[0], list):
            new = [r[0] if r else 0 for r in value]
        else:
            new = value + [value[-1]] if value else [1]
        self.set(path, new, f"{dotted(path)} = {toml_value(new)[:80]}")

    def unicode(self):
        where = self.rng.randrange(4)
        if where == 0:
            self.raw["name"] = unicode_text(self.rng, self.raw.get("name", "x"))
            self.note(f"name = {toml_value(self.raw['name'])[:120]}")
        elif where == 1:
            self.raw["description"] = unicode_text(self.rng, "a description")
            self.note(f"description = {toml_value(self.raw['description'])[:120]}")
        elif where == 2:
            text = "".join(self.rng.sample(["\ufffe", "\uffff", "\u200f", "\u202e", "Ω", "\U0001F600", "\u00a0", "\u2028"], 2))
            self.comments.append(f"comment {text}")
            self.note(f"comment with {text.encode('unicode_escape').decode()}")
        else:
            path, value = self.pick(lambda p, v: isinstance(v, str))
            if path:
                new = unicode_text(self.rng, value)
                self.set(path, new, f"{dotted(path)} = {toml_value(new)[:120]}")

    def unknown_name(self):
        def named(p, v):
            return isinstance(p[-1], str) and (p[-1] in NAME_KEYS or p[-2:] in (("loss", "name"), ("optimizer", "name")))
        path, value = self.pick(named)
        if path is None or self.rng.random() < 0.3:
            layer = self.rng.randrange(len(self.raw["layers"])) if isinstance(self.raw.get("layers"), list) and self.raw["layers"] else None
            options = [("loss", "name"), ("optimizer", "name"), ("data", "normalize"), ("loss", "reduction"),
                       ("optimizer", "schedule")]
            if layer is not None and isinstance(self.raw["layers"][layer], dict):
                options += [("layers", layer, k) for k in ("activation", "init", "bias_init", "kind")]
            path = self.rng.choice(options)
            if not isinstance(get(self.raw, path[:-1]), dict):
                return
        key = path[-1]
        if path[-2:] == ("loss", "name"):
            new = self.rng.choice(LOSS_NAMES)
        elif path[-2:] == ("optimizer", "name"):
            new = self.rng.choice(OPTIMIZER_NAMES)
        else:
            new = self.rng.choice(NAME_KEYS.get(key, ["nonsense"]))
        self.set(path, new, f"{dotted(path)} = {toml_value(new)}")

    def layer_combo(self):
        layers = self.raw.get("layers")
        if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
            return self.wrong_type()
        combo = self.rng.randrange(14)
        bn = {"kind": "batchnorm", "activation": self.rng.choice(["identity", "relu", "sigmoid", "tanh"])}
        if combo == 0:
            layers.insert(0, dict(bn))
            self.note("batchnorm as the first layer")
        elif combo == 1:
            layers.append(dict(bn))
            self.note("batchnorm as the output layer")
        elif combo == 2:
            i = self.rng.randrange(len(layers))
            layers.insert(i, dict(bn))
            layers.insert(i, dict(bn))
            self.note(f"two batchnorm layers in a row at {i}")
        elif combo == 3:
            i = self.rng.randrange(len(layers))
            layers[i]["residual"] = True
            layers[i]["units"] = layers[i].get("units", 2) + 1
            self.note(f"layers.{i}: residual with a width change")
        elif combo == 4:
            layers[-1]["residual"] = True
            self.note("residual output layer")
        elif combo == 5 and len(layers) > 1:
            layers[0]["activation"] = "softmax"
            self.note("softmax hidden layer")
        elif combo == 6:
            layers[-1]["activation"] = "softmax"
            self.raw.setdefault("loss", {})["name"] = "softmax_ce"
            self.note("softmax output with softmax_ce (targets as given)")
        elif combo == 7:
            self.raw.setdefault("loss", {})["name"] = self.rng.choice(["bce", "softmax_ce"])
            self.note(f"loss {self.raw['loss']['name']} with the template's output activation")
        elif combo == 8:
            layers.insert(0, dict(bn))
            self.raw.setdefault("training", {})["batch"] = 1
            self.note("batchnorm with batch = 1")
        elif combo == 9:
            layers.insert(self.rng.randrange(len(layers)), {"kind": "batchnorm", "units": 99, "eps": self.rng.choice([0, -1, 1e-300, 1e300])})
            self.note("batchnorm with a wrong width and an odd eps")
        elif combo == 10:
            self.raw["layers"] = []
            self.note("no layers")
        elif combo == 11:
            self.raw["layers"] = layers[0]
            self.note("layers as a table, not an array of tables")
        elif combo == 12:
            i = self.rng.randrange(len(layers))
            layers[i].update({"init": "explicit"})
            layers[i].pop("weights", None)
            self.note(f"layers.{i}: init explicit without weights")
        else:
            i = self.rng.randrange(len(layers))
            layers[i]["train_bias"] = False
            self.raw.setdefault("training", {})["clip_norm"] = self.rng.choice([1e-3, 1.0, 1e300])
            self.note(f"layers.{i}: train_bias = false with clip_norm")

    def training(self):
        """Valid-but-unusual optimiser and training settings (many of these should run)."""
        choice = self.rng.randrange(10)
        opt = self.raw.setdefault("optimizer", {}) if isinstance(self.raw.get("optimizer", {}), dict) else None
        tr = self.raw.setdefault("training", {}) if isinstance(self.raw.get("training", {}), dict) else None
        if opt is None or tr is None:
            return self.wrong_type()
        if choice == 0:
            opt.clear()
            opt.update({"name": "adam", "lr": 0.01, "betas": self.rng.choice([[0.9, 0.999], [0.0, 0.0], [0.999999, 0.999999], [1.0, 0.5], [0.9]])})
        elif choice == 1:
            opt.clear()
            opt.update({"name": "momentum", "lr": 0.01, "momentum": self.rng.choice([0.0, 0.9, 0.999999, 1.0]), "nesterov": self.rng.random() < 0.5})
        elif choice == 2:
            opt.update({"schedule": "step", "step_size": self.rng.choice([1, 0, 10**18]), "gamma": self.rng.choice([0.5, 1e-300, 1e300])})
        elif choice == 3:
            opt.clear()
            opt.update({"name": self.rng.choice(["adagrad", "rmsprop"]), "eps": self.rng.choice([1e-10, 1e-320, 1e300])})
        elif choice == 4:
            tr["clip_value"] = self.rng.choice([1e-300, 0.5, 1e308])
        elif choice == 5:
            tr["batch"] = self.rng.choice([1, 2, 3, 0, -1, 10**9])
        elif choice == 6:
            tr["shuffle"] = self.rng.choice([True, "yes", 1])
        elif choice == 7:
            self.raw.setdefault("data", {})["normalize"] = self.rng.choice(["standard", "minmax"])
        elif choice == 8:
            opt["weight_decay"] = self.rng.choice([0.1, 1e300, -0.0])
        else:
            self.raw["diagnosis"] = {"vanishing": self.rng.choice([1e-300, 1e300]), "exploding": self.rng.choice([1e-300, 1e300])}
        self.note(f"training settings: optimizer {toml_value(opt)[:100]}, training {toml_value(tr)[:80]}")

    def data_values(self):
        """Data cells: huge, tiny, constant columns, many samples (valid TOML, unusual numbers)."""
        data = self.raw.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("inputs"), list) or not data["inputs"] \
                or not all(isinstance(r, list) and r for r in data["inputs"]):
            return self.ragged()
        choice = self.rng.randrange(6)
        rows = data["inputs"]
        if choice == 0:
            value = self.rng.choice([1.7976931348623157e308, -1e308, 1e200, 1e-320])
            for r in rows:
                r[0] = value * self.rng.choice([1, -1])
            self.note(f"data.inputs column 0 = ±{value!r}")
        elif choice == 1:
            for r in rows:
                r[0] = 3.0
            self.note("data.inputs column 0 constant")
        elif choice == 2:
            data["targets"] = [[self.rng.choice([1e-170, 1e170, -5.0, 2.0, 0.0]) for _ in t] if isinstance(t, list) else t for t in data.get("targets", [])]
            self.note(f"data.targets = {toml_value(data['targets'])[:80]}")
        elif choice == 3:
            data["inputs"] = [list(r) for r in rows] * 2
            self.note("data.inputs doubled (targets not)")
        elif choice == 4:
            data["inputs"] = [[1e-320 * (i + 1) for i, _ in enumerate(r)] for r in rows]
            self.note("data.inputs subnormal")
        else:
            data["targets"] = [[0.5 for _ in t] if isinstance(t, list) else t for t in data.get("targets", [])]
            self.note("data.targets all 0.5")

    def size(self):
        """Sizes beyond the sheet (and absurd ones, which need a size guard before allocating)."""
        layers = self.raw.get("layers")
        choice = self.rng.randrange(7)
        if choice <= 1:
            steps = self.rng.choice([1000, 10**7, 10**8, 10**11, 9223372036854775807])
            if choice == 0:
                self.raw["steps"] = steps
                self.note(f"steps = {steps}")
            else:
                self.steps_option = str(steps)
                self.note(f"--steps {steps}")
        elif choice == 2 and isinstance(layers, list) and len(layers) > 1 and isinstance(layers[0], dict):
            units = self.rng.choice([300, 3000, 20000]) if self.command not in ("gradcheck", "chain") else 300
            layers[0]["units"] = units
            layers[0].pop("weights", None)
            layers[0].pop("bias", None)
            if layers[0].get("init") == "explicit":
                layers[0]["init"] = "uniform"
            if isinstance(layers[1], dict) and layers[1].get("kind") == "batchnorm":
                layers[1].pop("units", None)
            for later in layers[1:]:
                if isinstance(later, dict) and later.get("init") == "explicit":
                    later["init"] = "uniform"
                    later.pop("weights", None)
            self.note(f"layers.0.units = {units}")
        elif choice == 3 and isinstance(self.raw.get("data"), dict) and isinstance(self.raw["data"].get("inputs"), list):
            width = self.rng.choice([1000, 17000]) if self.command not in ("gradcheck", "chain") else 60
            data = self.raw["data"]
            data["inputs"] = [[0.001 * ((i * 7 + j) % 13) for j in range(width)] for i in range(len(data["inputs"]))]
            if isinstance(layers, list) and layers and isinstance(layers[0], dict):
                layers[0].pop("weights", None)
                if layers[0].get("init") == "explicit":
                    layers[0]["init"] = "uniform"
            self.note(f"{width} input columns")
        elif choice == 4 and isinstance(self.raw.get("data"), dict) and isinstance(self.raw["data"].get("inputs"), list):
            data = self.raw["data"]
            factor = self.rng.choice([500, 3000])
            data["inputs"] = data["inputs"] * factor
            if isinstance(data.get("targets"), list):
                data["targets"] = data["targets"] * factor
            self.note(f"data repeated ×{factor}")
        elif choice == 5:
            depth, width = self.rng.choice([(14, 3), (20, 3), (30, 8)]), None
            depth, width = depth
            inputs = self.raw.get("data", {}).get("inputs") if isinstance(self.raw.get("data"), dict) else None
            outputs = len(self.raw["data"]["targets"][0]) if inputs else 1
            self.raw["layers"] = [{"units": width, "activation": "sigmoid", "init": "uniform", "low": -1.0, "high": 1.0}
                                  for _ in range(depth)] + [{"units": outputs, "activation": "identity"}]
            self.raw.setdefault("loss", {})["name"] = "half_sse"
            self.note(f"{depth} sigmoid layers of width {width}")
        else:
            self.raw["name"] = self.rng.choice(["x" * 300, "a/" * 100 + "b", "../../escaped", "@ROOT@/absolute", "."])
            self.note(f"name = {self.raw['name'][:60]!r}")

    def data_file(self):
        data = self.raw.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("inputs"), list) or not isinstance(data.get("targets"), list):
            return self.ragged()
        try:
            n_in, n_out = len(data["inputs"][0]), len(data["targets"][0])
            rows = [list(a) + list(t) for a, t in zip(data["inputs"], data["targets"])]
        except TypeError:
            return self.ragged()
        header = [f"x{i}" for i in range(n_in)] + [f"t{k}" for k in range(n_out)]
        lines = [",".join(header)] + [",".join(repr(float(v)) if is_number(v) else str(v) for v in r) for r in rows]
        variant = self.rng.choice(["ok", "bom", "latin1", "crlf", "nan", "inf", "1e309", "empty cell", "huge field",
                                   "huge unused field", "header only", "empty", "missing column", "NUL", "ragged",
                                   "/dev/zero", "directory", "missing file", "absolute", "quoted", "text cell",
                                   "utf16", "many rows", "long line"])
        name = "data.csv"
        text = None
        encoding = "utf-8"
        inputs_cols, target_cols = header[:n_in], header[n_in:]
        if variant in ("nan", "inf", "1e309", "empty cell", "text cell"):
            cells = lines[1].split(",")
            cells[0] = {"nan": "nan", "inf": "inf", "1e309": "1e309", "empty cell": "", "text cell": "abc"}[variant]
            lines[1] = ",".join(cells)
        elif variant == "huge field":
            cells = lines[1].split(",")
            cells[0] = "1" * 200_000
            lines[1] = ",".join(cells)
        elif variant == "huge unused field":
            lines[0] += ",notes"
            lines[1] += "," + "z" * 200_000
        elif variant == "long line":
            lines[1] += "," * 100_000
        elif variant == "header only":
            lines = lines[:1]
        elif variant == "empty":
            lines = []
        elif variant == "missing column":
            inputs_cols = inputs_cols + ["nosuch"]
        elif variant == "NUL":
            lines[1] = lines[1].replace(",", ",\x00", 1)
        elif variant == "ragged":
            lines[1] = lines[1].rsplit(",", 1)[0]
        elif variant == "quoted":
            lines = [",".join(f'"{c}"' for c in line.split(",")) for line in lines]
        elif variant == "many rows":
            lines = lines[:1] + lines[1:] * 5000
        elif variant == "/dev/zero":
            name = "/dev/zero"
        elif variant == "directory":
            name = "."
        elif variant == "missing file":
            name = "nosuch.csv"
        elif variant == "absolute":
            name = "@ROOT@/" + str(CWD / "data.csv")
        text = ("\r\n" if variant == "crlf" else "\n").join(lines) + ("\n" if lines else "")
        if variant == "bom":
            payload = b"\xef\xbb\xbf" + text.encode()
        elif variant == "latin1":
            payload = text.replace("x0", "x\u00e90", 1).encode("latin-1")
            inputs_cols = ["x\u00e90"] + inputs_cols[1:]
        elif variant == "utf16":
            payload = text.encode("utf-16")
        else:
            payload = text.encode(encoding)
        if not name.startswith("/dev") and name not in (".", "nosuch.csv"):
            self.files["data.csv"] = payload
        new = {"file": name, "input_columns": inputs_cols, "target_columns": target_cols}
        if "normalize" in data:
            new["normalize"] = data["normalize"]
        self.raw["data"] = new
        self.note(f"data from a file ({variant})")

    def override(self):
        """A mutation delivered by --set instead of the file (exercises the TOML round trip)."""
        choice = self.rng.randrange(9)
        if choice == 0:
            arg = self.rng.choice(["layers.0.activation=[1]", "layers.0.init=[1]", "layers.0.bias_init={a=1}",
                                   "loss.name=[1]", "optimizer.name={a=1}", "layers.0.kind=[\"dense\"]",
                                   "data.normalize=[1]", "optimizer.schedule=[]", "loss.reduction={}",
                                   "training.batch=[1]"])
        elif choice == 1:
            arg = self.rng.choice(["seed=1979-05-27", "steps=1979-05-27T07:32:00Z", "optimizer.lr=07:32:00",
                                   "name=1979-05-27", "description=1979-05-27T00:32:00"])
        elif choice == 2:
            arg = self.rng.choice(["optimizer.lr=nan", "optimizer.lr=inf", "optimizer.lr=-inf", "optimizer.lr=1e309",
                                   "training.clip_norm=nan", "seed=-1", "seed=9223372036854775807", "steps=0",
                                   "optimizer.lr=1e-320", "layers.0.units=0", "layers.0.units=-1"])
        elif choice == 3:
            arg = self.rng.choice(["nonsense", "=1", "layers.99.units=3", "layers.x.units=3", "steps.x=1",
                                   "optimizer.lr.x=1", "a.b.c.d=1", "layers.0=1", "data=1", "layers=1", "..=1",
                                   "layers.-1.units=2", "optimizer.lr"])
        elif choice == 4:
            arg = f"description={unicode_text(self.rng, 'd')}"
        elif choice == 5:
            arg = f"name={unicode_text(self.rng, 'n')}"
        elif choice == 6:
            arg = "layers.0.activation=" + self.rng.choice(["sigmoidd", "softmax", "\u0007", "relu", "\"tanh\""])
        elif choice == 7:
            arg = "data.inputs=" + self.rng.choice(["[[1,2],[3]]", "[]", "[[nan]]", "[[1e309]]", "[[\"a\"]]", "[[1]]"])
        else:
            arg = self.rng.choice(["optimizer.lr=0.05", "steps=3", "seed=5", "training.batch=\"full\""])
        self.overrides.append(arg)
        self.note(f"--set {arg}")

    def steps_flag(self):
        value = self.rng.choice(["1", "2", "3", "0", "-1", "abc", "1e3", "100000000000", "9223372036854775807",
                                 "9223372036854775808"])
        self.steps_option = value
        self.note(f"--steps {value}")

    def toml_text(self):
        choice = self.rng.choice(["truncate", "duplicate", "bom", "nul", "latin1", "empty", "crlf", "garbage",
                                  "utf16", "unterminated", "bad escape"])

        def mutate(payload, choice=choice):
            if choice == "truncate":
                return payload[: max(1, len(payload) * 2 // 3)]
            if choice == "duplicate":
                return payload + b"\nsteps = 3\n"
            if choice == "bom":
                return b"\xef\xbb\xbf" + payload
            if choice == "nul":
                return payload.replace(b"\n", b"\n\x00", 1)
            if choice == "latin1":
                return payload.replace(b"\n", b"\n# caf\xe9\n", 1)
            if choice == "empty":
                return b""
            if choice == "crlf":
                return payload.replace(b"\n", b"\r\n")
            if choice == "garbage":
                return bytes(range(256)) * 4
            if choice == "utf16":
                return payload.decode("utf-8", "replace").encode("utf-16")
            if choice == "unterminated":
                return payload + b'\nx = "abc\n'
            return payload + b'\nx = "\\q"\n'
        self.text_mutation = mutate
        self.note(f"TOML text: {choice}")

    def set(self, path, value, text):
        if self.rng.random() < 0.2 and all(isinstance(p, (str, int)) for p in path) \
                and not isinstance(value, dict) and not (isinstance(value, list) and value and isinstance(value[0], dict)):
            self.overrides.append(f"{dotted(path)}={toml_value(value)}")
            self.note(f"--set {dotted(path)}={toml_value(value)[:100]}")
            return
        put(self.raw, path, value)
        self.note(text)


OPERATORS = [  # (name, weight)
    ("delete_key", 8), ("rename_key", 6), ("wrong_type", 11), ("extreme_number", 12), ("nonfinite", 5),
    ("ragged", 6), ("unicode", 7), ("unknown_name", 8), ("layer_combo", 9), ("training", 6),
    ("data_values", 5), ("size", 2.2), ("data_file", 5), ("override", 8), ("steps_flag", 2), ("toml_text", 2.5),
]

# ------------------------------------------------------------ hand CSVs and --map files

HAND_VALUES_BAD = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "-Infinity", "1e309", "-1e309", "0e999",
                   "1e-400", "", "abc", "0x10", "1_000", "\u0661", "1e5000", "--1", "1,5", "\u00a01"]


def hand_names(raw, rng):
    widths = widths_of(raw)
    layers = len(widths) - 1
    names = []
    for _ in range(rng.randint(2, 7)):
        l = rng.randint(1, layers)
        j = rng.randrange(widths[l])
        i = rng.randrange(widths[l - 1])
        bn = raw["layers"][l - 1].get("kind") == "batchnorm"
        w, b = (f"gamma{l}[{j}]", f"beta{l}[{j}]") if bn else (f"W{l}[{i},{j}]", f"b{l}[{j}]")
        name = rng.choice([f"u{l}[{j}]", f"a{l}[{j}]", f"slope{l}[{j}]", f"delta{l}[{j}]", w, b,
                           f"grad {w}", f"grad {b}", f"update {w}", "loss"])
        if rng.random() < 0.3:
            name += f"@{rng.randrange(3)}"
        names.append(name)
    return names


def hand_csv(rng, raw, log):
    names = hand_names(raw, rng)
    values = [rng.choice(["0.5", "-1.25e-3", "95", "900", "0", "1", "0.2413"]) for _ in names]
    header = rng.random() < 0.5
    choice = rng.randrange(14)
    if choice <= 2:
        k = rng.randrange(len(values))
        values[k] = rng.choice(HAND_VALUES_BAD)
        log.append(f"hand value {values[k]!r}")
    elif choice <= 4:
        k = rng.randrange(len(names))
        names[k] = rng.choice(["W0[0,0]", "W1[99,0]", "W9[0,0]", "u1[0]@99999", "u1[0]@-1", "a1[0]#999", "x", "",
                               "W1[0,0]\u200f", "\U0001F600", "gamma1[0]", "grad u1[0]", "loss[0]", "W1[0]", "b1[0,0]",
                               "u1[00000000000000000000001]", "u99999999999999999999[0]", "u1[0]@99999999999999999999",
                               "W1[0,0]#0", "grad W1[0,0]#99", "W" * 1000])
        log.append(f"hand name {names[k][:60]!r}")
    elif choice == 5:
        log.append("hand with duplicate names")
        names, values = names + names, values + values
    lines = (["name,value"] if header else []) + [f"{n},{v}" for n, v in zip(names, values)]
    if choice == 6:
        lines.insert(rng.randrange(len(lines) + 1), "no comma here")
        log.append("hand line without a comma")
    elif choice == 7:
        lines = ["name,value"] if rng.random() < 0.5 else []
        log.append("hand without numbers")
    elif choice == 8:
        lines.append("loss," + "9" * 200_000)
        log.append("hand with a 200,000-digit value")
    text = "\n".join(lines) + "\n"
    payload = text.encode("utf-8")
    if choice == 9:
        payload = b"\xef\xbb\xbf" + payload
        log.append("hand with a BOM")
    elif choice == 10:
        payload = payload.replace(b"\n", b"\n\xff\xfe", 1)
        log.append("hand not UTF-8")
    elif choice == 11:
        payload = payload.replace(b"\n", b"\r\n")
        log.append("hand with CRLF")
    elif choice == 12:
        payload = payload.replace(b",", b",\x00", 1)
        log.append("hand with a NUL byte")
    elif choice == 13:
        payload = text.encode("utf-16")
        log.append("hand in UTF-16")
    return payload


BAD_CELLS = ["A0", "ZZZZ1", "Sheet1!ZZZZ1", "1A", "Sheet1!", "XFD1048577", "A1:B2", "A:A", "Sheet1!A1:B2",
             "NoSheet!A1", "'Sheet1'!A1", "", "Sheet1!A1!B2", "\u200fA1", "A-1", "a1", "$A$1", "Sheet1!$B$2",
             "A1048577", "XFE1", "R1C1", "Sheet1!A", "!A1", "C3"]


def their_workbook():
    """A small workbook with numbers and formulas in Sheet1!A1:C3 (made once per process)."""
    from openpyxl import Workbook
    book = Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    for r in range(1, 4):
        for c in range(1, 3):
            sheet.cell(r, c, value=0.25 * r - c)
        sheet.cell(r, 3, value=f"=A{r}*B{r}")
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


_WORKBOOK = []


def map_case(rng, raw, log):
    """(files, args) for `check SCENARIO their.xlsx --map map.csv`."""
    if not _WORKBOOK:
        _WORKBOOK.append(their_workbook())
    names = hand_names(raw, rng)[:3]
    cells = [rng.choice(["Sheet1!A1", "B2", "Sheet1!C3"]) for _ in names]
    k = rng.randrange(len(cells))
    cells[k] = rng.choice(BAD_CELLS)
    log.append(f"map cell {cells[k]!r}")
    workbook = _WORKBOOK[0]
    mapping = ("name,cell\n" + "".join(f"{n},{c}\n" for n, c in zip(names, cells))).encode()
    variant = rng.randrange(8)
    if variant == 0:
        workbook = b"name,value\nW1[0,0],1\n"
        log.append("their.xlsx is a text file")
    elif variant == 1:
        mapping = _WORKBOOK[0]
        log.append("the map file is an xlsx")
    elif variant == 2:
        workbook = b""
        log.append("their.xlsx is empty")
    elif variant == 3:
        mapping = b"\xef\xbb\xbf" + mapping
        log.append("map with a BOM")
    return {"their.xlsx": workbook, "map.csv": mapping}, ["their.xlsx", "--map", "map.csv"]


# ------------------------------------------------------------ one case

COMMAND_WEIGHTS = {"run": 30, "diagnose": 17, "chain": 17, "gradcheck": 15, "check": 21}


def make_case(seed, number, soffice=True, step_cap=STEP_CAP):
    """Case `number` of the campaign with `seed` (independent of how many cases are run).

    soffice=False leaves out the cases that start LibreOffice; step_cap lowers the steps of the
    cases that do not test sizes (the test suite's sample uses 2 to stay fast)."""
    rng = random.Random(f"{seed}/{number}")
    template = rng.choice(sorted(TEMPLATES))
    raw = tomllib.loads(TEMPLATES[template])
    pristine = tomllib.loads(TEMPLATES[template])
    raw["steps"] = min(raw["steps"], step_cap)
    command = rng.choices(list(COMMAND_WEIGHTS), weights=list(COMMAND_WEIGHTS.values()))[0]
    mutator = Mutator(rng, raw, command)
    mutate_scenario = command in ("run", "diagnose") or rng.random() < 0.55
    if rng.random() < 0.04:
        mutate_scenario = False
        mutator.note("unmutated template (steps capped)")
    if mutate_scenario:
        names, weights = zip(*OPERATORS)
        for _ in range(rng.choices([1, 2, 3], weights=[60, 30, 10])[0]):
            operator = rng.choices(names, weights=weights)[0]
            try:
                getattr(mutator, operator)()
            except (KeyError, IndexError, TypeError, AttributeError, ValueError):
                mutator.note(f"({operator} did not apply to the mutated scenario)")
        if rng.random() < 0.2 and mutator.steps_option is None:
            mutator.steps_option = "3"
            mutator.note("--steps 3")
    text = "".join(f"# {comment}\n" for comment in ["fuzz case", *mutator.comments]) + dump_toml(raw)
    text = text.encode("utf-8")
    if mutator.text_mutation:
        text = mutator.text_mutation(text)
    files = {"scenario.toml": text, **mutator.files}
    args = [command, "scenario.toml"]
    for item in mutator.overrides:
        args += ["--set", item.replace("\0", "\\u0000")]  # a NUL cannot be in a real argv
    if mutator.steps_option is not None:
        args += ["--steps", mutator.steps_option]
    case = Case(number=number, command=command, template=template, args=args, files=files, mutations=mutator.log)
    globals()[f"_args_{command}"](case, rng, pristine, soffice)
    return case


def _args_run(case, rng, raw, soffice):
    xlsx, csv_ = "out.xlsx", "out.csv"
    roll = rng.random()
    if roll < 0.04:
        case.default_output = True
        case.mutations.append("no -o/--trace (NAME.xlsx)")
        if rng.random() < 0.5:  # the default output path comes from the name
            name = rng.choice(["../../escaped", "@ROOT@/absolute", "sub/dir/x", "..", "x" * 300, "a\u0007b"])
            case.args += ["--set", f"name={toml_value(name)}"]
            case.mutations.append(f"--set name={toml_value(name)[:40]}")
        return
    if roll < 0.08:
        xlsx = csv_ = "out.xlsx" if rng.random() < 0.5 else "same.csv"
        case.mutations.append("-o and --trace the same path")
    elif roll < 0.11:
        xlsx = "sub/dir/out.xlsx"
        case.mutations.append("-o in a folder that does not exist")
    elif roll < 0.13:
        xlsx = "o" * 300 + ".xlsx"
        case.mutations.append("-o name of 305 characters")
    elif roll < 0.15:
        csv_ = "c" * 300 + ".csv"
        case.mutations.append("--trace name of 304 characters")
    only = rng.random()
    outputs = [("-o", xlsx), ("--trace", csv_)]
    if only < 0.07:
        outputs = outputs[:1]
    elif only < 0.14:
        outputs = outputs[1:]
    for flag, path in outputs:
        case.args += [flag, path]
        if flag == "-o":
            case.workbook = path
        else:
            case.trace = path
    case.outputs = tuple(dict.fromkeys(p for _, p in outputs))
    if rng.random() < 0.18:
        case.preexisting = tuple(o for o in case.outputs if len(Path(o).name) < 255)
        case.force = rng.random() < 0.8
        for path in case.preexisting:
            case.files[path] = b"precious: an earlier good output\n"
        if case.force:
            case.args.append("--force")
        case.mutations.append("outputs exist" + (" (--force)" if case.force else ""))
    if rng.random() < 0.07:
        case.file_limit = rng.choice([0, 2048, 20_000, 200_000])
        case.mutations.append(f"file size limit {case.file_limit} bytes (a full disk)")
    _maybe_option(case, rng, 0.06, "--window",
                  ["0:1", "1:2", "0:0", "2:1", "0:99999", "a:b", "-1:2", "1", "0:9223372036854775808"])
    if rng.random() < 0.05:
        _add_option(case, "--param", _param(rng, raw))
    if rng.random() < 0.01 and soffice:
        case.args.append("--verify")
        case.soffice = True


def _param(rng, raw):
    if rng.random() < 0.8:
        return rng.choice(parameters_of(raw))
    return rng.choice(["W9[0,0]", "W1[99,0]", "b1[-1]", "x", "", "W1[0,0]]", "W1[0]", "b1[0,0]", "gamma1[0]",
                       "W1[99999999999999999999,0]", "W01[0,0]", "w1[0,0]", "W1[0, 0]", "W\u0661[0,0]"])


def _add_option(case, option, value, shown=str):
    """Append `option value` to the command line and record it as a mutation."""
    case.args += [option, value]
    case.mutations.append(f"{option} {shown(value)}")


def _maybe_option(case, rng, probability, option, choices, shown=str):
    """With `probability`, add `option` with one of `choices` (one rng.random(), then one rng.choice())."""
    if rng.random() < probability:
        _add_option(case, option, rng.choice(choices), shown)


def _args_diagnose(case, rng, raw, soffice):
    _maybe_option(case, rng, 0.1, "--rows", ["1", "0", "100000", "-5", "x"])


def _args_chain(case, rng, raw, soffice):
    _add_option(case, "--param", _param(rng, raw))
    _maybe_option(case, rng, 0.25, "--step", ["0", "1", "7", "8", "100", "99999999999999999999", "-1"])
    _maybe_option(case, rng, 0.15, "--sample", ["0", "1", "3", "4", "100"])
    _maybe_option(case, rng, 0.15, "--path", ["0", "0,0", "0,1", "0,0,0,0,0,0,0", "a", ",", "0,-1", "99,0", ""],
                  shown=repr)
    if rng.random() < 0.3:
        case.args.append("--latex")


def _args_gradcheck(case, rng, raw, soffice):
    _maybe_option(case, rng, 0.2, "--step", ["0", "1", "7", "8", "1000", "99999999999999999999"])


def _args_check(case, rng, raw, soffice):
    if soffice and rng.random() < 0.08:
        files, args = map_case(rng, raw, case.mutations)
        case.soffice = True
    else:
        files, args = {"hand.csv": hand_csv(rng, raw, case.mutations)}, ["hand.csv"]
    case.files.update(files)
    case.args += args
    if rng.random() < 0.3:
        case.args.append("--json")


def generate(seed, count, soffice=True, first=0, step_cap=STEP_CAP):
    return [make_case(seed, n, soffice, step_cap) for n in range(first, first + count)]


# ============================================================ running

@dataclass
class Result:
    case: Case
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    stray: list
    lost: list
    bad_outputs: list = field(default_factory=list)
    cpu: float = 0.0               # CPU seconds of the case's process (not of LibreOffice)
    label: str = ""
    flags: list = field(default_factory=list)
    signature: str = ""


def materialize(case, root):
    """Lay out the case below `root`; return (cwd, tmpdir, args with @ROOT@ filled)."""
    cwd, tmp = root / CWD, root / "tmp"
    for folder in (cwd, tmp):
        folder.mkdir(parents=True)
    text_root = str(root)
    for name, payload in case.files.items():
        path = cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload.replace(b"@ROOT@", text_root.encode()))
    args = [a.replace("@ROOT@", text_root) for a in case.args]
    return cwd, tmp, args


def _limits(file_limit, cpu_limit=None):
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    if cpu_limit is not None:  # SIGXCPU after this many CPU seconds (robust to a busy machine)
        resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(cpu_limit), math.ceil(cpu_limit) + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if file_limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))


class ForkChild:
    """A forked copy of this (pre-imported) process that runs the click entry point."""

    def __init__(self, args, cwd, tmp, file_limit, cpu_limit=None):
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 70
            try:
                os.setpgrp()
                os.close(out_read)
                os.close(err_read)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(out_write, 1)
                os.dup2(err_write, 2)
                code = _child_main(args, cwd, tmp, file_limit, cpu_limit)
            finally:
                os._exit(code)
        os.close(out_write)
        os.close(err_write)
        self.pid, self.pipes = pid, (out_read, err_read)

    def close(self):
        for fd in self.pipes:
            os.close(fd)

    cpu = 0.0

    def poll(self):
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.cpu = usage.ru_utime + usage.ru_stime
        return os.waitstatus_to_exitcode(status)

    def kill(self):
        _killpg(self.pid)
        os.waitpid(self.pid, 0)


# atexit handlers registered when tracer's modules are imported (a fresh `python -m tracer` has them):
# openpyxl deletes the temporary files of write-only worksheets at exit. (`python -c "import atexit,
# tracer.cli; print(atexit._ncallbacks())"` counts them: this one only.)
_IMPORT_TIME_EXIT_HANDLERS = [("openpyxl.worksheet._writer", "_openpyxl_shutdown")]


def _child_main(args, cwd, tmp, file_limit, cpu_limit=None):
    """What `python -m tracer ARGS` does, in a forked child; returns the exit code."""
    import atexit
    import traceback
    import weakref
    atexit._clear()                                   # the parent's handlers are not ours (pytest's)...
    for module_name, function in _IMPORT_TIME_EXIT_HANDLERS:  # ...except those tracer's imports register
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, function):
            atexit.register(getattr(module, function))
    weakref.finalize._registry.clear()                # nor are its pending finalizers
    weakref.finalize._registered_with_atexit = False  # ours (TemporaryDirectory) run at exit
    os.chdir(cwd)
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None
    _limits(file_limit, cpu_limit)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.argv = ["tracer", *args]
    sys.stdin = open(0, closefd=False)
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8", line_buffering=False)
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    code = 0
    try:
        from tracer.cli import main
        main(args, prog_name="python -m tracer")
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    return code


class ExecChild:
    """`python -m tracer ARGS` as a subprocess (the reference)."""

    def __init__(self, args, cwd, tmp, file_limit, cpu_limit=None):
        env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(REPO))
        self.process = subprocess.Popen([sys.executable, "-m", "tracer", *args], cwd=cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True, preexec_fn=lambda: _limits(file_limit, cpu_limit))
        self.pid = self.process.pid
        self.pipes = (self.process.stdout.fileno(), self.process.stderr.fileno())

    cpu = 0.0

    def poll(self):
        if self.process.returncode is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid == 0:
                return None
            self.cpu = usage.ru_utime + usage.ru_stime
            self.process.returncode = os.waitstatus_to_exitcode(status)
        return self.process.returncode

    def close(self):
        self.process.stdout.close()
        self.process.stderr.close()

    def kill(self):
        _killpg(self.pid)
        self.process.wait()


def _killpg(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
            for p in root.rglob("*") if not p.is_symlink()}


class Slot:
    """A case in flight: its folder, its child process and its deadline."""

    def __init__(self, case, base, mode, timeout, cpu_limit=None):
        self.case, self.timeout, self.cpu_limit = case, timeout, cpu_limit
        self.root = Path(tempfile.mkdtemp(prefix=f"case{case.number}-", dir=base))
        self.cwd, self.tmp, args = materialize(case, self.root)
        self.before = {k: v for k, v in _snapshot(self.root).items() if k != "tmp" and not k.startswith("tmp/")}
        self.start = time.monotonic()
        child_type = ForkChild if mode == "fork" else ExecChild
        self.child = child_type(args, self.cwd, self.tmp, case.file_limit, cpu_limit)
        self.output = ([], [])
        for fd in self.child.pipes:
            os.set_blocking(fd, False)

    def drain(self):
        """Read what the child wrote to stdout and stderr so far (pipes: no file size limit applies)."""
        for fd, chunks in zip(self.child.pipes, self.output):
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)

    def finished(self):
        """The Result when the child is done (or killed after the timeout), else None."""
        self.drain()
        code = self.child.poll()
        timed_out = False
        if code is None:
            if time.monotonic() - self.start < self.timeout:
                return None
            self.child.kill()
            code, timed_out = None, True
        elif self.cpu_limit is not None and code == -signal.SIGXCPU:
            code, timed_out = None, True
        seconds = time.monotonic() - self.start
        _killpg(self.child.pid)  # anything the command left running (LibreOffice)
        self.drain()
        self.child.close()
        stdout, stderr = (b"".join(chunks).decode("utf-8", "replace") for chunks in self.output)
        stray, lost = self.files_after(code)
        bad = self.bad_outputs() if code == 0 else []
        result = Result(self.case, code, stdout, stderr, seconds, timed_out, stray, lost, bad)
        result.cpu = self.child.cpu
        classify(result)
        shutil.rmtree(self.root, ignore_errors=True)
        return result

    def bad_outputs(self):
        """Requested outputs that a spreadsheet or a CSV reader cannot read as written."""
        import xml.etree.ElementTree as ElementTree
        import zipfile
        bad = []
        for output, kind in ((self.case.workbook, "xlsx"), (self.case.trace, "csv")):
            path = self.cwd / output if output else None
            if path is None or not path.is_file():
                continue
            if kind == "xlsx":
                try:
                    with zipfile.ZipFile(path) as archive:
                        for name in archive.namelist():
                            if name.endswith((".xml", ".rels")):
                                try:
                                    ElementTree.fromstring(archive.read(name))
                                except ElementTree.ParseError as exc:
                                    bad.append(f"{output}: {name}: {exc}")
                except zipfile.BadZipFile as exc:
                    bad.append(f"{output}: {exc}")
            elif output != self.case.workbook:
                head = path.read_bytes()[:64]
                if not head.startswith(b"step,sample,quantity,layer,row,col,value"):
                    bad.append(f"{output}: no CSV header ({head[:30]!r})")
        return bad

    def files_after(self, code):
        case = self.case
        after = {k: v for k, v in _snapshot(self.root).items() if k != "tmp" and not k.startswith("tmp/")}
        cwd = CWD.as_posix()
        allowed = set(self.before)
        if code == 0:
            allowed |= {f"{cwd}/{o}" for o in case.outputs}
            for output in case.outputs:  # the folders of a requested output
                parent = Path(cwd, output).parent
                while parent.as_posix() not in (".", cwd):
                    allowed.add(parent.as_posix())
                    parent = parent.parent
        stray = []
        for name, payload in after.items():
            if name.endswith(".part"):
                stray.append(name)
            elif name not in allowed:
                default_ok = (code == 0 and case.default_output and name.startswith(cwd + "/")
                              and "/" not in name[len(cwd) + 1:] and name.endswith(".xlsx"))
                if not default_ok:
                    stray.append(name + ("/" if payload is None else ""))
        stray += [f"TMPDIR/{p.relative_to(self.tmp).as_posix()}" for p in self.tmp.rglob("*")]
        lost = []
        for output in case.preexisting:
            name = f"{cwd}/{output}"
            may_replace = code == 0 and case.force
            if not may_replace and after.get(name) != self.before.get(name):
                lost.append(output)
        return sorted(stray), lost


# ------------------------------------------------------------ classification

_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Warning|Interrupt|Exit))\b:?\s?(.*)$")
_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


MAX_MESSAGE = 500   # characters of a refusal line (the offending value should be shortened)


def _one_error_line(stderr):
    """Exactly one line (no \\n, \\r, U+2028 or other line break inside) that starts with "Error:"."""
    text = stderr[:-1] if stderr.endswith("\n") else stderr
    return text.startswith("Error:") and len(text.splitlines()) == 1


def allowed_exit1(command, stderr):
    """Exit 1 means "your numbers are wrong" only for check (report on stdout) and gradcheck."""
    if command == "check":
        return stderr.strip() == ""
    if command == "gradcheck":
        return _one_error_line(stderr) and stderr.startswith(("Error: gradient check failed", "Error: no gradient could be checked"))
    return False


def classify(result):
    """Set result.label (the first failure class that applies), result.flags and result.signature."""
    case, code, out, err = result.case, result.code, result.stdout, result.stderr
    flags = []
    if result.timed_out:
        flags.append("HANG")
    if "Traceback" in out or "Traceback" in err or (code is not None and code not in (0, 1, 2)):
        flags.append("TRACEBACK")
    if result.lost:
        flags.append("LOST FILE")
    if result.stray:
        flags.append("STRAY FILES")
    if result.bad_outputs:
        flags.append("BAD OUTPUT")
    if code == 1 and not allowed_exit1(case.command, err) and "TRACEBACK" not in flags:
        flags.append("EXIT 1")
    if code == 2 and not _one_error_line(err):
        flags.append("MULTI-LINE")
    elif code == 2 and len(err) > MAX_MESSAGE:
        flags.append("LONG LINE")
    if "RuntimeWarning" in err:
        flags.append("WARNING")
    result.flags = flags
    if flags:
        result.label = flags[0]
    else:
        result.label = {0: "ok", 1: "wrong answer", 2: "refusal"}[code]
    result.signature = signature(result)


def _blank(text, limit=90):
    text = re.sub(r"0x[0-9a-f]+", "0x?", text)
    text = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "N", text)
    text = re.sub(r"'[^']{20,}'", "'…'", text)
    return text[:limit]


def signature(result):
    """A short name for the mechanism behind a failure (cases with the same one are one finding)."""
    label, err, out = result.label, result.stderr, result.stdout
    if label == "HANG":
        return f"HANG in {result.case.command}"
    if label == "TRACEBACK":
        text = err if "Traceback" in err else out
        if "Traceback" not in text:
            return f"killed by signal {-result.code}" if result.code and result.code < 0 else f"exit code {result.code}"
        tail = text[text.rindex("Traceback"):]
        lines = [l for l in tail.splitlines() if l.strip()]
        exception = next((m.group(1) for l in reversed(lines) if (m := _ERROR_LINE.match(l))), lines[-1][:60])
        frames = _FRAME.findall(tail)
        ours = [f for f in frames if "/tracer/" in f[0]]
        file, func = (ours or frames or [("?", "?")])[-1]
        where = f"{Path(file).parent.name}/{Path(file).name}:{func}" if "/tracer/" in file else f"{func}"
        deepest = frames[-1] if frames else ("?", "?")
        via = f" (raised in {Path(deepest[0]).name}:{deepest[1]})" if frames and deepest != (file, func) else ""
        return f"{exception} at {where}{via}"
    if label == "LOST FILE":
        return f"existing output changed by a {'failed' if result.code else 'successful'} run ({'--force' if result.case.force else 'no --force'})"
    if label == "STRAY FILES":
        kinds = sorted({_stray_kind(s) for s in result.stray})
        return "stray: " + ", ".join(kinds) + f" (exit {result.code})"
    if label == "BAD OUTPUT":
        return "bad output: " + _blank(re.sub(r"^[^:]*: ", "", result.bad_outputs[0]), 80)
    if label == "EXIT 1":
        return "exit 1: " + _blank(err.strip().splitlines()[0] if err.strip() else "(empty stderr)")
    if label == "MULTI-LINE":
        first = err.strip().splitlines()[0] if err.strip() else "(empty stderr)"
        if first.startswith("Usage:"):
            last = [l for l in err.splitlines() if l.startswith("Error:")]
            option = re.search(r"'(-[-\w]+)'", last[0]) if last else None
            return "click usage error (Usage:/Try/Error: lines): " + (f"option {option.group(1)}" if option else _blank(last[0] if last else first, 60))
        return "multi-line: " + _blank(first)
    if label == "LONG LINE":
        return "refusal line over 500 characters: " + _blank(err, 70)
    if label == "WARNING":
        line = next(l for l in err.splitlines() if "RuntimeWarning" in l)
        return "RuntimeWarning: " + _blank(re.sub(r"^.*/", "", line), 100)
    if label == "wrong answer" and result.case.command == "gradcheck":
        return "gradcheck: " + _blank(err.strip(), 70)
    return label


def _stray_kind(name):
    if name.startswith("TMPDIR/"):
        return "temp file " + re.sub(r"[A-Za-z0-9_]{6,}", "*", name[7:])[:40]
    if name.endswith(".part"):
        return "*.part"
    if not name.startswith(CWD.as_posix() + "/"):
        return "written outside the working folder"
    rest = name[len(CWD.as_posix()) + 1:]
    if rest.endswith("/"):
        return "folder left behind"
    return "output after failure: " + re.sub(r"[oc]{50,}", "<long>", rest)[:40]


# ------------------------------------------------------------ the campaign

def run_cases(cases, jobs=2, mode="fork", timeout=TIMEOUT, progress=None, cpu_limit=None):
    """Run every case (at most `jobs` at a time); return the Results in case order.

    A case is a HANG when it runs `timeout` seconds (wall clock) or, with `cpu_limit`, uses that
    many CPU seconds (the test suite's budget, independent of how busy the machine is)."""
    if mode == "fork" and str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if mode == "fork":
        import tracer.cli  # noqa: F401  (imported once; every child is a copy)
    base = Path(tempfile.mkdtemp(prefix="tracer-fuzz-"))
    pending, running, results = list(cases), [], {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                running.append(Slot(pending.pop(0), base, mode, timeout, cpu_limit))
            time.sleep(0.005)
            for slot in list(running):
                result = slot.finished()
                if result is not None:
                    running.remove(slot)
                    results[slot.case.number] = result
                    if progress:
                        progress(result, len(results))
    finally:
        for slot in running:
            slot.child.kill()
            slot.child.close()
        shutil.rmtree(base, ignore_errors=True)
    return [results[c.number] for c in cases]


def report(results, out=sys.stdout):
    """Counts per class and per command, then the failing mechanisms."""
    total = len(results)
    counts = collections.Counter(r.label for r in results)
    print(f"\n{total} cases", file=out)
    print("per class:", file=out)
    for label in CLASSES:
        print(f"  {label:14} {counts.get(label, 0):6}", file=out)
    print(f"  {'failures':14} {sum(counts.get(l, 0) for l in FAILURES):6}", file=out)
    print("\nper command:", file=out)
    shown = [l for l in CLASSES if counts.get(l)]
    print("  " + f"{'command':10}" + "".join(f"{l[:11]:>12}" for l in shown), file=out)
    for command in COMMANDS:
        row = collections.Counter(r.label for r in results if r.case.command == command)
        print("  " + f"{command:10}" + "".join(f"{row.get(l, 0):12}" for l in shown), file=out)
    flagged = collections.Counter(f for r in results for f in r.flags)
    if flagged:
        print("\ncases with each flag (a case may have several): "
              + ", ".join(f"{k} {v}" for k, v in flagged.most_common()), file=out)
    groups = collections.defaultdict(list)
    for r in results:
        if r.label in FAILURES:
            groups[(r.label, r.signature)].append(r)
    if groups:
        print("\nfailing mechanisms (class, count, signature, example cases):", file=out)
        for (label, sig), members in sorted(groups.items(), key=lambda kv: (CLASSES.index(kv[0][0]), -len(kv[1]))):
            commands = collections.Counter(m.case.command for m in members)
            examples = ", ".join(str(m.case.number) for m in sorted(members, key=lambda m: len(m.case.mutations))[:4])
            print(f"  {label:12} {len(members):5}  {sig}", file=out)
            print(f"  {'':12} {'':5}  commands {dict(commands)}; cases {examples}", file=out)


def report_leads(results, out=sys.stdout):
    """gradcheck's exit 1 is an allowed answer, but on a scenario that loaded it means backprop and
    finite differences disagree: a lead to a silently wrong gradient (or a kink), listed apart."""
    leads = [r for r in results if r.label == "wrong answer" and r.case.command == "gradcheck"]
    if not leads:
        return
    print(f"\ngradcheck disagreements (allowed exit 1; leads, not counted as failures): {len(leads)}", file=out)
    for r in leads[:12]:
        found = re.search(r"largest relative error (\S+) \((\S+)", r.stdout)
        print(f"  case {r.case.number:5} [{r.case.template}] {found.group(1) + ' at ' + found.group(2) if found else r.stderr.strip()[:60]}"
              f"; {'; '.join(m[:60] for m in r.case.mutations)}", file=out)


def save_failures(results, folder):
    """Each failing case as FOLDER/<class>/<number>/ with its inputs, command.sh and result.txt."""
    folder = Path(folder)
    for r in results:
        if r.label not in FAILURES:
            continue
        target = folder / r.label.lower().replace(" ", "-") / f"{r.case.number:05d}"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name, payload in r.case.files.items():
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload)
        (target / "command.sh").write_text(
            "#!/bin/sh\n# @ROOT@ in arguments and files stands for a case's root (its cwd is @ROOT@/w1/w2/work)\n"
            f'cd "$(dirname "$0")" && {r.case.shell()}\n', encoding="utf-8")
        (target / "result.txt").write_text(describe(r), encoding="utf-8")
    summary = folder / "summary.txt"
    folder.mkdir(parents=True, exist_ok=True)
    with open(summary, "w", encoding="utf-8") as handle:
        report(results, out=handle)
        report_leads(results, out=handle)


def describe(r):
    case = r.case
    return (f"case {case.number} ({case.template}, {case.command}): {r.label}; flags {r.flags}\n"
            f"signature: {r.signature}\ncommand: {case.shell()}\n"
            f"mutations:\n" + "".join(f"  - {m}\n" for m in case.mutations)
            + f"exit code: {r.code}{' (killed after the timeout)' if r.timed_out else ''}; {r.seconds:.1f} s\n"
            + (f"stray files: {r.stray}\n" if r.stray else "")
            + (f"bad outputs: {r.bad_outputs}\n" if r.bad_outputs else "") + (f"changed outputs: {r.lost}\n" if r.lost else "")
            + f"--- stderr (last 3000 characters)\n{r.stderr[-3000:]}\n--- stdout (last 1500)\n{r.stdout[-1500:]}\n")


def as_json(r):
    return {"case": r.case.number, "command": r.case.command, "template": r.case.template, "class": r.label,
            "flags": r.flags, "signature": r.signature, "exit": r.code, "seconds": round(r.seconds, 3), "cpu": round(r.cpu, 3),
            "mutations": r.case.mutations, "args": r.case.args, "stray": r.stray, "lost": r.lost, "bad": r.bad_outputs,
            "stderr": r.stderr[-600:]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--first", type=int, default=0, help="number of the first case (default 0)")
    parser.add_argument("--case", type=int, action="append", help="run only this case number (repeatable)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--mode", choices=("fork", "exec"), default="fork")
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    parser.add_argument("--failures", default="fuzz-failures", help="folder for the failing cases")
    parser.add_argument("--results", help="write one JSON line per case here")
    parser.add_argument("--no-soffice", action="store_true", help="leave out the cases that start LibreOffice")
    parser.add_argument("--command", choices=COMMANDS, action="append", help="only cases of this command")
    parser.add_argument("--show", action="store_true", help="print the cases (files and command) and exit")
    parser.add_argument("--compare", type=int, metavar="N",
                        help="run the first N cases in fork and exec mode and print the differences")
    options = parser.parse_args(argv)
    soffice = not options.no_soffice
    if options.case:
        cases = [make_case(options.seed, n, soffice) for n in options.case]
    else:
        cases = generate(options.seed, options.cases, soffice, options.first)
    if options.command:
        cases = [c for c in cases if c.command in options.command]
    if options.show:
        for case in cases:
            print(f"== case {case.number} ({case.template}): {case.shell()}")
            for m in case.mutations:
                print(f"   - {m}")
            for name, payload in case.files.items():
                text = payload.decode("utf-8", "backslashreplace")
                print(f"--- {name} ({len(payload)} bytes)\n{text[:3000]}")
        return 0
    if options.compare:
        return compare(cases[: options.compare], options.jobs, options.timeout)
    started = time.monotonic()
    print(f"fuzz: seed {options.seed}, {len(cases)} cases, {options.jobs} jobs, mode {options.mode}, "
          f"timeout {options.timeout:g} s", file=sys.stderr)

    def progress(result, done):
        if result.label in FAILURES:
            print(f"  case {result.case.number:5} {result.case.command:9} {result.label}: {result.signature[:110]}",
                  file=sys.stderr)
        if done % 100 == 0:
            print(f"  ... {done}/{len(cases)} cases, {time.monotonic() - started:.0f} s", file=sys.stderr)

    results = run_cases(cases, options.jobs, options.mode, options.timeout, progress)
    elapsed = time.monotonic() - started
    report(results)
    report_leads(results)
    print(f"\n{len(results)} cases in {elapsed:.0f} s ({options.jobs} jobs, {options.mode} mode); "
          f"CPU of the cases {sum(r.cpu for r in results):.0f} s")
    save_failures(results, options.failures)
    print(f"failing cases written to {options.failures}/")
    if options.results:
        with open(options.results, "w", encoding="utf-8") as handle:
            for r in results:
                handle.write(json.dumps(as_json(r), ensure_ascii=False) + "\n")
    return 1 if any(r.label in FAILURES for r in results) else 0


def compare(cases, jobs, timeout):
    """Run the cases in both modes; print every case whose class or flags differ."""
    timings, outcome = {}, {}
    for mode in ("fork", "exec"):
        start = time.monotonic()
        outcome[mode] = run_cases(cases, jobs, mode, timeout)
        timings[mode] = time.monotonic() - start
    differ = 0
    for a, b in zip(outcome["fork"], outcome["exec"]):
        same = (a.label, a.flags, a.code, a.signature) == (b.label, b.flags, b.code, b.signature)
        if not same:
            differ += 1
            print(f"case {a.case.number} {a.case.command}: fork {a.label} {a.flags} exit {a.code} {a.signature!r}"
                  f" | exec {b.label} {b.flags} exit {b.code} {b.signature!r}")
    print(f"{len(cases)} cases: {differ} differ; fork {timings['fork']:.0f} s, exec {timings['exec']:.0f} s "
          f"({jobs} jobs)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
