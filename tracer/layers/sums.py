"""The order of the big sums of a layer (SumOrder): left to right, a spreadsheet formula's bits
(IN_ORDER, sum_in_order, weighted_sum, back_sum, sample_product_sum), or numpy's matrix products
(MATMUL). The engine hands the run's order to the kinds' numpy faces (the `sums` argument)."""
import numpy as np

SUM_BLOCK_CELLS = 1 << 17   # values per block of terms sum_in_order adds at once (1 MiB: in cache)
LOOP_TERMS = 8              # up to this many terms, weighted_sum and back_sum add them one numpy call at a time


def sum_in_order(count, shape, fill, initial=-0.0):
    """((initial + t₀) + t₁) + … + t_{count−1}: `count` arrays of `shape` added one after another,
    in index order, each addition rounded once, as a spreadsheet adds =t₀+t₁+… left to right.
    `fill(out, start, stop)` writes the terms start..stop−1 into `out` (shape (stop − start, *shape)).
    initial −0.0 (the default) starts the sum at t₀ exactly (−0.0 + x = x for every double x);
    0.0 gives the bits of np.sum(terms, axis=0), which starts from 0.0 (0.0 + −0.0 = 0.0).

    The terms come in blocks of about SUM_BLOCK_CELLS values (memory bounded whatever `count`), each
    added by np.add.reduce over the leading axis of a C-contiguous (rows, n) block whose first row is
    the running total: numpy adds such rows one after another, element by element, as long as
    n ≥ 2 (a run of one value would be summed pairwise: a padding column keeps n ≥ 2). The bits
    are those of the plain loop; tests/test_layers.py checks it on every shape class, −0.0, inf, NaN."""
    size = int(np.prod(shape, dtype=np.int64))
    width = max(size, 2)
    rows = max(1, min(count, SUM_BLOCK_CELLS // width))
    if rows == count:                   # one block, no running total
        block = np.empty((count, width))
        block[:, size:] = 0.0
        fill(block[:, :size].reshape((count,) + tuple(shape)), 0, count)
        return np.add.reduce(block, axis=0, initial=float(initial))[:size].reshape(shape)
    block = np.empty((rows + 1, width))
    block[:, size:] = 0.0
    total = np.full(width, float(initial))
    for start in range(0, count, rows):
        stop = min(count, start + rows)
        block[0] = total
        fill(block[1:stop - start + 1, :size].reshape((stop - start,) + tuple(shape)), start, stop)
        np.add.reduce(block[:stop - start + 1], axis=0, initial=-0.0, out=total)
    return total[:size].reshape(shape)


def weighted_sum(a, W, b):
    """u_j = Σ_i a_i W[i,j] + b_j, summed left to right for every sample row of `a`:
    ((a₀W₀ⱼ + a₁W₁ⱼ) + …) + bⱼ, the products rounded one by one (see sum_in_order)."""
    if W.shape[0] <= LOOP_TERMS:
        total = a[:, 0:1] * W[0]
        for i in range(1, W.shape[0]):
            total = total + a[:, i:i + 1] * W[i]
        return total + b
    inputs = np.ascontiguousarray(a.T)

    def products(out, start, stop):     # out[i − start, s, j] = a[s, i]·W[i, j]
        np.multiply(inputs[start:stop, :, None], W[start:stop, None, :], out=out)
    return sum_in_order(W.shape[0], (a.shape[0], W.shape[1]), products) + b


def back_sum(delta_next, W_next):
    """Σ_k W_next[j,k] δ_k, summed left to right over k, for every sample row (see sum_in_order)."""
    if W_next.shape[1] <= LOOP_TERMS:
        total = delta_next[:, 0:1] * W_next[:, 0]
        for k in range(1, W_next.shape[1]):
            total = total + delta_next[:, k:k + 1] * W_next[:, k]
        return total
    deltas, weights = np.ascontiguousarray(delta_next.T), W_next.T

    def products(out, start, stop):     # out[k − start, s, j] = δ[s, k]·W_next[j, k]
        np.multiply(deltas[start:stop, :, None], weights[start:stop, None, :], out=out)
    return sum_in_order(W_next.shape[1], (delta_next.shape[0], W_next.shape[0]), products)


def sample_product_sum(below, delta):
    """G[i,j] = Σ_s below[s,i]·delta[s,j], the products added in sample order from 0.0, the bits of
    np.add.reduce(below[:, :, None] * delta[:, None, :], axis=0), without holding the
    B × fan_in × units products at once when they are many (sum_in_order, over blocks of samples)."""
    samples, fan_in = below.shape
    units = delta.shape[1]
    if fan_in * units < 2 or samples * fan_in * units <= SUM_BLOCK_CELLS:
        return np.add.reduce(below[:, :, None] * delta[:, None, :], axis=0)

    def products(out, start, stop):     # out[s − start, j, i] = δ_sj·a_si (transposed: long rows)
        np.multiply(delta[start:stop, :, None], below[start:stop, None, :], out=out)
    return sum_in_order(samples, (units, fan_in), products, initial=0.0).T.copy()


class SumOrder:
    """The order in which the engine adds the terms of the big sums of a dense layer: the weighted
    sum u = Σᵢ aᵢ·W[i,j] + bⱼ, the error passed down Σₖ W[j,k]·δₖ, and the batch gradient
    Σ_s a_si·δ_sj. One object per order (SUM_ORDERS); the engine hands the run's to the layer kinds'
    numpy faces (forward, error_down, batch_gradients: the `sums` argument)."""

    name = ""

    def weighted_sum(self, a, W, b):
        """u = a @ W + b for every sample row of `a` (B × fan_in), W fan_in × units."""
        raise NotImplementedError

    def back_sum(self, delta, W):
        """e[s,j] = Σₖ W[j,k]·δ[s,k] for every sample row of δ (B × units)."""
        raise NotImplementedError

    def sample_product_sum(self, below, delta):
        """G[i,j] = Σ_s below[s,i]·δ[s,j] over the samples (the batch gradient's Σ)."""
        raise NotImplementedError

    def __repr__(self):
        return f"<sum order {self.name}>"


class InOrder(SumOrder):
    """Every sum adds its terms one after another, left to right (u over i, the error over k, the
    batch gradient over the samples from 0.0), each addition rounded once: the exact bits of a
    spreadsheet's `=t₀+t₁+…` formula, so that the engine and the spreadsheet take the same branch
    (a ReLU at u exactly 0). numpy multiplies and np.add.reduce over blocks (sum_in_order)."""

    name = "in_order"

    def weighted_sum(self, a, W, b):
        return weighted_sum(a, W, b)

    def back_sum(self, delta, W):
        return back_sum(delta, W)

    def sample_product_sum(self, below, delta):
        return sample_product_sum(below, delta)


class Matmul(SumOrder):
    """Every sum is a numpy matrix product (`@`, BLAS): u = a @ W + b, e = δ @ Wᵀ, G = aᵀ @ δ. BLAS
    adds the terms in its own blocked order (with fused multiply-adds), so the results differ from
    the in-order sums in the last bits (a relative difference of a few 1e-16 per term's size), and
    are 10–30× faster on a 784-32-10 net. For workbooks whose sums are not in order anyway: a
    spreadsheet's MMULT and SUMPRODUCT (the matrix layout) add in the client's own order
    (LibreOffice: compensated Kahan–Neumaier summation), so the in-order bits buy no agreement there.
    BLAS multiplies every term (0·inf and 0·NaN are NaN, as in the in-order sums: a non-finite
    input makes the sums that read it non-finite; tests/test_layers.py checks it)."""

    name = "matmul"

    def weighted_sum(self, a, W, b):
        return a @ W + b

    def back_sum(self, delta, W):
        return delta @ W.T

    def sample_product_sum(self, below, delta):
        return below.T @ delta


IN_ORDER, MATMUL = InOrder(), Matmul()
SUM_ORDERS = {order.name: order for order in (IN_ORDER, MATMUL)}


def sum_order(name):
    """The SumOrder named `name` ("in_order", "matmul"; a SumOrder is returned as it is);
    ValueError naming the known orders."""
    if isinstance(name, SumOrder):
        return name
    try:
        return SUM_ORDERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sum order {name!r} (known: {', '.join(SUM_ORDERS)})") from None
