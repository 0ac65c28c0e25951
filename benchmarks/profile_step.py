"""Profile one training step (torch.profiler): where the time of a step goes, top operators first.

    python benchmarks/profile_step.py [--model fnoreg/small] [--shape 80 96] [--batch 8] [--threads 2]

A full step as the trainer runs it: forward, warp, ``RegistrationLoss`` (MSE + smoothness),
backward, Adam. Prints the steps per second and pairs per second of ``--steps`` timed steps after
a warm-up (wall clock), then the top ``--top`` operators by self CPU time over ``--profile_steps``
profiled steps (the profiler adds overhead: compare shares, not absolute times). Runs from any
checkout (it only imports ``models``, ``losses``), so the same command profiles an older commit.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import set_threads  # noqa: E402
from losses import RegistrationLoss  # noqa: E402
from models import build_model, warp  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fnoreg/small", help="name/preset")
    p.add_argument("--shape", type=int, nargs="+", default=[80, 96])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--profile_steps", type=int, default=5)
    p.add_argument("--top", type=int, default=10)
    args = p.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    name, preset = args.model.split("/")
    dim = len(args.shape)
    model = build_model(name, {"preset": preset}, dim).train()
    # The trainer's optimizer (engine.train_config.build_optimizer), inlined: this script runs from any checkout.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)
    loss_fn = RegistrationLoss()
    moving, fixed = torch.rand(2, args.batch, 1, *args.shape)

    def step():
        flow = model(moving, fixed)
        total, _ = loss_fn(fixed, warp(moving, flow), flow)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"{args.model} training step at {'x'.join(map(str, args.shape))}, batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}: median {1000 * median:.1f} ms "
          f"(min {1000 * min(times):.1f}), {1 / median:.2f} steps/s, {args.batch / median:.1f} pairs/s")
    with torch.profiler.profile() as prof:
        for _ in range(args.profile_steps):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print("\n| operator | self CPU % | self CPU ms / step | calls / step |\n|---|---|---|---|")
    for e in rows:
        print(f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f} | "
              f"{e.self_cpu_time_total / 1000 / args.profile_steps:.1f} | {e.count / args.profile_steps:.0f} |")


if __name__ == "__main__":
    main()
