"""Benchmark: what `tracer.watch` costs a PyTorch training loop while nothing fails.

The loop: a 784-32-10 net (Linear, ReLU, Linear; float32 by default, as practitioners train it,
--float64 for the trace's dtype), SGD, nn.CrossEntropyLoss, random inputs and labels served by a
shuffling DataLoader in batches of --batch. One timed run is --steps steps of that loop (forward,
loss, backward, optimizer.step, the loader's batches included); a watched run is the same loop
inside `with tracer.watch(model, optimizer, loss_fn, keep=--keep):` (its hooks copy the batch, the
parameters and the optimiser state of every step into the ring and check the loss, the gradients
and the updated parameters for inf/NaN). Plain and watched runs alternate in one process for
--pairs pairs (so a change of the machine's load moves both), each from the same initial weights;
per pair it prints the watched / plain ratio of the time per step, then the median ratio and the
ratio of the fastest runs (min watched / min plain: the least disturbed by other processes).
Last, the hooks alone (the model's, the loss's and optimizer.step's hooks called directly, step after
step, without the loop around them): their time per step over the plain loop's median step time,
the watch's share of a step measured without the noise of two whole runs.
Target: at most 1.10 (the watch at most 10% of the loop's own step time).

    python benchmarks/watch.py [--pairs 15] [--steps 100] [--batch 64] [--keep 50] [--threads 1] [--float64]
"""
import argparse
import statistics
import time

import torch
from torch import nn

import tracer


def _loader(batch, samples=6400, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, 784, generator=generator, dtype=dtype)
    y = torch.randint(0, 10, (samples,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed + 1))


def _loop(model, optimizer, loss_fn, loader, steps):
    """The user's loop: `steps` steps over the loader (epochs as needed)."""
    done = 0
    while done < steps:
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                return


def _timed(watched, initial, options):
    """Seconds per step of one run of the loop, watched or not, from the weights `initial`."""
    model = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)).to(initial[0].dtype)
    with torch.no_grad():
        for parameter, value in zip(model.parameters(), initial):
            parameter.copy_(value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    loader = _loader(options.batch, dtype=initial[0].dtype)
    start = time.perf_counter()
    if watched:
        with tracer.watch(model, optimizer, loss_fn, keep=options.keep) as w:
            _loop(model, optimizer, loss_fn, loader, options.steps)
        assert w.failure is None and w.steps == options.steps
    else:
        _loop(model, optimizer, loss_fn, loader, options.steps)
    return (time.perf_counter() - start) / options.steps


def _hooks_alone(initial, options, calls=2000):
    """Seconds per step of the watch's hooks called directly, as a loop's step would call them."""
    model = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)).to(initial[0].dtype)
    optimizer, loss_fn = torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss()
    batches = [(x, y) for (x, y), _ in zip(_loader(options.batch, dtype=initial[0].dtype), range(20))]
    loss = loss_fn(model(batches[0][0]), batches[0][1])
    w = tracer.watch(model, optimizer, loss_fn, keep=options.keep)
    start = time.perf_counter()
    for call in range(calls):
        x, y = batches[call % len(batches)]
        w._on_model(model, (x,))
        w._on_loss(loss_fn, (model, y), {}, loss)
        w._after_step(optimizer, (), {})
    return (time.perf_counter() - start) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--keep", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--float64", action="store_true")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    dtype = torch.float64 if options.float64 else torch.float32
    initial = [p.detach().clone() for p in nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)).to(dtype)
               .parameters()]
    _timed(False, initial, options)     # warm-up: allocator, loader workers' first batches
    _timed(True, initial, options)
    ratios, plains, watcheds = [], [], []
    print(f"784-32-10, {dtype}, batch {options.batch}, {options.steps} steps per run, keep {options.keep}, "
          f"{options.threads} thread(s)")
    for pair in range(options.pairs):
        plain, watched = _timed(False, initial, options), _timed(True, initial, options)
        ratios.append(watched / plain)
        plains.append(plain)
        watcheds.append(watched)
        print(f"pair {pair}: plain {plain * 1e3:.3f} ms/step, watched {watched * 1e3:.3f} ms/step, "
              f"ratio {ratios[-1]:.3f}")
    print(f"median ratio {statistics.median(ratios):.3f}, fastest runs {min(watcheds) * 1e3:.3f} / "
          f"{min(plains) * 1e3:.3f} ms = {min(watcheds) / min(plains):.3f}")
    hooks, plain = _hooks_alone(initial, options), statistics.median(plains)
    print(f"hooks alone {hooks * 1e6:.0f} µs per step = {hooks / plain:.1%} of the plain step's {plain * 1e3:.3f} ms "
          "(target ≤ 10%)")


if __name__ == "__main__":
    main()
