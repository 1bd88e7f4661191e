"""The Excel face of every recurrent cell, once: the Trace sheet unrolled through time (the pieces
of every cell's formulas, the error through time, the gradients as sums over time). A cell declares
its gates, its delta keys and its step columns (excel_step_forward, excel_step_backward)."""
from tracer.layers.excel import ExcelColumns


class RecurrentExcel:
    """The Excel face of a recurrent cell, unrolled through time (mixed into the rnn, lstm and gru kinds).

    Every sample row holds the whole sequence: per time step t = 0 … T−1 (time outer, unit inner) the
    forward columns of the cell (`excel_step_forward`), then, after the loss, per time step the
    backward ones (`excel_step_backward`): the error through time e_t = ∂E/∂h_t as its own columns
    (from above + from t+1) and the deltas. Keys (quantity, l, (t, j)), as the Trace keeps them.
    The formulas write the engine's sums term by term in its order (see the design note above):
      u_t[m] = x_t[0]·W[0,m] + … + b[m] + h_{t−1}[0]·Wh[0,m] + … + bh[m]
    with h₋₁ = 0 written as the number 0 in the t = 0 terms (0·Wh[k,m], as the engine sums them:
    a non-finite Wh gives an error there too), and the gradients summed over time from t = 0:
      ∂E/∂W[i,m] = Σ_t x_t[i]·δx_t[m]        ∂E/∂Wh[k,m] = Σ_t h_{t−1}[k]·δh_t[m]   (t = 0: 0·δh_0[m])
      ∂E/∂b[m]   = Σ_t δx_t[m]               ∂E/∂bh[m]   = Σ_t δh_t[m]
    δx_t[m] / δh_t[m] are the delta column m = k·U + j of gate k sees (`excel_delta_x`/`excel_delta_h`).
    The error a recurrent layer above passes down at time t is Σ_m W[i,m]·δx_t[m] (its dx_t[i]).
    """


    def excel_unrolled(self, layer):
        return True

    def excel_output(self, layer, l, i, steps):
        """A dense layer above reads the last hidden state h⁽ˡ⁾ᵢ at t = T−1."""
        return ("h", l, (steps - 1, i))

    # ---- the pieces every cell's formulas use

    @staticmethod
    def excel_input(x, t, i):
        """The key of the cell's input i at time t: xᵢ on layer 1, the hidden state of the recurrent layer below."""
        return ("x", 0, (t, i)) if x.l == 1 else ("h", x.l - 1, (t, i))

    @staticmethod
    def excel_timed(x, symbol, l, j, t):
        """A unit's symbol at time step t in header notation: h₀⁽¹⁾(t=3)."""
        return f"{x.unit(symbol, l, j)}(t={t})"

    def excel_input_symbol(self, x, i, t):
        """The cell's input i at time t in header notation: xᵢ(t=3), or h of the layer below (t a
        number, or a letter: xᵢ(t))."""
        when = f"t={t}" if isinstance(t, int) else t
        return f"x{i}({when})" if x.l == 1 else f"{x.unit('h', x.l - 1, i)}({when})"

    def excel_column(self, x, gate, j):
        """The column m = k·U + j of W, Wh, b, bh of gate `gate` (its index k) and unit j."""
        return self.gates.index(gate) * x.units + j

    def excel_previous(self, x, quantity, t, k):
        """The cell of quantity (h, c) at t − 1 for unit k: the number 0 at t = 0 (h₋₁ = c₋₁ = 0)."""
        return "0" if t == 0 else x.ref((quantity, x.l, (t - 1, k)))

    def excel_input_terms(self, x, t, m):
        """x_t·W[:,m] + b[m] as its terms: 'x0*W0m+x1*W1m+b_m' (the engine's input sum, left to right)."""
        l = x.l
        terms = [f"{x.ref(self.excel_input(x, t, i))}*{x.ref(('W', l, (i, m)), 'p')}" for i in range(x.fan_in)]
        return "+".join(terms + [x.ref(("b", l, (m,)), "p")])

    def excel_recurrent_terms(self, x, t, m):
        """h_{t−1}·Wh[:,m] + bh[m] as its terms (h₋₁ = 0 written as 0 at t = 0)."""
        l = x.l
        terms = [f"{self.excel_previous(x, 'h', t, k)}*{x.ref(('Wh', l, (k, m)), 'p')}" for k in range(x.units)]
        return "+".join(terms + [x.ref(("bh", l, (m,)), "p")])

    def excel_preactivation(self, x, t, gate, j):
        """u_t of column m: the input sum then the recurrent sum, one running sum as the engine's."""
        m = self.excel_column(x, gate, j)
        return f"{self.excel_input_terms(x, t, m)}+{self.excel_recurrent_terms(x, t, m)}"

    def excel_u_meaning(self, x, symbol, gate, t):
        """The text of a pre-activation u_t = x_t·W + b + h_{t−1}·Wh + bh for gate `gate`."""
        l, block = x.l, (f" (gate {gate}: columns m = {self.gates.index(gate)}·U + j)" if gate else "")

        def meaning(j):
            m = self.excel_column(x, gate, j)
            below = self.excel_input_symbol(x, "ᵢ", t)
            h_prev = "h₋₁" if t == 0 else f"{self.excel_timed(x, 'h', l, 'ₖ', t - 1)}"
            return (f"{self.excel_timed(x, symbol, l, j, t)} = Σᵢ {below}·W{l}[i,{m}] + b{l}[{m}] + "
                    f"Σₖ {h_prev}·Wh{l}[k,{m}] + bh{l}[{m}]{block}" + (" (h₋₁ = 0: written 0)" if t == 0 else ""))
        return meaning

    def excel_back_terms(self, x, t, k):
        """Σ_m Wh[k,m]·δh_{t+1}[m], left to right over the columns m (gate by gate): the error that
        reaches h_t[k] from step t+1 through Wh."""
        l, U = x.l, x.units
        terms = []
        for gate in self.gates:
            for j in range(U):
                m = self.excel_column(x, gate, j)
                terms.append(f"{x.ref(self.excel_delta_h(x, gate, t + 1, j))}*{x.ref(('Wh', l, (k, m)), 'p')}")
        return "+".join(terms)

    def excel_error_columns(self, x, t, carried):
        """The first columns of every recurrent kind's backward step t: e→ (below the last step: the
        error reaching h_t from step t+1, excel_back_terms; `carried(j)` states its sum in the header
        comment) and e_t = ∂E/∂h_t (excel_error, with e→ where there is one)."""
        l, group, last = x.l, f"layer {x.l} backward, t = {t}", t == x.steps - 1
        columns = []
        if not last:
            columns.append(ExcelColumns(
                group, "e_time", "e→", lambda j: f"the error reaching h_t from step t+1: {carried(j)}",
                sample=lambda j: self.excel_back_terms(x, t, j), time=t))
        through = (lambda j: None) if last else (lambda j: x.ref(("e_time", l, (t, j))))  # noqa: E731
        columns.append(ExcelColumns(group, "e", "e", lambda j: "e_t = ∂E/∂h_t: " + self.excel_error(x, t, j, through(j))[1],
                                    sample=lambda j: self.excel_error(x, t, j, through(j))[0], time=t))
        return columns

    def excel_error(self, x, t, j, through_time):
        """(formula body, text) of e_t = ∂E/∂h_t: what arrives from above (a dense layer above: at
        t = T−1 only; a recurrent layer above: at every t) + `through_time` (the cell of the part
        from t+1; None at t = T−1)."""
        from_above = x.above(j, t) if x.above is not None else None
        if from_above is None and through_time is None:
            raise ValueError(f"layer {x.l}: nothing reaches h at the last time step")
        if from_above is None:
            return through_time, "nothing from above at this time step: e_t = the part from t+1"
        body, text = from_above
        if through_time is None:
            return body, f"from above: {text} (last time step: nothing from t+1)"
        return f"{body}+{through_time}", f"from above: {text}, + the part from t+1"

    def excel_error_down_time(self, layer, x, j, t):
        """(formula body, text) of the error passed to unit j of the recurrent layer below at time t:
        dx_t[j] = Σ_m W[j,m]·δx_t[m], left to right over m (gate by gate)."""
        l, terms = x.l, []
        for gate in self.gates:
            for k in range(x.units):
                m = self.excel_column(x, gate, k)
                terms.append(f"{x.ref(self.excel_delta_x(x, gate, t, k))}*{x.ref(('W', l, (j, m)), 'p')}")
        return "+".join(terms), f"Σₘ W{l}[{j},m]·δₘ⁽{l}⁾(t={t})"

    def excel_error_down(self, layer, x, j):
        raise NotImplementedError("a recurrent layer passes its error down per time step (excel_error_down_time)")

    # ---- the deltas each parameter column sees (gate k of column m = k·U + j)

    def excel_delta_x(self, x, gate, t, j):
        """The key of the delta the input-side column (W[:, m], b[m]) of gate `gate`, unit j sees at t."""
        return (self.delta_key(gate), x.l, (t, j))

    def excel_delta_h(self, x, gate, t, j):
        """The key of the delta the recurrent column (Wh[:, m], bh[m]) of gate `gate`, unit j sees at t."""
        return (self.delta_key(gate, recurrent_side=True), x.l, (t, j))

    # ---- the layout's calls

    def excel_forward(self, layer, x):
        """Every forward column, time step by time step (t outer): the cell's `excel_step_forward`."""
        return [columns for t in range(x.steps) for columns in self.excel_step_forward(layer, x, t)]

    def excel_backward(self, layer, x):
        """Every backward column, time step by time step: the cell's `excel_step_backward`."""
        return [columns for t in range(x.steps) for columns in self.excel_step_backward(layer, x, t)]

    def excel_gradient(self, layer, x, which, index):
        """(formula body, text) of the per-sample gradient of W, b, Wh or bh summed over time from t = 0."""
        l, T, U = x.l, x.steps, x.units
        m = index[-1]
        gate, j = self.gates[m // U], m % U
        if which in ("W", "b"):
            delta = [x.ref(self.excel_delta_x(x, gate, t, j)) for t in range(T)]
        else:
            delta = [x.ref(self.excel_delta_h(x, gate, t, j)) for t in range(T)]
        δ = "δ" + (f"_{gate}" if gate else "")
        if which == "W":
            i = index[0]
            terms = [f"{x.ref(self.excel_input(x, t, i))}*{delta[t]}" for t in range(T)]
            text = f"Σₜ {self.excel_input_symbol(x, i, 't')}·{x.unit(δ, l, j)}(t) (t = 0 … {T - 1})"
        elif which == "Wh":
            k = index[0]
            terms = [f"{self.excel_previous(x, 'h', t, k)}*{delta[t]}" for t in range(T)]
            text = f"Σₜ {x.unit('h', l, k)}(t−1)·{x.unit(δ, l, j)}(t) (h₋₁ = 0; t = 0 … {T - 1})"
        else:
            terms = delta
            text = f"Σₜ {x.unit(δ, l, j)}(t) (t = 0 … {T - 1})"
        return "+".join(terms), text
