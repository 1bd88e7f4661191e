"""Which quantity goes in which cell: a pure function of the scenario and the batch plan.

The Trace sheet has two header rows, then for every step its sample rows followed by one
Σ row (batch totals, the parameters used at that step and their updates), and a final row
with the parameters after the last step. Every column holds one formula shape all the way
down; a template's placeholders are filled per row:
  {r} this row   {p} this step's Σ row   {q} the previous Σ row   {d} the sample's Data row
  {f}/{l} first/last sample row of the step   {n} samples in the step
Each column also knows its quantity key, so the verifier can ask the Trace for the
engine's value of every cell.
"""
from dataclasses import dataclass, field

import numpy as np
from openpyxl.utils import column_index_from_string, get_column_letter

from .. import activations, losses, optim, procedures
from ..errors import LimitError
from ..trace import param_name
from .. import notation

HEADER_ROWS = 2
MAX_COLUMNS = 16_384
SETTINGS = "Settings"


@dataclass
class Column:
    letter: str
    group: str
    header: str
    comment: str
    key: tuple                    # (quantity, layer, index) for Trace lookups
    sample: str | None = None     # template in sample rows
    total: str | None = None      # template in Σ rows (None: blank)
    final: str | None = None      # template in the final row
    first: str | None = None      # template in the first Σ row ({prev0}: the state before it)
    width: float = 14
    index: int = 0                # position in the sheet (0 = column A)


@dataclass
class Row:
    number: int
    kind: str                      # "sample" | "total" | "final"
    step: int                      # index into the trace's steps
    slot: int | None = None        # position in the batch (sample rows)
    sample: int | None = None      # data row id (sample rows)
    places: dict = field(default_factory=dict)


def widest_key(scenario, layer=None):
    """The scenario key of the widest layer (the input columns count as layer 0), among layer−1,
    layer and layer+1 when `layer` is given: the width that makes a sheet or formula too large."""
    widths = scenario.widths
    near = range(len(widths)) if layer is None else range(max(0, layer - 1), min(len(widths), layer + 2))
    widest = max(near, key=lambda index: widths[index])
    return "data.inputs" if widest == 0 else f"layers[{widest - 1}].units"


class TraceLayout:
    """Columns and rows of the Trace sheet for a scenario and its batch plan."""

    def __init__(self, scenario, sample_ids, first_step=0, names=None):
        self.scenario = scenario
        self.sample_ids = sample_ids
        self.first_step = first_step
        self.names = names or settings_names(scenario)
        self.columns = []
        self._where = {}
        count = self.column_count()
        if count > MAX_COLUMNS:
            raise LimitError(
                f"the Trace sheet would need {count:,} columns, above the spreadsheet limit of "
                f"{MAX_COLUMNS} columns: use fewer or narrower layers",
                scenario.source, widest_key(scenario),
            )
        self._build()

    # ---------------------------------------------------------------- columns

    def cell(self, key):
        """Column letter of quantity `key`."""
        return self._where[key]

    def _add(self, group, header, comment, key, **templates):
        column = Column(get_column_letter(len(self.columns) + 1), group, header, comment, key, **templates,
                        index=len(self.columns))
        self.columns.append(column)
        self._where[key] = column.letter
        return column.letter

    def _reduce(self, letter):
        return procedures.excel_reduce(f"{letter}{{f}}:{letter}{{l}}", self.scenario.reduction, "{n}")

    def _build(self):
        s = self.scenario
        widths, L = s.widths, len(s.layers)
        loss = losses.LOSSES[s.loss]
        optimizer = optim.OPTIMIZERS[s.optimizer]
        self._add("", "step", "training step t", ("step",), width=7)
        self._add("", "sample", "data row of the sample (Σ: batch total of the step)", ("sample",), width=8)
        for i in range(widths[0]):
            self._add("input x", notation.sub("x", i), f"input x{i} of the sample (Data sheet)", ("x", 0, i),
                      sample=f"Data!{input_letter(s, i)}{{d}}")
        for k in range(widths[-1]):
            self._add("target t", notation.sub("t", k), f"target t{k} of the sample (Data sheet)", ("t", 0, k),
                      sample=f"Data!{data_letter(widths[0] + k)}{{d}}")
        below = [self.cell(("x", 0, i)) for i in range(widths[0])]
        # Parameter columns come later in the sheet, but forward formulas need their letters:
        # reserve the letters by computing the column count of the groups in between first.
        param_start = self._parameter_start()
        self._params = {}
        index = param_start
        for l in range(1, L + 1):
            for i in range(self._fan_in(l)):
                for j in range(widths[l]):
                    self._params[("W", l, (i, j))] = get_column_letter(index)
                    index += 1
            for j in range(widths[l]):
                self._params[("b", l, (j,))] = get_column_letter(index)
                index += 1
        for l, layer in enumerate(s.layers, start=1):
            act = activations.get(layer.activation)
            params = {name: self.names[(layer.activation, name, l)] for name in act.params}
            if layer.kind == "batchnorm":
                u_cells = self._batchnorm_forward(l, below)
            else:
                u_cells = []
                for j in range(widths[l]):
                    terms = "+".join(f"{below[i]}{{r}}*{self._params[('W', l, (i, j))]}{{p}}" for i in range(widths[l - 1]))
                    template = f"{terms}+{self._params[('b', l, (j,))]}{{p}}"
                    u_cells.append(self._add(f"layer {l} forward", notation.unit("u", l, j),
                                             f"{notation.unit('u', l, j)} = Σᵢ {notation.unit('a', l - 1, 'ᵢ')}·W{l}[i,{j}] + b{l}[{j}]",
                                             ("u", l, j), sample=template))
            f_cells = []
            symbol = "h" if layer.residual else "a"
            for j in range(widths[l]):
                if act.elementwise:
                    template = act.excel_value(f"{u_cells[j]}{{r}}", params)
                else:
                    template = act.excel_value([f"{c}{{r}}" for c in u_cells], j, params)
                f_cells.append(self._add(f"layer {l} forward", notation.unit(symbol, l, j),
                                         f"{notation.unit(symbol, l, j)} = {act.symbol}({notation.unit('u', l, j)})",
                                         (symbol, l, j), sample=template))
            if layer.residual:
                a_cells = [self._add(f"layer {l} forward", notation.unit("a", l, j),
                                     f"{notation.unit('a', l, j)} = {notation.unit('h', l, j)} + {notation.unit('a', l - 1, j)} "
                                     "(residual connection)", ("a", l, j), sample=f"{f_cells[j]}{{r}}+{below[j]}{{r}}")
                           for j in range(widths[l])]
            else:
                a_cells = f_cells
            below = a_cells
        y_cells = below
        t_cells = [self.cell(("t", 0, k)) for k in range(widths[-1])]
        u_out = [self.cell(("u", L, k)) for k in range(widths[-1])]
        error_cells = []
        if loss.records_output_error:
            for k in range(widths[-1]):
                error_cells.append(self._add("loss", f"∂E/∂{notation.unit('a', L, k)}", f"derivative of the {s.loss} loss by the output",
                                             ("dE_da", L, k), sample=loss.excel_error(f"{y_cells[k]}{{r}}", f"{t_cells[k]}{{r}}", widths[-1])))
        loss_template = loss.excel_value([f"{c}{{r}}" for c in u_out], [f"{c}{{r}}" for c in y_cells], [f"{c}{{r}}" for c in t_cells])
        letter = self._add("loss", "E", f"{s.loss} loss of the sample; Σ row: {s.reduction} over the batch",
                           ("loss",), sample=loss_template)
        self.columns[-1].total = self._reduce(letter)
        delta_cells, error_cells_hidden = {}, {}
        for l in range(L, 0, -1):
            act = activations.get(s.layers[l - 1].activation)
            params = {name: self.names[(s.layers[l - 1].activation, name, l)] for name in act.params}
            slopes = []
            activated = "h" if s.layers[l - 1].residual else "a"
            for j in range(widths[l]):
                a_ref, u_ref = f"{self.cell((activated, l, j))}{{r}}", f"{self.cell(('u', l, j))}{{r}}"
                slopes.append(self._add(f"layer {l} backward", f"{act.symbol}'({notation.unit('u', l, j)})",
                                        f"local slope f'(u) of {act.name}", ("slope", l, j),
                                        sample=act.excel_slope(u_ref, a_ref, params)))
            if self._has_error_columns(l):
                for j in range(widths[l]):
                    if s.layers[l].kind == "batchnorm":
                        meaning = (f"e = ∂E/∂a from the batchnorm above: (dx̂ − m1 − x̂·m2)/√(σ² + eps) of layer {l + 1}")
                    else:
                        meaning = f"e = ∂E/∂a: Σₖ W{l + 1}[{j},k]·δₖ⁽{l + 1}⁾" + (" + e⁽ˡ⁺¹⁾" if s.layers[l].residual else "")
                    error_cells_hidden[(l, j)] = self._add(
                        f"layer {l} backward", notation.unit("e", l, j), meaning,
                        ("e", l, j), sample=self._error_from_above(l, j, delta_cells, error_cells_hidden))
            for j in range(widths[l]):
                if l == L:
                    template = loss.excel_output_delta([f"{c}{{r}}" for c in y_cells], [f"{c}{{r}}" for c in t_cells], j,
                                                       [f"{c}{{r}}" for c in error_cells], f"{slopes[j]}{{r}}")
                    meaning = loss.output_delta_meaning
                elif (l, j) in error_cells_hidden:
                    template, meaning = f"{slopes[j]}{{r}}*{error_cells_hidden[(l, j)]}{{r}}", "δ = f'(u) · e"
                else:
                    back = self._error_from_above(l, j, delta_cells, error_cells_hidden)
                    template, meaning = f"{slopes[j]}{{r}}*({back})", f"δ = f'(u) · Σₖ W{l + 1}[{j},k]·δₖ⁽{l + 1}⁾"
                delta_cells[(l, j)] = self._add(f"layer {l} backward", notation.unit("δ", l, j), meaning, ("delta", l, j), sample=template)
            if s.layers[l - 1].kind == "batchnorm":
                self._batchnorm_backward(l, delta_cells)
        below_cells = {0: [self.cell(("x", 0, i)) for i in range(widths[0])]}
        for l in range(1, L + 1):
            below_cells[l] = [self.cell(("a", l, j)) for j in range(widths[l])]
        grads = {}
        for l in range(1, L + 1):
            norm = s.layers[l - 1].kind == "batchnorm"
            for i in range(self._fan_in(l)):
                for j in range(widths[l]):
                    name = param_name(s, "W", l, (i, j))
                    factor = self.cell(("xhat", l, j)) if norm else below_cells[l - 1][i]
                    meaning = f"x̂⁽{l}⁾{j}·δ⁽{l}⁾{j}" if norm else f"a⁽{l - 1}⁾{i}·δ⁽{l}⁾{j}"
                    letter = self._add("gradient ∂E/∂θ (Σ row: batch)", f"∂E/∂{name}", f"{meaning}; Σ row: {s.reduction} over the batch",
                                       ("grad_W", l, (i, j)), sample=f"{factor}{{r}}*{delta_cells[(l, j)]}{{r}}")
                    self.columns[-1].total = self._reduce(letter)
                    grads[("W", l, (i, j))] = letter
            for j in range(widths[l]):
                name = param_name(s, "b", l, (j,))
                letter = self._add("gradient ∂E/∂θ (Σ row: batch)", f"∂E/∂{name}", f"δ⁽{l}⁾{j}; Σ row: {s.reduction} over the batch",
                                   ("grad_b", l, (j,)), sample=f"{delta_cells[(l, j)]}{{r}}")
                self.columns[-1].total = self._reduce(letter)
                grads[("b", l, (j,))] = letter
        assert len(self.columns) + 1 == param_start, "parameter columns moved"
        update_letters = {}
        index = param_start + len(self._params)
        for key in self._params:
            frozen = key[0] == "b" and not s.layers[key[1] - 1].train_bias
            if not frozen:
                update_letters[key] = get_column_letter(index)
                index += 1
        for key, letter in self._params.items():
            kind, l, idx = key
            name = param_name(s, kind, l, idx)
            if key in update_letters:
                carry = f"{letter}{{q}}-{update_letters[key]}{{q}}"
                meaning = f"{name} used at this step = previous value − previous update"
            else:
                carry, meaning = f"{letter}{{q}}", f"{name} (not trained: train_bias = false)"
            got = self._add("parameters θ (value used at this step)", name, meaning, (kind, l, idx), total=carry, final=carry)
            assert got == letter
        # letters of the columns after the updates: optimiser state, lr of the step, clipping
        state_letters = {}
        for state in optimizer.state:
            for key in update_letters:
                state_letters[(state, key)] = get_column_letter(index)
                index += 1
        lr_letter = None
        if s.optimizer_params["schedule"] != "constant":
            lr_letter = get_column_letter(index)
            index += 1
        clip_letter = get_column_letter(index + 1) if s.clip_norm is not None else None
        hyper = s.optimizer_params
        names = {p: self.names[("optimizer", p)] for p in hyper if ("optimizer", p) in self.names}
        refs = dict(names, lr=f"{lr_letter}{{r}}" if lr_letter else names["lr"], t="($A{r}+1)",
                    nesterov=hyper.get("nesterov", False))
        self._state_first = {}
        # per parameter: the gradient as its update reads it, and this row's state cells
        row_refs, clipping = {}, ""
        for key in update_letters:
            used, clipping = self._clipped(f"{grads[key]}{{r}}", clip_letter)
            used = optim.excel_gradient(used, f"{self._params[key]}{{r}}", names, hyper)
            row_refs[key] = dict(refs, g=used, **{st: f"{state_letters[(st, key)]}{{r}}" for st in optimizer.state})
        for key, letter in update_letters.items():
            kind, l, idx = key
            name = param_name(s, kind, l, idx)
            got = self._add("update Δθ (subtracted)", f"Δ{name}", f"{s.optimizer}: {optimizer.meaning}{clipping}",
                            (f"update_{kind}", l, idx), total=optimizer.excel_update(row_refs[key]))
            assert got == letter
        for state in optimizer.state:
            formula = optimizer.excel_state[state]
            symbol = optim.STATE_SYMBOLS.get(state, state)
            for key in update_letters:
                kind, l, idx = key
                name = param_name(s, kind, l, idx)
                previous = {f"prev_{st}": f"{state_letters[(st, key)]}{{q}}" for st in optimizer.state}
                first = {f"prev_{st}": "{prev0}" for st in optimizer.state}
                got = self._add(f"optimiser state ({s.optimizer})", f"{symbol} {name}", f"{state} of {name} after this step",
                                (f"{state}_{kind}", l, idx), total=formula(dict(row_refs[key], **previous)))
                self.columns[-1].first = formula(dict(row_refs[key], **first))
                assert got == state_letters[(state, key)]
        if lr_letter:
            decay = procedures.excel_learning_rate(hyper["schedule"], "$A{r}")   # IFERROR where γ^k underflows
            got = self._add("schedule", "lr", f"learning rate of the step ({hyper['schedule']} decay)", ("lr",), total=decay)
            assert got == lr_letter
        if s.clip_norm is not None:
            trained = [grads[key] for key in update_letters]   # a frozen bias is not in ‖g‖
            norm = self._add("gradient clipping", "‖g‖", "L2 norm of the batch gradients of every trained parameter",
                             ("grad_norm",), total=procedures.excel_grad_norm(_column_ranges(trained)))
            got = self._add("gradient clipping", "clip c", "c = min(1, clip_norm / (‖g‖ + 1e-6)); the update uses g·c",
                            ("clip_factor",), total=procedures.excel_clip_factor(f"{norm}{{r}}"))
            assert got == clip_letter
        assert len(self.columns) == self.column_count()

    def _fan_in(self, l):
        """Rows of W_l: the width below, or 1 for a batchnorm layer's γ."""
        return 1 if self.scenario.layers[l - 1].kind == "batchnorm" else self.scenario.widths[l - 1]

    def _has_error_columns(self, l):
        """Hidden layers whose error e = ∂E/∂a gets its own columns: residual ones, and those below a batchnorm."""
        layers = self.scenario.layers
        return l < len(layers) and (layers[l - 1].residual or layers[l].kind == "batchnorm")

    def _batchnorm_forward(self, l, below):
        """μ and σ² in the Σ row, then x̂ and u = γ·x̂ + β in the sample rows; returns the u letters."""
        n, eps = self.scenario.widths[l], self.names[("batchnorm", "eps", l)]
        group = f"layer {l} batchnorm"
        means = [self._add(group, notation.unit("μ", l, j), "batch mean of the input (Σ row)", ("bn_mean", l, j),
                           total=f"SUM({below[j]}{{f}}:{below[j]}{{l}})/{{n}}") for j in range(n)]
        variances = [self._add(group, notation.unit("σ²", l, j), "biased batch variance Σ(x − μ)²/B (Σ row)", ("bn_var", l, j),
                               total=f"SUMPRODUCT({below[j]}{{f}}:{below[j]}{{l}}-{means[j]}{{r}},"
                                     f"{below[j]}{{f}}:{below[j]}{{l}}-{means[j]}{{r}})/{{n}}")
                     for j in range(n)]
        xhats = [self._add(group, notation.unit("x̂", l, j), f"x̂ = (x − μ)/√(σ² + eps), eps = {eps}", ("xhat", l, j),
                           sample=f"({below[j]}{{r}}-{means[j]}{{p}})/SQRT({variances[j]}{{p}}+{eps})") for j in range(n)]
        self._norm_cells = {"mean": means, "var": variances, "xhat": xhats}
        return [self._add(group, notation.unit("u", l, j), f"u = γ·x̂ + β with γ{l}[{j}], β{l}[{j}]", ("u", l, j),
                          sample=f"{self._params[('W', l, (0, j))]}{{p}}*{xhats[j]}{{r}}+{self._params[('b', l, (j,))]}{{p}}")
                for j in range(n)]

    def _batchnorm_backward(self, l, delta_cells):
        """dx̂ = δ·γ in the sample rows, m1 = mean(dx̂) and m2 = mean(dx̂·x̂) in the Σ row."""
        n = self.scenario.widths[l]
        group = f"layer {l} batchnorm backward"
        xhat = [self.cell(("xhat", l, j)) for j in range(n)]
        dxhat = [self._add(group, notation.unit("dx̂", l, j), "dx̂ = δ·γ", ("dxhat", l, j),
                           sample=f"{delta_cells[(l, j)]}{{r}}*{self._params[('W', l, (0, j))]}{{p}}") for j in range(n)]
        for j in range(n):
            self._add(group, notation.unit("m1", l, j), "m1 = Σ dx̂ / B (Σ row)", ("bn_m1", l, j),
                      total=f"SUM({dxhat[j]}{{f}}:{dxhat[j]}{{l}})/{{n}}")
        for j in range(n):
            self._add(group, notation.unit("m2", l, j), "m2 = Σ dx̂·x̂ / B (Σ row)", ("bn_m2", l, j),
                      total=f"SUMPRODUCT({dxhat[j]}{{f}}:{dxhat[j]}{{l}},{xhat[j]}{{f}}:{xhat[j]}{{l}})/{{n}}")

    def _error_from_above(self, l, j, delta_cells, error_cells):
        """Σₖ W_{l+1}[j,k]·δₖ⁽ˡ⁺¹⁾ (+ e⁽ˡ⁺¹⁾_j when layer l+1 is residual), or the batchnorm
        backward (dx̂ − m1 − x̂·m2)/√(σ² + eps) of layer l+1, as a formula body."""
        if self.scenario.layers[l].kind == "batchnorm":
            c = self.cell
            eps = self.names[("batchnorm", "eps", l + 1)]
            return (f"({c(('dxhat', l + 1, j))}{{r}}-{c(('bn_m1', l + 1, j))}{{p}}-{c(('xhat', l + 1, j))}{{r}}*"
                    f"{c(('bn_m2', l + 1, j))}{{p}})/SQRT({c(('bn_var', l + 1, j))}{{p}}+{eps})")
        widths = self.scenario.widths
        back = "+".join(f"{self._params[('W', l + 1, (j, k))]}{{p}}*{delta_cells[(l + 1, k)]}{{r}}" for k in range(widths[l + 1]))
        if self.scenario.layers[l].residual:
            back += f"+{error_cells[(l + 1, j)]}{{r}}"
        return back

    def _clipped(self, gradient, clip_letter):
        """The gradient as the update sees it (clip_norm factor, then clip_value clamp)."""
        by_value = "clip_value" if self.scenario.clip_value is not None else None
        meaning = (", g clipped by norm (×c)" if clip_letter else "") + (", g clamped to ±clip_value" if by_value else "")
        return procedures.excel_clipped(gradient, f"{clip_letter}{{r}}" if clip_letter else None, by_value), meaning

    def column_count(self):
        """Columns of the Trace sheet: everything before the parameters, then θ and Δθ."""
        s = self.scenario
        parameters = sum(self._fan_in(l) * s.widths[l] + s.widths[l] for l in range(1, len(s.layers) + 1))
        updates = parameters - sum(layer.units for layer in s.layers if not layer.train_bias)
        clipping = 2 if s.clip_norm is not None else 0
        states = updates * len(optim.OPTIMIZERS[s.optimizer].state)
        schedule = 0 if s.optimizer_params["schedule"] == "constant" else 1
        return self._parameter_start() - 1 + parameters + updates + states + schedule + clipping

    def _parameter_start(self):
        s = self.scenario
        widths, L = s.widths, len(s.layers)
        count = 2 + widths[0] + widths[-1]
        count += sum(2 * n for n in widths[1:])                       # u, a
        count += sum(layer.units for layer in s.layers if layer.residual)   # h
        count += sum(widths[l] for l in range(1, L + 1) if self._has_error_columns(l))  # e
        count += sum(6 * layer.units for layer in s.layers if layer.kind == "batchnorm")  # μ σ² x̂ dx̂ m1 m2
        count += widths[-1] if losses.LOSSES[s.loss].records_output_error else 0      # ∂E/∂a
        count += 1                                                     # E
        count += sum(2 * n for n in widths[1:])                        # slope, δ
        count += sum(self._fan_in(l) * widths[l] + widths[l] for l in range(1, L + 1))  # gradients
        return count + 1

    # ---------------------------------------------------------------- rows

    def rows(self):
        """Yield every data row of the Trace sheet in order."""
        number = HEADER_ROWS + 1
        previous_total = None
        for step, ids in enumerate(self.sample_ids):
            ids = [int(i) for i in ids if i >= 0]
            first, total = number, number + len(ids)
            common = {"p": total, "q": previous_total, "f": first, "l": total - 1, "n": len(ids)}
            for slot, sample in enumerate(ids):
                yield Row(number, "sample", step, slot, sample, dict(common, r=number, d=sample + 2))
                number += 1
            yield Row(number, "total", step, places=dict(common, r=number))
            previous_total = number
            number += 1
        yield Row(number, "final", len(self.sample_ids), places={"r": number, "q": previous_total})

    @property
    def last_row(self):
        return HEADER_ROWS + sum(int((ids >= 0).sum()) + 1 for ids in self.sample_ids) + 1

    def total_row(self, step):
        """Row number of the Σ row of trace step `step` (index within this layout)."""
        if getattr(self, "_total_rows", None) is None:   # Σ rows after the samples of every step
            self._total_rows = HEADER_ROWS + np.cumsum((np.asarray(self.sample_ids) >= 0).sum(axis=1) + 1)
        return int(self._total_rows[step])


def _column_ranges(letters):
    """The cells {r} of the given columns, as ranges of adjacent columns (the arguments of ‖g‖'s SUMSQ)."""
    ranges, start, end = [], None, None
    for letter in letters:
        index = column_index_from_string(letter)
        if start is not None and index == end + 1:
            end = index
            continue
        if start is not None:
            ranges.append((start, end))
        start = end = index
    ranges.append((start, end))
    cells = [f"{get_column_letter(a)}{{r}}" if a == b else f"{get_column_letter(a)}{{r}}:{get_column_letter(b)}{{r}}"
             for a, b in ranges]
    return cells


def input_letter(scenario, i):
    """Data sheet column of the input the network sees: the raw one, or its normalised copy."""
    if scenario.normalize == "none":
        return data_letter(i)
    return data_letter(scenario.widths[0] + scenario.widths[-1] + i)


def data_letter(index):
    """Data sheet column of input/target `index` (column A holds the sample id)."""
    return get_column_letter(index + 2)


def settings_names(scenario):
    """Defined names of the hyper-parameter cells: (owner, parameter[, layer]) -> name."""
    names = {}
    for param, value in scenario.optimizer_params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # nesterov and the schedule's name shape the formulas, they are not cells
        if param == "lr":
            names[("optimizer", param)] = "learning_rate"
        elif param in ("gamma", "step_size"):
            names[("optimizer", param)] = f"schedule_{param}"
        else:
            names[("optimizer", param)] = f"opt_{param}"
    for l, layer in enumerate(scenario.layers, start=1):
        for param in activations.get(layer.activation).params:
            prefix = {"slope": "leaky_slope", "alpha": "elu_alpha"}[param]
            names[(layer.activation, param, l)] = f"{prefix}_{l}"
        if layer.kind == "batchnorm":
            names[("batchnorm", "eps", l)] = f"bn_eps_{l}"
    return names


def settings_values(scenario):
    """(defined name, value, meaning) for each hyper-parameter cell."""
    entries = []
    names = settings_names(scenario)
    for param, value in scenario.optimizer_params.items():
        if ("optimizer", param) in names:
            entries.append((names[("optimizer", param)], value, f"optimizer {scenario.optimizer}: {param}"))
    for l, layer in enumerate(scenario.layers, start=1):
        for param, value in layer.activation_params.items():
            entries.append((names[(layer.activation, param, l)], value, f"layer {l} {layer.activation}: {param}"))
    for l, layer in enumerate(scenario.layers, start=1):
        if layer.kind == "batchnorm":
            entries.append((names[("batchnorm", "eps", l)], layer.eps, f"layer {l} batchnorm: eps"))
    for key in ("clip_norm", "clip_value"):
        if getattr(scenario, key) is not None:
            entries.append((key, getattr(scenario, key), f"training: gradient {key.replace('_', ' by ')}"))
    for key, value in scenario.thresholds.items():
        entries.append((f"threshold_{key}", value, f"diagnosis: {key} threshold (Diagnosis sheet)"))
    return entries
