"""The `tracer` command: thin click views of the library."""
import contextlib
import functools
import signal
import sys
import time

import click

from tracer.training import engine, scenario as scenario_module
from tracer.explain import gradcheck as gradcheck_module
from tracer import output as output_module
from tracer.training import templates
from tracer.recalc import verify
from tracer.explain.chain import parse_parameter
from tracer.errors import TracerError, shorten
from tracer.workbook import writer


class _Failure(click.ClickException):
    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def _reports_errors(command):
    """Turn a TracerError into one line on stderr and its exit code (2 = bad input)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TracerError as exc:
            raise _Failure(str(exc), exc.exit_code) from None
    return wrapper


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. Raised where the program is, it unwinds through every cleanup
    (temporaries beside the targets, the private temporary folder) like an error would."""

    def __init__(self, number):
        super().__init__(signal.Signals(number).name)
        self.number = number


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(number, frame):
    for each in _SIGNALS:  # one clean-up, which a second signal must not cut short
        signal.signal(each, signal.SIG_IGN)
    raise Interrupted(number)


@contextlib.contextmanager
def _signals_unwind():
    """SIGINT and SIGTERM raise Interrupted during the block (unless they are ignored, as in a
    background job); the previous handlers come back afterwards."""
    previous = {number: signal.getsignal(number) for number in _SIGNALS}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, _interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def _one_line_usage_errors():
    """click's own usage errors (an option value out of range, a missing argument or file, an
    unknown command or option) become one line `Error: ...` with exit 2, like every other bad
    input, instead of click's Usage/Try/blank/Error block. `tracer` alone still shows the help."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.UsageError as exc:
        message = shorten(exc.format_message(), 300)
        if exc.ctx is not None:
            message += f" (see {exc.ctx.command_path} --help)"
        raise _Failure(message, exc.exit_code) from None


class _Tracer(click.Group):
    """Every command runs with its own temporary folder (removed at the end) and turns SIGINT and
    SIGTERM into one line and the conventional exit code 128 + signal (130, 143). Usage errors
    are one line (see _one_line_usage_errors)."""

    def parse_args(self, ctx, args):
        with _one_line_usage_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            with _signals_unwind(), output_module.private_tempdir(), _one_line_usage_errors():
                return super().invoke(ctx)
        except Interrupted as interrupted:
            message = f"interrupted by {interrupted}; no partial file was left"
            raise _Failure(message, 128 + interrupted.number) from None
        except TracerError as exc:  # from the set-up around the command (its temporary folder)
            raise _Failure(str(exc), exc.exit_code) from None


def _scenario_options(command):
    command = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                           help="Override a scenario key, e.g. --set optimizer.lr=0.001 or --set layers.0.activation=tanh.")(command)
    command = click.option("--steps", type=click.IntRange(min=1), help="Override the number of steps.")(command)
    return click.argument("scenario", metavar="SCENARIO")(command)


def _layout_option(command):
    return click.option("--layout", type=click.Choice(writer.LAYOUTS), default=None,
                        help="Trace sheet layout: column (a column per parameter), matrix (parameters as blocks, "
                             "for wide nets); default: column when the run fits it, else matrix.")(command)


def _load(scenario, overrides, steps):
    return scenario_module.load(scenario, overrides=overrides, steps=steps)


def _run(loaded):
    """engine.run in the sum order of the layout the run's workbook would have (writer.sum_order),
    so that every command sees the trace `tracer run` writes."""
    return engine.run(loaded, sums=writer.sum_order(loaded))


@click.group(cls=_Tracer, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracer")
def main():
    """Trace a small network's training one scalar at a time.

    SCENARIO is a scenario TOML file or the name of a built-in template (see `tracer templates`).

    \b
    Example:
      tracer run leaky-relu-explosion -o explosion.xlsx
    """


@main.command()
@_scenario_options
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Workbook to write (default: NAME.xlsx, unless only --trace is asked for).")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False), help="Write every recorded scalar to this CSV.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--verify", "verify_after", is_flag=True, help="Recompute the workbook with LibreOffice and compare every cell.")
@click.option("--window", metavar="A:B", help="Export only steps A..B, starting from the engine's parameters at step A.")
@click.option("--param", "parameters", multiple=True, metavar="W1[0,2]",
              help="Add a parameter to the ChainRule sheet (the first weight of every layer is always there).")
@_layout_option
@_reports_errors
def run(scenario, overrides, steps, output, trace_path, force, verify_after, window, parameters, layout):
    """Train SCENARIO and export it as a workbook of live formulas (and/or a CSV trace).

    \b
    Examples:
      tracer run leaky-relu-explosion -o explosion.xlsx
      tracer run xor --steps 20 --set optimizer.lr=0.5 --trace xor.csv
      tracer run long-run.toml --window 19990:19999 -o zoom.xlsx
    """
    if verify_after and output is None and trace_path is not None:
        raise _Failure("--verify checks a workbook: add -o FILE.xlsx (only --trace was given)", 2)
    loaded = _load(scenario, overrides, steps)
    span = _parse_window(window, loaded.steps)
    for parameter in parameters:
        parse_parameter(parameter, loaded.widths, loaded)
    if output is None and trace_path is None:
        output = output_module.safe_file_name(loaded.name, ".xlsx")
    output_module.check_targets({"-o": output, "--trace": trace_path}, force=force)
    if output:
        layout = writer.check_scenario_fits(loaded, layout, span)
    # the sum order of the workbook's layout (that of the layout it would have with --trace only)
    sums = writer.SUM_ORDER_OF_LAYOUT[layout] if output else writer.sum_order(loaded, layout, span)
    trace = engine.run(loaded, sums=sums)
    if span is not None:
        trace = trace.window(*span)
    # both outputs are staged beside their targets and renamed together once both are complete
    with output_module.atomic_paths(trace_path, output) as (staged_trace, staged_output):
        if trace_path:
            trace.write_csv(trace_path, into=staged_trace)
        if output:
            with _progress(trace.steps, "writing workbook") as advance:
                layout = writer.write(trace, output, force=force, progress=advance, parameters=parameters,
                                      into=staged_output, layout=layout).name
    if trace_path:
        click.echo(f"wrote {trace_path}")
    if output:
        click.echo(f"wrote {output}" + (f" (steps {span[0]}..{span[1]}, starting from the engine's parameters at step {span[0]})" if span else ""))
    click.echo(_summary(trace))
    if output and verify_after:
        _report_verification(verify.verify(trace, output, parameters=parameters, layout=layout))


def _parse_window(text, steps):
    """'A:B' -> (A, B) within 0..steps-1, or None."""
    if text is None:
        return None
    try:
        first, last = (int(part) for part in text.split(":"))
    except ValueError:
        raise _Failure(f"--window must look like A:B (two step numbers), not {shorten(repr(text), 60)}", 2) from None
    if not 0 <= first <= last < steps:
        raise _Failure(f"--window {text}: steps must satisfy 0 <= A <= B <= {steps - 1}", 2)
    return first, last


@contextlib.contextmanager
def _progress(total, label):
    """A progress bar on a terminal, with the time left; nothing when output is redirected."""
    if not sys.stderr.isatty() or total < 200:
        yield None
        return
    remaining = _Remaining(total)
    with click.progressbar(length=total, label=label, file=sys.stderr, show_eta=False,
                           item_show_func=lambda text: text) as bar:
        done = [0]

        def advance(steps_done):
            bar.update(steps_done - done[0], remaining.text(steps_done))
            done[0] = steps_done
        yield advance


class _Remaining:
    """The time left, from the rate since the first step was done: (now − t₁)/(n − n₁) per step
    times the steps left. Not from when the bar appeared: the layout before the first step can
    take longer than hundreds of steps (click's own estimate divided that by one step)."""

    def __init__(self, total, clock=time.monotonic):
        self.total, self._clock, self._first = total, clock, None

    def estimate(self, done):
        """Seconds left after `done` steps, or None until 5 steps and 1 s have been measured."""
        now = self._clock()
        if self._first is None:
            self._first = now, done
            return None
        started, done_then = self._first
        if done - done_then < 5 or now - started < 1.0:
            return None
        return (now - started) / (done - done_then) * (self.total - done)

    def text(self, done):
        """'about 1 min 38 s left', or None while there is no estimate."""
        seconds = self.estimate(done)
        if seconds is None:
            return None
        minutes, seconds = divmod(round(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        if hours:
            return f"about {hours} h {minutes} min left"
        return f"about {minutes} min {seconds} s left" if minutes else f"about {seconds} s left"


def _report_verification(report):
    click.echo(report.summary())
    if not report.ok:
        raise _Failure("the workbook disagrees with the engine", 1)


@main.command()
@_scenario_options
@click.option("--param", "parameter", required=True, help="The parameter, e.g. W1[0,0] or b2[1].")
@click.option("--step", "at_step", type=click.IntRange(min=0), default=0, show_default=True, help="Step of the run.")
@click.option("--sample", type=click.IntRange(min=0), help="Data row (default: the step's first sample).")
@click.option("--path", "path", help="Units from the parameter's layer to the output, e.g. 0,2,1 (default: the largest term).")
@click.option("--latex", is_flag=True, help="Print LaTeX instead of Unicode.")
@_reports_errors
def chain(scenario, overrides, steps, parameter, at_step, sample, path, latex):
    """Print the chain rule behind one gradient, symbolically and with the trace's numbers.

    \b
    Example:
      tracer chain sigmoid-vanishing --param W1[0,0] --step 0
    """
    from tracer.explain import chain as chain_module
    trace = _run(_load(scenario, overrides, steps))
    units = None
    if path:
        try:
            units = [int(p) for p in path.split(",")]
        except ValueError:
            raise _Failure(f"--path must be unit numbers separated by commas, not {shorten(repr(path), 60)}", 2) from None
    explained = chain_module.explain(trace, parameter, step=at_step, sample=sample, path=units, latex=latex, evaluate=True)
    click.echo(chain_module.render(explained, latex=latex))


@main.command()
@_scenario_options
@click.option("--rows", type=click.IntRange(min=1), default=20, show_default=True, help="Steps shown in the table.")
@_reports_errors
def diagnose(scenario, overrides, steps, rows):
    """Report vanishing/exploding gradients, saturated and dead units, diverging weights, and why.

    \b
    Example:
      tracer diagnose leaky-relu-explosion
    """
    from tracer.explain import diagnose as diagnose_module
    trace = _run(_load(scenario, overrides, steps))
    click.echo(diagnose_module.render(diagnose_module.diagnose(trace), rows=rows))


@main.command()
@click.argument("scenario", metavar="SCENARIO")
@click.option("--seeds", type=click.IntRange(min=1), help="Monte Carlo: run the scenario with seeds 0..N-1.")
@click.option("--remedies", is_flag=True, help="Apply the articles' remedies one at a time.")
@click.option("--set", "grid", multiple=True, metavar="KEY.PATH=V1,V2,...",
              help="A grid axis (or, with one value, a change applied to every variant).")
@click.option("--steps", type=click.IntRange(min=1), help="Override the number of steps.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Summary workbook (default: NAME-sweep.xlsx).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the tidy CSV of the variants here.")
@click.option("--workbooks", type=click.Path(file_okay=False), help="Write each variant's full workbook into this folder.")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes.")
@click.option("--force", is_flag=True, help="Replace existing outputs.")
@_reports_errors
def sweep(scenario, seeds, remedies, grid, steps, output, csv_path, workbooks, jobs, force):
    """Run SCENARIO many ways (seeds, remedies, a --set grid) and rank the outcomes.

    \b
    Examples:
      tracer sweep sigmoid-vanishing --seeds 200
      tracer sweep leaky-relu-explosion --remedies --csv remedies.csv
      tracer sweep xor --set optimizer.lr=0.1,1,10 --set layers.0.init=xavier_uniform,he_uniform
    """
    from tracer.studies import sweep as sweep_module
    loaded = _load(scenario, (), steps)
    axes = sweep_module.grid_axes(grid)
    if seeds:
        axes.insert(0, sweep_module.seed_axis(seeds))
    if remedies:
        axes.insert(0, sweep_module.remedies(loaded))
    variants = sweep_module.combine(axes)
    if output is None:
        output = output_module.safe_file_name(f"{loaded.name}-sweep", ".xlsx")
    bar = click.progressbar(length=len(variants), label="runs", file=sys.stderr) if sys.stderr.isatty() else None

    def advance(result, done, total):
        if bar is not None:
            bar.update(1)
    with bar if bar is not None else contextlib.nullcontext():
        results = sweep_module.sweep(scenario, variants, steps=steps, workers=jobs, summary=output, csv_path=csv_path,
                                     workbooks=workbooks, force=force, on_result=advance)
    click.echo(sweep_module.render(results, results.interrupted))
    click.echo(f"wrote {output}" + (f" and {csv_path}" if csv_path else "") + (f"; workbooks in {workbooks}" if workbooks else ""))
    if results.interrupted:
        sys.exit(130)


@main.command(name="check")
@_scenario_options
@click.argument("hand", type=click.Path(exists=True, dir_okay=False))
@click.option("--map", "mapping", type=click.Path(exists=True, dir_okay=False),
              help="For a workbook HAND: a CSV of name,cell lines saying which cell holds which number.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_reports_errors
def check_command(scenario, overrides, steps, hand, mapping, as_json):
    """Check a hand calculation (HAND.csv of name,value lines, or a workbook with --map) against
    the trace; explain every wrong number. Exit 0 when all are right, 1 otherwise.

    \b
    Example:
      tracer check linear-regression my-numbers.csv
      tracer check xor my-sheet.xlsx --map cells.csv --json
    """
    from tracer.explain import check as check_module
    trace = _run(_load(scenario, overrides, steps))
    if hand.lower().endswith((".xlsx", ".xlsm", ".ods", ".xls")):
        if not mapping:
            raise _Failure("a workbook needs --map map.csv (name,cell per line)", 2)
        entries = check_module.read_workbook(hand, mapping, trace)
    else:
        entries = check_module.read_hand(hand, trace)
    results = check_module.check(trace, entries)
    click.echo(check_module.to_json(results, trace.scenario) if as_json else check_module.render(results))
    if not all(r.right for r in results):
        sys.exit(1)


@main.command(name="verify")
@_scenario_options
@_layout_option
@_reports_errors
def verify_command(scenario, overrides, steps, layout):
    """Export SCENARIO, recompute it with LibreOffice and compare every formula cell.

    Exits 1 on any difference beyond 1e-9 (relative, with an absolute floor for
    cancellation) or any error cell where the engine is finite (or the reverse).

    \b
    Example:
      tracer verify leaky-relu-explosion
    """
    loaded = _load(scenario, overrides, steps)
    layout = writer.check_scenario_fits(loaded, layout)
    trace = engine.run(loaded, sums=writer.SUM_ORDER_OF_LAYOUT[layout])
    _report_verification(verify.verify(trace, layout=layout))


def _summary(trace):
    first, last = trace.loss[0], trace.loss[-1]
    span = f"steps {trace.first_step}..{trace.first_step + trace.steps - 1}" if trace.first_step else f"{trace.steps} steps"
    text = f"{trace.scenario.name}: {span}, loss {first:.6g} -> {last:.6g}"
    bad = trace.first_nonfinite_step()
    if bad is not None:
        text += f"; values become non-finite at step {trace.first_step + bad}"
    return text


@main.command(name="templates")
def list_templates():
    """List the built-in templates with their one-line descriptions.

    \b
    Example:
      tracer templates
    """
    for name in templates.names():
        loaded = scenario_module.loads(templates.read(name), source=f"template {name}")
        click.echo(f"{name:24} {loaded.description.splitlines()[0] if loaded.description else ''}")


@main.command()
@click.argument("name")
@click.option("--explicit", is_flag=True,
              help="Write the initial weights and biases drawn from the seed as explicit arrays (to compute by hand).")
@_reports_errors
def show(name, explicit):
    """Print the TOML of a built-in template (or scenario file).

    \b
    Examples:
      tracer show sigmoid-vanishing > my-run.toml
      tracer show xor --explicit > xor-by-hand.toml
    """
    from tracer.training import explicit as explicit_module
    loaded = _load(name, (), None)
    click.echo(explicit_module.explicit_text(loaded) if explicit else loaded.text, nl=False)


@main.command()
@_scenario_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Picture to write (.png, .svg or .pdf: matplotlib's formats).")
@click.option("--kind", type=click.Choice(["overview", "loss", "gradient-flow", "histograms", "through-time"]),
              default="overview", show_default=True, help="Which picture: the loss and gradient flow side by side, or one of them.")
@click.option("--step", "time_step", type=click.IntRange(min=0), default=0, help="The training step of --kind through-time.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@_reports_errors
def plot(scenario, overrides, steps, output, kind, time_step, force):
    """Draw the run: loss curve, gradient norm per layer and step (log scale), histograms, error through time.

    \b
    Examples:
      tracer plot deep-sigmoid -o flow.png
      tracer plot rnn-exploding --kind through-time -o time.png
    """
    from tracer import plots
    picture_format = output.rsplit(".", 1)[-1].lower() if "." in output else "png"
    if picture_format not in ("png", "svg", "pdf"):
        raise _Failure(f"-o {shorten(output, 60)}: name a .png, .svg or .pdf file", 2)
    output_module.check_targets({"-o": output}, force)
    trace = _run(_load(scenario, overrides, steps))
    if kind == "through-time" and time_step >= trace.steps:
        raise _Failure(f"--step must be below the run's {trace.steps} steps", 2)
    figure = plots.figure_of(trace, kind, time_step)
    with output_module.atomic_path(output) as staged:
        figure.savefig(staged, format=picture_format, dpi=110)
    click.echo(f"wrote {output}")


@main.command()
@_scenario_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="SVG file to write.")
@click.option("--step", "graph_step", type=click.IntRange(min=0), default=0, show_default=True, help="The step whose values are shown.")
@click.option("--sample", "slot", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which sample of the step's batch (its position in the batch) the unit values are of.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@_reports_errors
def graph(scenario, overrides, steps, output, graph_step, slot, force):
    """Draw the network at a step as SVG: units with their values, weights on the edges, zero or
    saturated slopes marked.

    \b
    Example:
      tracer graph leaky-relu-explosion --step 3 -o net.svg
    """
    from tracer import diagram
    output_module.check_targets({"-o": output}, force)
    trace = _run(_load(scenario, overrides, steps))
    if graph_step >= trace.steps or slot >= len(trace.samples(min(graph_step, trace.steps - 1))):
        raise _Failure(f"--step must be below {trace.steps} and --sample below the batch size", 2)
    text = diagram.svg(trace, graph_step, slot)
    with output_module.atomic_path(output) as staged:
        staged.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")


@main.command()
@_scenario_options
@click.option("--step", "check_steps", type=click.IntRange(min=0), multiple=True,
              help="Step(s) to check (default: the first, middle and last finite steps).")
@click.option("--sample", "sample", type=click.IntRange(min=1), metavar="N",
              help="Check N parameters drawn reproducibly (every bias and a weight of every layer among them) "
                   "instead of all.")
@click.option("--seed", "sample_seed", type=click.IntRange(min=0), metavar="S",
              help="Seed of the --sample draw (default 0).")
@_reports_errors
def gradcheck(scenario, overrides, steps, check_steps, sample, sample_seed):
    """Compare backprop gradients with central finite differences; exit 1 beyond 1e-6.

    \b
    Examples:
      tracer gradcheck xor --step 0 --step 10
      tracer gradcheck wide-784-32-10 --sample 2000 --seed 1
    """
    if sample_seed is not None and sample is None:
        raise _Failure("--seed draws the parameters of --sample: add --sample N", 2)
    loaded = _load(scenario, overrides, steps)
    trace = _run(loaded)
    chosen = sorted(set(check_steps)) or sorted({0, trace.steps // 2, trace.steps - 1})
    if any(step >= trace.steps for step in chosen):
        raise _Failure(f"--step must be below the run's {trace.steps} steps", 2)
    seed = sample_seed or 0
    report = gradcheck_module.check(trace, chosen, sample=sample, seed=seed, progress=_ProgressLines("gradcheck"))
    worst = report.worst
    if report.nonfinite:
        click.echo(f"skipped steps with non-finite values: {', '.join(map(str, report.nonfinite))}")
    if report.skipped:
        click.echo(f"skipped {len(report.skipped)} parameter(s) whose ±h step crosses a kink at u = 0")
    if report.unresolved:
        click.echo(f"skipped {len(report.unresolved)} parameter(s) whose loss bends too sharply for finite differences "
                   "even at the smallest step (e.g. batchnorm with σ² near eps)")
    if worst is None:
        raise _Failure("no gradient could be checked (every chosen step is non-finite)", 1)
    drawn = ""
    if sample is not None:
        total = sum(a.size for arrays in trace.parameters(0).values() for a in arrays if a is not None)
        drawn = f" (a sample of {min(sample, total)} of the {total} parameters, seed {seed})"
    click.echo(
        f"checked {len(report.checks)} gradients{drawn} at step(s) "
        f"{', '.join(str(s) for s in chosen if s not in report.nonfinite)}; "
        f"largest relative error {worst.error:.3e} ({worst.name} at step {worst.step}: "
        f"backprop {worst.backprop:.10g}, numeric {worst.numeric:.10g})"
    )
    if worst.error > 1e-6:
        raise _Failure(f"gradient check failed: {worst.error:.3e} > 1e-6", 1)


class _ProgressLines:
    """Progress of a long check as plain lines on stderr (a log keeps them too): the first after
    `every` seconds, then one every `every` seconds, "gradcheck: 5120 of 25450 parameters checked,
    about 12 s left" (the rate since the first report, as _Remaining). Nothing for a short check."""

    def __init__(self, label, every=3.0, clock=time.monotonic):
        self.label, self.every, self._clock = label, every, clock
        self._last = clock()
        self._remaining = None

    def __call__(self, done, total):
        if self._remaining is None:
            self._remaining = _Remaining(total, self._clock)
        left = self._remaining.text(done)
        now = self._clock()
        if now - self._last < self.every or done >= total:
            return
        self._last = now
        click.echo(f"{self.label}: {done} of {total} parameters checked" + (f", {left}" if left else ""), err=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
