"""dense: u = Σ_i a⁽ˡ⁻¹⁾_i W[i,j] + b_j, with an optional residual skip (`residual = true`).

  forward   u⁽ˡ⁾_j = Σ_i a⁽ˡ⁻¹⁾_i W_l[i,j] + b_l[j]
  combine   a⁽ˡ⁾_j = h⁽ˡ⁾_j, or h⁽ˡ⁾_j + a⁽ˡ⁻¹⁾_j with the residual skip (h = f(u))
  error     ∂E/∂a⁽ˡ⁻¹⁾_j = Σ_k W_l[j,k] δ⁽ˡ⁾_k (+ e⁽ˡ⁾_j with the residual skip: the skip passes e on)
  gradients ∂E/∂W_l[i,j] = a⁽ˡ⁻¹⁾_i δ⁽ˡ⁾_j,  ∂E/∂b_l[j] = δ⁽ˡ⁾_j   (per sample)
The three sums (over i, over k, over the batch) are added in the run's SumOrder (sums.py): left to
right as a spreadsheet's formula does (in_order), or as numpy matrix products (matmul).
"""
import numpy as np
from tracer.maths.symbolic import sympy as sp

from tracer.maths import initialisers as inits, notation
from tracer.errors import ScenarioError
from tracer.maths.procedures import reduce_samples
from tracer.layers.excel import ExcelColumns
from tracer.layers.parsing import Layer, parse_activation, parse_bias, parse_init
from tracer.layers.protocol import LayerKind
from tracer.layers.quantities import COMMON, E, H
from tracer.layers.sums import IN_ORDER


class Dense(LayerKind):
    name = "dense"
    description = "u = Σᵢ a⁽ˡ⁻¹⁾ᵢ·W[i,j] + b[j] (optionally with a residual skip a = f(u) + a⁽ˡ⁻¹⁾)"
    keys = ("units", "activation", "slope", "alpha", "init", "low", "high", "mean", "std", "value", "weights",
            "bias", "bias_init", "bias_low", "bias_high", "bias_mean", "bias_std", "bias_value", "train_bias",
            "residual", "kind")
    param_names = ("W", "b")
    weighted = True

    def skips(self, layer):
        """The residual skip: a = f(u) + a⁽ˡ⁻¹⁾."""
        return layer.residual

    # ------------------------------------------------------------ scenario face

    def parse(self, v, raw, key, fan_in, is_output):
        """units (required), activation (default sigmoid) and its parameters, init (default uniform) or
        explicit weights (fan_in × units), bias values or bias_init (default constant 0), train_bias,
        residual (hidden layers with as many units as the layer below)."""
        v.require(raw, "units", key)
        units = v.integer(raw, "units", key, minimum=1)
        activation, activation_params = parse_activation(v, raw, key, units, is_output, default="sigmoid")
        init_name, init_params = parse_init(v, raw, key, "", default="uniform")
        weights = None
        if init_name == "explicit":
            v.require(raw, "weights", f"{key} (init = \"explicit\")")
            weights = v.matrix(raw, "weights", key)
            if weights.shape != (fan_in, units):
                raise ScenarioError(
                    v.source, f"{key}.weights",
                    f"shape {weights.shape[0]}×{weights.shape[1]} does not match (fan_in, units) = ({fan_in}, {units})",
                )
        elif "weights" in raw:
            raise ScenarioError(v.source, f"{key}.weights", "explicit weights need init = \"explicit\"")
        def read_bias():
            bias = v.vector(raw, "bias", key)
            if bias.shape != (units,):
                raise ScenarioError(v.source, f"{key}.bias", f"{bias.shape[0]} values for {units} units")
            return bias
        bias, bias_name, bias_params = parse_bias(v, raw, key, read_bias)
        return Layer(
            units=units, activation=activation, activation_params=activation_params, init=init_name,
            init_params=init_params, weights=weights, bias_init=bias_name, bias_params=bias_params, bias=bias,
            train_bias=v.boolean(raw, "train_bias", key, default=True),
            residual=self._residual(v, raw, key, fan_in, units, is_output), kind=self.name,
        )

    def refuse_key(self, v, key, name, kinds_with_it):
        """A key of other kinds (eps) on a dense layer: name the kinds it applies to."""
        raise ScenarioError(v.source, f"{key}.{name}", f"'{name}' applies to kind = "
                            + " or ".join(f'"{k}"' for k in kinds_with_it) + " layers")

    @staticmethod
    def _residual(v, raw, key, fan_in, units, is_output):
        residual = v.boolean(raw, "residual", key, default=False)
        if residual and is_output:
            raise ScenarioError(v.source, f"{key}.residual", "a residual connection is for hidden layers, not the output layer")
        if residual and fan_in != units:
            raise ScenarioError(v.source, f"{key}.residual", f"needs as many units as the layer below ({fan_in}), not {units}")
        return residual

    def initial_parameters(self, layer, fan_in, rng):
        """W (fan_in × units) then b (units), each explicit or drawn from `rng` by its initialiser."""
        if layer.init == "explicit":
            W = np.array(layer.weights, dtype=float)
        else:
            sampler = inits.INITS[layer.init][1]
            W = np.asarray(sampler(rng, (fan_in, layer.units), fan_in, layer.units, layer.init_params), dtype=float)
        if layer.bias_init == "explicit":
            b = np.array(layer.bias, dtype=float)
        else:
            sampler = inits.INITS[layer.bias_init][1]
            b = np.asarray(sampler(rng, (layer.units,), fan_in, layer.units, layer.bias_params), dtype=float)
        return W, b

    def describe(self, layer):
        """"3 relu" (dense is the default kind, left unnamed)."""
        return f"{layer.units} {layer.activation}"

    # ------------------------------------------------------------ records face

    def records(self, layer):
        """u, a, slope, delta; with the residual skip also h = f(u) and e = ∂E/∂a (they differ from a and
        from the error δ/f' only there)."""
        return COMMON + ((H, E) if layer.residual else ())

    # ------------------------------------------------------------ numpy face

    def forward(self, layer, below, W, b, sums=IN_ORDER):
        """u_j = Σ_i below_i W[i,j] + b_j (in the order `sums`); no record of its own."""
        return sums.weighted_sum(below, W, b), {}

    def combine(self, layer, h, below):
        """a = h + a⁽ˡ⁻¹⁾ with the residual skip, a = h otherwise."""
        return h + below if layer.residual else h

    def error_down(self, layer, record, delta, W, error_here, sums=IN_ORDER):
        """∂E/∂a⁽ˡ⁻¹⁾_j = Σ_k W[j,k] δ_k (in the order `sums`), + e⁽ˡ⁾_j with the residual skip."""
        error = sums.back_sum(delta, W)
        return error + error_here if layer.residual else error

    def gradients(self, layer, record, below, delta):
        """∂E/∂W[i,j] = a⁽ˡ⁻¹⁾_i δ_j (B × fan_in × units), ∂E/∂b_j = δ_j, per sample."""
        return below[:, :, None] * delta[:, None, :], delta

    def batch_gradients(self, layer, record, below, delta, reduction, sums=IN_ORDER):
        """∂E/∂W[i,j] = Σ_s a⁽ˡ⁻¹⁾_si δ_sj (÷ B for `mean`), ∂E/∂b_j = Σ_s δ_sj (in sample order).
        W's sum in the order `sums`: in_order adds the per-sample products in sample order from
        0.0, the bits of reduce_samples(gradients(...)), without holding the B × fan_in × units
        products at once (base.sample_product_sum); matmul is aᵀ @ δ."""
        total = sums.sample_product_sum(below, delta)
        return (total / below.shape[0] if reduction == "mean" else total), reduce_samples(delta, reduction)

    derives_sample_gradients = True

    def gradient_factor(self, layer, l, i, j):
        """The layer's input i: xᵢ on layer 1, a⁽ˡ⁻¹⁾ᵢ above it (∂E/∂W[i,j] = a⁽ˡ⁻¹⁾ᵢ·δⱼ)."""
        return ("x", 0, i) if l == 1 else ("a", l - 1, i)

    # ------------------------------------------------------------ excel face

    def excel_forward(self, layer, x):
        """u⁽ˡ⁾_j = Σᵢ a⁽ˡ⁻¹⁾ᵢ·W[i,j] + b[j], left to right, with W and b of the step's Σ row (with the
        layout's ranges, `x.span`: MMULT(a⁽ˡ⁻¹⁾ row, W column j) + b[j])."""
        l = x.l

        def weighted_sum(j):
            if x.span is not None:   # the range form: the row of a⁽ˡ⁻¹⁾ times W's column j
                return (f"MMULT({x.span(x.below(0), x.below(x.fan_in - 1))},"
                        f"{x.span(('W', l, (0, j)), ('W', l, (x.fan_in - 1, j)), 'p')})+{x.ref(('b', l, (j,)), 'p')}")
            terms = "+".join(f"{x.ref(x.below(i))}*{x.ref(('W', l, (i, j)), 'p')}" for i in range(x.fan_in))
            return f"{terms}+{x.ref(('b', l, (j,)), 'p')}"
        return [ExcelColumns(f"layer {l} forward", "u", "u",
                             lambda j: f"{x.unit('u', l, j)} = Σᵢ {x.unit('a', l - 1, 'ᵢ')}·W{l}[i,{j}] + b{l}[{j}]",
                             sample=weighted_sum)]

    def activated(self, layer):
        """h = f(u) with the residual skip (a follows), a otherwise."""
        return "h" if layer.residual else "a"

    def excel_combine(self, layer, x):
        """With the residual skip: a⁽ˡ⁾_j = h⁽ˡ⁾_j + a⁽ˡ⁻¹⁾_j."""
        if not layer.residual:
            return ()
        l = x.l
        return [ExcelColumns(f"layer {l} forward", "a", "a",
                             lambda j: f"{x.unit('a', l, j)} = {x.unit('h', l, j)} + {x.unit('a', l - 1, j)} (residual connection)",
                             sample=lambda j: f"{x.ref(('h', l, j))}+{x.ref(x.below(j))}")]

    def excel_error_down(self, layer, x, j):
        """Σₖ W[j,k]·δₖ (left to right; with the layout's ranges SUMPRODUCT(W row j, δ row)), + e⁽ˡ⁾_j with
        the residual skip (the skip passes e on)."""
        l = x.l
        if x.span is not None:
            body = (f"SUMPRODUCT({x.span(('W', l, (j, 0)), ('W', l, (j, x.units - 1)), 'p')},"
                    f"{x.span(('delta', l, 0), ('delta', l, x.units - 1))})")
        else:
            body = "+".join(f"{x.ref(('W', l, (j, k)), 'p')}*{x.ref(('delta', l, k))}" for k in range(x.units))
        text = f"Σₖ W{l}[{j},k]·δₖ{notation.layer(l)}"
        if layer.residual:
            body, text = f"{body}+{x.ref(('e', l, j))}", f"{text} + {notation.unit('e', l, j)}"
        return body, text

    def excel_error_columns(self, layer):
        """A residual layer's e is read twice (its δ and the error it passes down): it gets columns."""
        return layer.residual

    def excel_factor(self, layer, x, i, j):
        """② of ∂E/∂W[i,j] = a⁽ˡ⁻¹⁾ᵢ·δⱼ: the layer's input i."""
        return x.below(i), f"a⁽{x.l - 1}⁾{i}"

    # ------------------------------------------------------------ chain face

    def chain_input(self, layer, l, i, j, names, trace, step, slot):
        """Factor ② of ∂E/∂W_l[i,j]: the input xᵢ (layer 1) or the activation a⁽ˡ⁻¹⁾ᵢ from below."""
        if l == 1:
            sample = trace.samples(step)[slot]
            return (names.plain(f"x{i}", f"x_{{{i}}}"), f"input {notation.sub('x', i)}",
                    float(trace.scenario.inputs[sample, i]))
        return (names.unit("a", l - 1, i), f"activation {notation.unit('a', l - 1, i)} from below",
                float(trace.a[l - 2][step, slot, i]))

    def chain_error_down(self, layer, l, j, names):
        """Σₖ W_l[j,k]·δ⁽ˡ⁾ₖ, + e⁽ˡ⁾ⱼ with the residual skip (the skip passes the error on)."""
        terms = [sp.Mul(names.weight(l, j, k), names.unit("δ", l, k), evaluate=False) for k in range(layer.units)]
        if layer.residual:
            terms.append(names.error(l, j))
        return f"error from above Σₖ W{l}[{j},k]·δₖ{notation.layer(l)}", sp.Add(*terms, evaluate=False)

    def dominant_path(self, layer):
        """Plain dense layers only: a skip adds a path that does not pass through W."""
        return not layer.residual

    # ------------------------------------------------------------ check face

    def check_u(self, layer, l, j, get):
        """u = Σᵢ a⁽ˡ⁻¹⁾ᵢ·W[i,j] + b[j], left to right."""
        fan_in = get.fan_in(l)
        total = get.below(l, 0) * get("W", l, (0, j))
        for i in range(1, fan_in):
            total = total + get.below(l, i) * get("W", l, (i, j))
        return total + get("b", l, (j,))

    def check_combine(self, layer, l, j, h, get):
        """a = h + a⁽ˡ⁻¹⁾ⱼ with the residual skip."""
        return h + get.below(l, j) if layer.residual else h

    def check_error_down(self, layer, l, j, get):
        """Σₖ W_l[j,k]·δ⁽ˡ⁾ₖ left to right, + e⁽ˡ⁾ⱼ with the residual skip."""
        back = get("W", l, (j, 0)) * get("delta", l, (0,))
        for k in range(1, layer.units):
            back = back + get("W", l, (j, k)) * get("delta", l, (k,))
        return back + get.error(l, j) if layer.residual else back

    def check_grad_W(self, layer, l, i, j, get):
        """∂E/∂W[i,j] = a⁽ˡ⁻¹⁾ᵢ·δⱼ."""
        return get.below(l, i) * get("delta", l, (j,))

    # ------------------------------------------------------------ diagnose face

    def diagnose_u(self, layer, l, trace, step, slot, j, below, below_name):
        """The first product aᵢ·Wᵢⱼ that overflows, or the weighted sum of finite products."""
        W, b = trace.W[l - 1][step], trace.b[l - 1][step]
        with np.errstate(all="ignore"):
            products = below[slot] * W[:, j]
        bad = np.argwhere(~np.isfinite(products))
        if bad.size:
            i = int(bad[0][0])
            return (f"the product {below_name}[{i}] × W{l}[{i},{j}] (inside u = Σᵢ aᵢ·Wᵢⱼ + bⱼ), which overflows",
                    [(f"{below_name}[{i}]", float(below[slot, i])), (f"W{l}[{i},{j}]", float(W[i, j]))])
        k = int(np.argmax(np.abs(products)))
        return ("the weighted sum u = Σᵢ aᵢ·Wᵢⱼ + bⱼ of finite products overflows",
                [(f"{below_name}[{k}]·W{l}[{k},{j}]", float(products[k])), (f"b{l}[{j}]", float(b[j]))])

    def diagnose_combine(self, layer, l, trace, step, slot, j, below, below_name):
        """The residual sum h + a⁽ˡ⁻¹⁾."""
        return "the residual sum h + a", [(f"h{l}[{j}]", float(trace.h[l - 1][step, slot, j])),
                                          (f"{below_name}[{j}]", float(below[slot, j]))]

    def diagnose_input(self, layer, l, trace, step, slot, i, j):
        """xᵢ or a⁽ˡ⁻¹⁾ᵢ."""
        if l == 1:
            return f"x[{i}]", float(trace.scenario.inputs[trace.samples(step)[slot], i])
        return f"a{l - 1}[{i}]", float(trace.a[l - 2][step, slot, i])

    def diagnose_error_down(self, layer, l, trace, step, slot, j):
        """The first product Wⱼₖ·δₖ that overflows, else the sum."""
        W, delta = trace.W[l - 1][step], trace.delta[l - 1][step, slot]
        with np.errstate(all="ignore"):
            products = W[j] * delta
        bad = np.argwhere(~np.isfinite(products))
        if bad.size:
            k = int(bad[0][0])
            return (f"the product W{l}[{j},{k}] × δ{l}[{k}] (inside e = Σₖ Wⱼₖ·δₖ), which overflows",
                    [(f"W{l}[{j},{k}]", float(W[j, k])), (f"δ{l}[{k}]", float(delta[k]))])
        return super().diagnose_error_down(layer, l, trace, step, slot, j)

    def diagnose_links(self, layer, l, trace, step, slot=None):
        """|W| (+ the identity of the residual skip), W on the edges."""
        W = trace.W[l - 1][step]
        links = np.abs(W)
        return (links + np.eye(*links.shape) if layer.residual else links), W
