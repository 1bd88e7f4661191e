"""Benchmark: `tracer chain` on deep, wide sigmoid nets (the dominant path by dynamic programming).

For each depth × width it prints the seconds `chain.explain` + `chain.render` take for W1[0,0]
(the engine's run is not counted) and the number of paths the dynamic programme did not have to
enumerate. Target: 30 layers of width 8 (8³⁰ paths) in under a second.

    python benchmarks/chain.py
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracer.explain import chain  # noqa: E402
from tracer.training import engine, scenario


def deep_net(depth, width):
    layers = [{"units": width, "activation": "sigmoid", "init": "xavier_normal"} for _ in range(depth)]
    layers.append({"units": 1, "activation": "identity", "init": "xavier_normal"})
    return {"seed": 0, "steps": 1, "data": {"inputs": [[0.5, -1.0], [1.0, 0.3]], "targets": [[1.0], [0.0]]},
            "layers": layers, "optimizer": {"name": "sgd", "lr": 0.1}}


def main():
    print(f"{'depth':>5} {'width':>5} {'paths':>12} {'seconds':>9}")
    for depth, width in [(12, 3), (14, 3), (20, 3), (30, 8), (60, 16)]:
        trace = engine.run(scenario.from_dict(deep_net(depth, width)))
        start = time.perf_counter()
        chain.render(chain.explain(trace, "W1[0,0]"))
        print(f"{depth:>5} {width:>5} {float(width) ** (depth - 1):>12.3g} {time.perf_counter() - start:>9.4f}")


if __name__ == "__main__":
    main()
