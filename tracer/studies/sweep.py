"""`tracer sweep`: the same scenario, many ways — a Monte Carlo over initialisation seeds, the
articles' remedies applied one at a time, or a grid of `--set` values.

Each variant is the scenario with a list of `--set KEY=VALUE` changes. Its outcome is
diagnose.outcome (converged, falling, plateaued, vanishing, exploding, non-finite at step k);
variants are ranked best outcome first, then by final loss. Runs go to a pool of worker
processes (2 by default: both cores); results are written as they arrive (the CSV is replaced
atomically after every run), so an interrupted sweep keeps what finished.
"""
from dataclasses import dataclass, field
import csv
import itertools
import json
import math
import multiprocessing
from pathlib import Path
import signal

import numpy as np

from tracer.explain import diagnose
from tracer.training import engine, scenario as scenario_module
from tracer import layers as layer_kinds, output
from tracer.errors import InputError, OutputError, TracerError, shorten

RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu", "silu")
CSV_COLUMNS = ("variant", "label", "changes", "outcome", "outcome_step", "initial_loss", "final_loss", "note")


@dataclass
class Variant:
    label: str
    changes: tuple = ()            # --set KEY=VALUE strings
    note: str = ""                 # why a remedy does not apply (then it is not run)


@dataclass
class Result:
    index: int
    label: str
    changes: tuple
    outcome: str                   # diagnose.OUTCOMES, or "not applicable" / "invalid"
    outcome_step: int | None
    initial_loss: float
    final_loss: float
    losses: list = field(default_factory=list)
    note: str = ""

    @property
    def rank_key(self):
        order = {name: k for k, name in enumerate(diagnose.OUTCOMES)}
        loss = self.final_loss if math.isfinite(self.final_loss) else math.inf
        step = -(self.outcome_step or 0) if self.outcome == "non-finite" else 0   # later failure ranks higher
        return order.get(self.outcome, len(order)), step, loss, self.index


# ---------------------------------------------------------------- variants

def toml_value(value):
    """A Python value as an inline TOML value (for --set)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(v)}" for key, v in value.items()) + "}"
    raise InputError(f"cannot write {shorten(value, 60)} as a --set value")


def split_values(text):
    """'a=1,2,[3,4]' -> ('a', ['1', '2', '[3,4]']): commas inside brackets, braces or quotes stay."""
    if "=" not in text:
        raise InputError(f"--set {shorten(text, 60)}: must look like KEY.PATH=VALUE[,VALUE...]")
    key, values = (part.strip() for part in text.split("=", 1))
    parts, depth, quote, current = [], 0, None, ""
    for char in values:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    if not key or any(not p for p in parts):
        raise InputError(f"--set {shorten(text, 60)}: empty key or value")
    return key, parts


def grid_axes(items):
    """One axis per --set item: a list of Variants, one per value."""
    axes = []
    for item in items:
        key, values = split_values(item)
        axes.append([Variant(f"{key}={value}", (f"{key}={value}",)) for value in values])
    return axes


def seed_axis(count, first=0):
    return [Variant(f"seed={seed}", (f"seed={seed}",)) for seed in range(first, first + count)]


def combine(axes):
    """The product of the axes: labels joined with '; ', changes concatenated."""
    if not axes:
        return [Variant("as given")]
    variants = []
    for combo in itertools.product(*axes):
        variants.append(Variant("; ".join(v.label for v in combo), tuple(c for v in combo for c in v.changes),
                                "; ".join(v.note for v in combo if v.note)))
    return variants


def remedies(scenario):
    """The articles' remedies, one at a time, each as exact --set changes (seeds/000, 001, 002):
    gradient clipping by norm, a lower learning rate (÷10, ÷100), Xavier/He initialisation matched
    to each layer's activation, input normalisation, batch normalisation (Linear → BN → f), Leaky
    ReLU, residual connections. A remedy that cannot apply carries a note and is not run."""
    raw, s = scenario.raw, scenario
    layers_raw = raw["layers"]
    hidden = range(len(layers_raw) - 1)
    out = [Variant("as given (no remedy)")]
    clip = s.clip_norm / 10 if s.clip_norm is not None else 1.0
    out.append(Variant("gradient clipping by norm", (f"training.clip_norm={clip!r}",)))
    lr = s.optimizer_params["lr"]
    out.append(Variant("learning rate ÷ 10", (f"optimizer.lr={lr / 10!r}",)))
    matched = matched_learning_rate(scenario)
    if matched is not None and matched < lr / 10:
        out.append(Variant("learning rate for |Δθ|/|θ| ≈ 1e-3 at step 0", (f"optimizer.lr={matched:.3g}",)))
    changes = []
    for index, (layer_raw, layer) in enumerate(zip(layers_raw, s.layers)):
        if not layer_kinds.of(layer).weighted or layer.init == "explicit":
            continue
        init = "he_normal" if layer.activation in RELU_FAMILY else "xavier_uniform"
        table = {key: value for key, value in layer_raw.items()
                 if key not in ("init", "low", "high", "mean", "std", "value", "bias_init", "bias_low",
                                "bias_high", "bias_mean", "bias_std", "bias_value", "bias")}
        table.update(init=init, bias_init="constant")
        changes.append(f"layers.{index}={toml_value(table)}")
    out.append(Variant("Xavier/He initialisation matched to the activation", tuple(changes),
                       "" if changes else "every layer has explicit weights"))
    out.append(Variant("input normalisation (standard)", ("data.normalize=\"standard\"",),
                       "" if s.normalize == "none" else f"inputs are already normalised ({s.normalize})"))
    # the registered normalisation that trains on the smallest batches (layernorm: any batch)
    norm = min((kind for kind in layer_kinds.LAYERS.values() if kind.normalises), key=lambda kind: kind.min_batch)
    norm_kind = norm.name
    rebuilt, inserted = [], 0
    for index, (layer_raw, layer) in enumerate(zip(layers_raw, s.layers)):
        kind = layer_kinds.of(layer)
        if index in hidden and kind.weighted and not kind.skips(layer):
            linear = {key: value for key, value in layer_raw.items()
                      if key not in ("activation", "slope", "alpha", "bias", "bias_init", "bias_low", "bias_high",
                                     "bias_mean", "bias_std", "bias_value", "train_bias")}
            linear.update(activation="identity", train_bias=False)
            normal = {"kind": norm_kind, "activation": layer.activation, **{k: v for k, v in layer_raw.items()
                                                                            if k in ("slope", "alpha")}}
            rebuilt += [linear, normal]
            inserted += 1
        else:
            rebuilt.append(layer_raw)
    batch_note = ("" if s.batch_size >= norm.min_batch else f"{norm_kind} needs batches of {norm.min_batch} or more samples")
    out.append(Variant(f"{norm_kind} before each hidden activation (Linear → {norm_kind} → f)",
                       (f"layers={toml_value(rebuilt)}",) if inserted else (),
                       batch_note or ("" if inserted else "no hidden dense layer")))
    leaky = [f"layers.{i}.activation=\"leaky_relu\"" for i in hidden
             if s.layers[i].activation != "leaky_relu" and not s.layers[i].activation_params and layer_kinds.of(s.layers[i]).weighted]
    out.append(Variant("Leaky ReLU in the hidden layers", tuple(leaky),
                       "" if leaky else "the hidden layers already use Leaky ReLU (or an activation with parameters)"))
    widths = s.widths
    residual = [f"layers.{i}.residual=true" for i in hidden
                if "residual" in layer_kinds.of(s.layers[i]).keys and not layer_kinds.of(s.layers[i]).skips(s.layers[i])
                and widths[i] == widths[i + 1]]
    out.append(Variant("residual connections", tuple(residual),
                       "" if residual else "no hidden layer has as many units as the layer below it"))
    return out


def matched_learning_rate(scenario, target=1e-3):
    """The plain-SGD learning rate whose first update moves every layer by at most `target` of its
    weights: lr · target / max_l (‖Δθ⁽ˡ⁾‖/‖θ⁽ˡ⁾‖) at step 0 (Δθ = lr·g is proportional to lr).
    None for other optimisers or a step 0 that is not finite."""
    if scenario.optimizer != "sgd":
        return None
    import copy
    first = copy.copy(scenario)
    first.steps = 1
    trace = engine.run(first)
    ratios = diagnose.stall_series(trace).update[0]
    if not np.isfinite(ratios).all() or ratios.max() <= 0:
        return None
    return float(scenario.optimizer_params["lr"] * target / ratios.max())


# ---------------------------------------------------------------- running

@dataclass
class Job:
    index: int
    reference: str
    overrides: tuple
    steps: int | None
    variant: Variant
    workbook: str | None = None
    force: bool = False


def run_one(job):
    """Train one variant; never raises for a bad variant (its outcome is then 'invalid')."""
    variant = job.variant
    base = Result(job.index, variant.label, variant.changes, "not applicable", None, math.nan, math.nan, [], variant.note)
    if variant.note:
        return base
    try:
        loaded = scenario_module.load(job.reference, overrides=tuple(job.overrides) + tuple(variant.changes), steps=job.steps)
        from tracer.workbook import writer
        trace = engine.run(loaded, sums=writer.sum_order(loaded))   # the order of its workbook's layout
        outcome, step = diagnose.outcome(trace)
        if job.workbook:
            writer.write(trace, job.workbook, force=job.force)
    except TracerError as exc:
        base.outcome, base.note = "invalid", str(exc)
        return base
    losses = [float(v) for v in trace.loss]
    return Result(job.index, variant.label, variant.changes, outcome, step, losses[0], losses[-1], losses)


def _quiet_worker():
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides what an interrupt means


def run_jobs(jobs, workers=2, on_result=None):
    """Run the jobs (in `workers` processes when more than one) and return the results by index.
    `on_result(result, done, total)` is called as each finishes. On KeyboardInterrupt the pool
    stops and the results so far are returned, with `interrupted` set on the list."""
    results = ResultList()
    total = len(jobs)
    try:
        if workers <= 1 or total <= 1:
            for job in jobs:
                results.append(run_one(job))
                if on_result:
                    on_result(results[-1], len(results), total)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, total), initializer=_quiet_worker) as pool:
                for result in pool.imap_unordered(run_one, jobs):
                    results.append(result)
                    if on_result:
                        on_result(result, len(results), total)
    except KeyboardInterrupt:
        results.interrupted = True
    results.sort(key=lambda r: r.index)
    return results


class ResultList(list):
    interrupted = False


# ---------------------------------------------------------------- outputs

def check_outputs(summary, csv_path, workbooks, variants, force):
    """Check every output before anything runs, as `tracer run` does (output.check_targets: not
    two options for one file, no existing file without `force`, folders that exist, names that
    fit); return {variant index: its workbook path} in the folder `workbooks` (or {}). A missing
    `workbooks` folder is created (its parent must exist) after every check has passed."""
    targets = {"-o": summary, "--csv": csv_path}
    paths = {}
    if workbooks:
        folder = Path(workbooks)
        paths = {k: str(folder / output.safe_file_name(f"{k:03d}-{v.label}", ".xlsx")) for k, v in enumerate(variants)}
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--workbooks {workbooks}: not a folder")
        if folder.is_dir():
            targets.update((f"--workbooks {Path(path).name}", path) for path in paths.values())
        else:
            parent = folder.parent if str(folder.parent) else Path(".")
            if not parent.is_dir():
                raise OutputError(f"--workbooks {workbooks}: folder {parent} does not exist")
    output.check_targets(targets, force=force)
    if workbooks and not Path(workbooks).is_dir():
        try:
            Path(workbooks).mkdir()
        except OSError as exc:
            raise output.cannot_write(workbooks, exc) from None
    return paths


def _number(value):
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else repr(float(value))


def write_csv(results, path):
    """Tidy CSV, one row per variant (columns CSV_COLUMNS); non-finite losses are empty."""
    def write(temporary):
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for r in sorted(results, key=lambda r: r.index):
                writer.writerow([r.index, r.label, "; ".join(r.changes), r.outcome,
                                 "" if r.outcome_step is None else r.outcome_step,
                                 _number(r.initial_loss), _number(r.final_loss), r.note])
    with output.atomic_path(path) as temporary:
        write(temporary)


def ranked(results):
    return sorted(results, key=lambda r: r.rank_key)


def outcome_text(result):
    if result.outcome == "non-finite":
        return f"non-finite at step {result.outcome_step}"
    return result.outcome


def render(results, interrupted=False):
    """The table for the terminal, best outcome first."""
    lines = [f"{'rank':>4}  {'outcome':<24} {'E first':>11} {'E last':>11}  variant (changes)"]
    for rank, r in enumerate(ranked(results), start=1):
        changes = " ".join(f"--set '{c}'" for c in r.changes)
        detail = f" [{r.note}]" if r.note else ""
        lines.append(f"{rank:>4}  {outcome_text(r):<24} {r.initial_loss:>11.4g} {r.final_loss:>11.4g}  {r.label}"
                     + (f" ({changes})" if changes else "") + detail)
    counts = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    lines.append("outcomes: " + ", ".join(f"{name} {counts[name]}" for name in diagnose.OUTCOMES + ("not applicable", "invalid")
                                          if name in counts))
    if interrupted:
        lines.append("interrupted: the table and the outputs hold the runs that finished")
    return "\n".join(lines)


def loss_bins(results):
    """Decade bins of the final losses: exponents [A, B) covering every finite positive final loss."""
    finals = [r.final_loss for r in results if math.isfinite(r.final_loss) and r.final_loss > 0]
    if not finals:
        return []
    low, high = math.floor(math.log10(min(finals))), math.floor(math.log10(max(finals))) + 1
    return list(range(low, high + 1))


def write_summary(results, path, scenario_name, interrupted=False):
    """The summary workbook: Variants (one row per variant, ranked), Losses (every variant's loss per
    step, with one chart, log scale where the losses span decades), Outcomes (counts of outcomes and
    of final losses per decade as COUNTIF formulas over the Variants sheet, with charts)."""
    from openpyxl import Workbook
    from openpyxl.chart import BarChart, LineChart, Reference
    from openpyxl.styles import Font

    book = Workbook()
    sheet = book.active
    sheet.title = "Variants"
    headers = ["rank", "variant", "label", "changes (--set)", "outcome", "at step", "E first", "E last", "note"]
    sheet.append(headers)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    order = ranked(results)
    for rank, r in enumerate(order, start=1):
        sheet.append([rank, r.index, r.label, "; ".join(r.changes), r.outcome, r.outcome_step,
                      r.initial_loss if math.isfinite(r.initial_loss) else None,
                      r.final_loss if math.isfinite(r.final_loss) else None, r.note])
    for letter, width in zip("ABCDEFGHI", (6, 8, 40, 60, 14, 8, 12, 12, 40)):
        sheet.column_dimensions[letter].width = width
    if interrupted:
        sheet.append([])
        sheet.append(["interrupted: only the variants that finished are listed"])
    count = len(order)

    losses = book.create_sheet("Losses")
    ran = [r for r in order if r.losses]
    steps = max((len(r.losses) for r in ran), default=0)
    losses.append(["step"] + [f"{r.index}: {r.label}"[:60] for r in ran])
    for step in range(steps):
        losses.append([step] + [(r.losses[step] if step < len(r.losses) and math.isfinite(r.losses[step]) else None)
                                for r in ran])
    if ran and steps:
        chart = LineChart()
        chart.title, chart.y_axis.title, chart.x_axis.title = f"Loss per step: {scenario_name}", "E", "step"
        chart.height, chart.width = 12, 24
        chart.add_data(Reference(losses, min_col=2, max_col=1 + len(ran), min_row=1, max_row=steps + 1), titles_from_data=True)
        chart.set_categories(Reference(losses, min_col=1, min_row=2, max_row=steps + 1))
        values = np.array([v for r in ran for v in r.losses if math.isfinite(v) and v > 0])
        if values.size > 1 and values.max() / values.min() > 100:
            chart.y_axis.scaling.logBase = 10
        chart.x_axis.delete = chart.y_axis.delete = False
        losses.add_chart(chart, f"{_column(len(ran) + 3)}2")

    summary = book.create_sheet("Outcomes")
    summary.append(["outcome", "runs"])
    names = list(diagnose.OUTCOMES) + ["not applicable", "invalid"]
    for row, name in enumerate(names, start=2):
        summary.append([name, f'=COUNTIF(Variants!$E$2:$E${count + 1},A{row})'])
    bins = loss_bins(results)
    first_bin = len(names) + 4
    summary.cell(row=first_bin - 1, column=1, value="final loss in [10^A, 10^B)")
    summary.cell(row=first_bin - 1, column=2, value="runs")
    for k, (a, b) in enumerate(zip(bins, bins[1:])):
        summary.cell(row=first_bin + k, column=1, value=f"[1e{a}, 1e{b})")
        summary.cell(row=first_bin + k, column=2,
                     value=f'=COUNTIFS(Variants!$H$2:$H${count + 1},">=1E{a}",Variants!$H$2:$H${count + 1},"<1E{b}")')
    for cell in (summary["A1"], summary["B1"], summary.cell(row=first_bin - 1, column=1), summary.cell(row=first_bin - 1, column=2)):
        cell.font = Font(bold=True)
    summary.column_dimensions["A"].width = 26
    for title, start, stop, anchor in (("Outcomes of the variants", 2, len(names) + 1, "D2"),
                                       ("Final loss per decade", first_bin, first_bin + len(bins) - 2, "D18")):
        if stop < start:
            continue
        chart = BarChart()
        chart.type, chart.title = "col", title
        chart.height, chart.width = 7.5, 16
        chart.add_data(Reference(summary, min_col=2, min_row=start, max_row=stop), titles_from_data=False)
        chart.set_categories(Reference(summary, min_col=1, min_row=start, max_row=stop))
        chart.legend = None
        chart.x_axis.delete = chart.y_axis.delete = False
        summary.add_chart(chart, anchor)
    with output.atomic_path(path) as temporary:
        book.save(temporary)


def _column(index):
    from openpyxl.utils import get_column_letter
    return get_column_letter(index)


def sweep(reference, variants, overrides=(), steps=None, workers=2, summary=None, csv_path=None,
          workbooks=None, force=False, on_result=None):
    """Run every variant of the scenario and write the outputs.

    Args:
        reference: scenario file or template name.
        variants: list of Variant (see seed_axis, remedies, grid_axes, combine).
        overrides, steps: applied to every variant before its own changes.
        workers: processes (2: both cores).
        summary: path of the summary workbook (or None); csv_path: tidy CSV (or None);
        workbooks: folder for each variant's full workbook (or None).
        force: replace existing outputs.
        on_result: callable(result, done, total) as runs finish.
    Returns:
        the list of Results (attribute `interrupted` when stopped by Ctrl-C).
    """
    scenario = scenario_module.load(reference, overrides=overrides, steps=steps)
    paths = check_outputs(summary, csv_path, workbooks, variants, force)
    jobs = [Job(k, reference, tuple(overrides), steps, v, paths.get(k), force) for k, v in enumerate(variants)]
    finished = []

    def record(result, done, total):
        finished.append(result)
        if csv_path:
            write_csv(finished, csv_path)
        if on_result:
            on_result(result, done, total)

    results = run_jobs(jobs, workers, record)
    if summary:
        write_summary(results, summary, scenario.name, results.interrupted)
    return results
