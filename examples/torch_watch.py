"""The practitioner's path: your own PyTorch module and training loop, watched by tracer; when the
loss turns to inf, the steps just before it become a workbook of live formulas and a diagnosis that
names the operation that produced the first inf.

    python examples/torch_watch.py [output-folder]

Nothing here is tracer's but the three marked lines: the model is a class with a residual block,
the data comes from a shuffling DataLoader, and the loop is the usual zero_grad/backward/step.
The learning rate is too large, so the weights grow until the loss overflows.
"""
import sys
from pathlib import Path

import torch
from torch import nn

import tracer


class Regressor(nn.Module):
    """6 features -> 8 ReLU units -> a residual tanh block -> 2 outputs."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(6, 8)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.encode(x))
        h = h + torch.tanh(self.block(h))
        return self.head(h)


def loader(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(96, 2, generator=generator, dtype=torch.float64)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed + 1))


def main(folder):
    torch.manual_seed(0)
    model = Regressor().double()          # float64, so the workbook's numbers are the loop's own
    optimizer = torch.optim.SGD(model.parameters(), lr=0.04)
    loss_fn = nn.MSELoss(reduction="sum")

    with tracer.watch(model, optimizer, loss_fn, keep=20) as w:            # tracer (1/3)
        for epoch in range(100):
            for x, y in loader(epoch):
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
            if not torch.isfinite(loss):
                break

    print(f"the loop failed at step {w.failure} (loss {w.ring[-1].loss})")
    scenario = w.scenario(steps=3)                                         # tracer (2/3)
    print(scenario.description)
    trace = tracer.run(scenario)
    trace.first_step = scenario.first_loop_step    # number the steps as the loop did
    tracer.write_workbook(trace, folder / "failing-window.xlsx", force=True)   # tracer (3/3)
    for finding in tracer.diagnose_run(trace).findings:
        if "non-finite" in finding:
            print(finding)
    return w, trace


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
