"""Benchmark: the engine's time per training step against PyTorch eager (float64), and peak RSS.

Nets: wide 784-32-10 (sigmoid, softmax output, softmax_ce, SGD, batch 32, random inputs and
one-hot targets), and the tiny templates xor (2-2-1) and deep-sigmoid (5-4-4-4-4-4-1). For each
it times `engine.run(scenario, sums=...)` (the whole run, trace recording included, divided by the
steps) in the sum order `tracer run` chooses for the net (writer.sum_order, the "order" column):
matmul (numpy matrix products) for 784-32-10, whose workbook is in the matrix layout, in_order
(every sum left to right, a spreadsheet formula's bits) for the tiny nets of the column layout;
an engine from before the sum orders (--repo) runs in order. And it times the equivalent torch
loop (nn.Sequential of Linear and the activations in float64; forward, loss, backward, SGD step).
Both sides are timed on one thread (engine1: numpy's BLAS limited to one thread by
OPENBLAS_NUM_THREADS/OMP_NUM_THREADS/MKL_NUM_THREADS = 1; torch1: torch.set_num_threads(1)), ratio1
= engine1 / torch1, and with their default threads (engineN, torchN), ratioN = engineN / torchN.
Each measurement runs in a fresh subprocess that reports its own peak RSS (resource.getrusage); the
engine and torch alternate for --pairs pairs and the medians are printed, so that a change of
the machine's load moves both sides. Target: ratio1 at most 2 on 784-32-10 batch 32, and no
slower than before on the tiny nets.

    python benchmarks/engine.py [--pairs 3] [--steps 20] [--repo PATH]

--repo runs the engine of another checkout (e.g. the `int` worktree: the figures before a change).
"""
import argparse
import json
import os
from pathlib import Path
import resource
import statistics
import subprocess
import sys
import time

ROOT = Path(__file__).resolve().parent.parent
NETS = ("784-32-10", "xor", "deep-sigmoid")


def wide_scenario(steps, batch=32, samples=640, seed=0):
    """The 784-32-10 scenario as a dict (random data from a fixed seed)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(samples, 784))
    targets = np.eye(10)[rng.integers(0, 10, samples)]
    return {"name": "wide", "seed": seed, "steps": steps,
            "data": {"inputs": inputs.tolist(), "targets": targets.tolist()},
            "layers": [{"units": 32, "activation": "sigmoid", "init": "xavier_uniform"},
                       {"units": 10, "activation": "softmax", "init": "xavier_uniform"}],
            "loss": {"name": "softmax_ce", "reduction": "mean"},
            "optimizer": {"name": "sgd", "lr": 0.1}, "training": {"batch": batch}}


def load(net, steps):
    from tracer.training import scenario
    if net == "784-32-10":
        return scenario.from_dict(wide_scenario(steps))
    return scenario.load(net)


def time_engine(net, steps, repeats):
    """(seconds per step of engine.run (best of `repeats` runs), the sum order it ran in): the
    order `tracer run` chooses for the net's workbook."""
    from tracer.training import engine
    from tracer.workbook import writer
    s = load(net, steps)
    if hasattr(writer, "sum_order"):
        order = writer.sum_order(s)
        train = lambda: engine.run(s, sums=order)  # noqa: E731
    else:                                          # an engine from before the sum orders: in order
        order, train = "in_order", lambda: engine.run(s)  # noqa: E731
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        train()
        best = min(best, (time.perf_counter() - start) / s.steps)
    return best, order


def time_torch(net, steps, repeats, threads):
    """Seconds per step of the equivalent torch float64 loop (best of `repeats` runs)."""
    import numpy as np
    import torch
    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    s = load(net, steps)
    acts = {"sigmoid": torch.nn.Sigmoid, "identity": torch.nn.Identity, "tanh": torch.nn.Tanh,
            "relu": torch.nn.ReLU, "softmax": torch.nn.Identity}   # softmax: fused into the loss
    modules, fan_in = [], s.widths[0]
    for layer in s.layers:
        modules += [torch.nn.Linear(fan_in, layer.units, dtype=torch.float64), acts[layer.activation]()]
        fan_in = layer.units
    model = torch.nn.Sequential(*modules)
    optimizer = torch.optim.SGD(model.parameters(), lr=s.optimizer_params["lr"])
    x = torch.tensor(np.asarray(s.inputs, dtype=float))
    t = torch.tensor(np.asarray(s.targets, dtype=float))
    size = s.batch_size
    batches = [(x[i:i + size], t[i:i + size]) for i in range(0, len(x) - size + 1, size)]
    reduction = s.reduction

    def loss_of(u, target):
        if s.loss == "softmax_ce":
            return torch.nn.functional.cross_entropy(u, target, reduction=reduction)
        squares = (u - target) ** 2
        return 0.5 * (squares.sum() if reduction == "sum" else squares.mean())

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for step in range(s.steps):
            inputs, target = batches[step % len(batches)]
            optimizer.zero_grad()
            loss_of(model(inputs), target).backward()
            optimizer.step()
        best = min(best, (time.perf_counter() - start) / s.steps)
    return best


def measure(args):
    """One measurement in this process: print {"seconds": per step, "rss_mb": peak RSS}."""
    order = None
    if args.side == "engine":
        sys.path.insert(0, args.repo)
        seconds, order = time_engine(args.net, args.steps, args.repeats)
    else:
        seconds = time_torch(args.net, args.steps, args.repeats, args.threads)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "order": order}))


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def run(side, net, args, threads=0):
    """One measurement in a fresh process; `threads` 1: torch.set_num_threads(1), and numpy's BLAS
    on one thread (its variables set before numpy loads) for the engine."""
    command = [sys.executable, __file__, "--measure", side, "--net", net, "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--repo", args.repo, "--threads", str(threads)]
    environment = dict(os.environ, **({name: str(threads) for name in BLAS_THREADS} if threads else {}))
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="steps of the 784-32-10 run (tiny nets: their template's)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (the best is kept)")
    parser.add_argument("--repo", default=str(ROOT), help="the checkout whose engine is timed")
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--measure", choices=("engine", "torch"), dest="side", help=argparse.SUPPRESS)
    parser.add_argument("--net", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return measure(args)
    print(f"engine of {args.repo}; medians of {args.pairs} alternating measurements (best of {args.repeats} runs each)")
    print(f"{'net':>13} {'order':>9} {'engine1 ms':>10} {'engineN ms':>10} {'torch1 ms':>10} {'torchN ms':>10}"
          f" {'ratio1':>7} {'ratioN':>7} {'engine RSS':>11} {'torch RSS':>10}")
    for net in args.nets.split(","):
        figures = {"engine1": [], "engineN": [], "torch1": [], "torchN": []}
        for _ in range(args.pairs):
            figures["engine1"].append(run("engine", net, args, threads=1))
            figures["torch1"].append(run("torch", net, args, threads=1))
            figures["engineN"].append(run("engine", net, args))
            figures["torchN"].append(run("torch", net, args))
        median = {k: {m: statistics.median(f[m] for f in v) for m in ("seconds", "rss_mb")} for k, v in figures.items()}
        e1, en, t1, tn = (median[k]["seconds"] for k in ("engine1", "engineN", "torch1", "torchN"))
        order = figures["engine1"][0]["order"]
        print(f"{net:>13} {order:>9} {e1 * 1e3:>10.3f} {en * 1e3:>10.3f} {t1 * 1e3:>10.3f} {tn * 1e3:>10.3f}"
              f" {e1 / t1:>7.2f} {en / tn:>7.2f} {median['engineN']['rss_mb']:>8.0f} MB {median['torch1']['rss_mb']:>7.0f} MB",
              flush=True)


if __name__ == "__main__":
    main()
