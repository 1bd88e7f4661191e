"""The shapes of a layer kind's excel face: the column families it declares for the Trace sheet
(ExcelColumns) and what the layout tells it about the layer (ExcelLayer). Formulas name cells by
key through `x.ref(key, place)`; the layout assigns the letters once every column is declared."""
from dataclasses import dataclass
from typing import Callable

@dataclass(frozen=True)
class ExcelColumns:
    """A family of Trace sheet columns a layer kind declares for layer l (its excel face): one per
    unit j, key (quantity, l, j) and header symbol with j and l (u₀⁽¹⁾); or, with per_unit False, one
    for the layer, key (quantity, l) and header symbol⁽ˡ⁾ (a per-sample scalar: layernorm's μ); the
    functions below are then called with j = 0. With `time` t set, the family holds the units of one
    time step t of an unrolled recurrent cell: key (quantity, l, (t, j)), header u₀⁽¹⁾(t=3). The columns of one family are adjacent, in j order.
    `meaning` is a text or a function of j; `sample` / `total` are functions of j giving the formula
    body in the sample rows / the Σ rows (None: blank there)."""

    group: str
    quantity: str
    symbol: str
    meaning: object
    sample: object = None
    total: object = None
    per_unit: bool = True
    time: int | None = None   # a family of time step t (recurrent cells): key (quantity, l, (t, j)),
                              # header u₀⁽¹⁾(t=3); the functions above are still functions of j


@dataclass(frozen=True)
class ExcelLayer:
    """What a kind's excel face is given about layer l of the Trace sheet (built by the layout)."""

    l: int
    units: int
    fan_in: int             # the width of the layer below
    ref: Callable           # (key, place="r") -> the cell of the column of `key` in row {place}
    setting: Callable       # parameter -> the defined name of the layer's Settings cell (excel_settings)
    unit: Callable          # (symbol, layer, j) -> the symbol in header notation: u₀⁽¹⁾
    steps: int = 0          # time steps T of a sequence scenario (0: the data has no time axis)
    below_key: Callable = None   # i -> the key of the layer's input i, when the layer below is not read as a⁽ˡ⁻¹⁾ᵢ
    above: Callable = None  # (j, t) -> (formula body, text) of the error ∂E/∂a⁽ˡ⁾ⱼ the layer above passes
                            # down (at time step t; None where nothing arrives); kinds with their own error columns
    activation_params: dict = None   # the defined names of the layer's activation parameters (Settings cells)
    span: Callable = None   # (first key, last key, place="r") -> the range of adjacent cells from the one to the
                            # other, where the layout has them adjacent (the matrix layout: a row's units, W's
                            # column j or row i in the parameter block); None (the column layout): kinds write
                            # their sums term by term, left to right. With it they write the range form
                            # (MMULT, SUMPRODUCT), of a fixed length whatever the fan-in

    def below(self, i):
        """The key of a⁽ˡ⁻¹⁾ᵢ, the layer's input i: the network's input x for layer 1 (a recurrent layer
        below is read at its last time step, h⁽ˡ⁻¹⁾ᵢ at t = T−1: `below_key`)."""
        if self.below_key is not None:
            return self.below_key(i)
        return ("x", 0, i) if self.l == 1 else ("a", self.l - 1, i)
