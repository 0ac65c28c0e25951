"""Run every benchmark in one command: speed, memory, resolution robustness.

    python benchmarks/run_all.py [--gpu_num -1 0] [--threads N] [--out benchmarks/results]
                                 [--only speed memory resolution] [--quick]

Each benchmark writes its JSON and markdown table into ``--out`` (``speed.*`` with
``speed_scaling.png``, ``memory.*``, ``resolution.*``; see each script's docstring for what is
measured and how). Without ``--quick`` this is the real thing: every model and preset at all four
sizes (hours on a CPU for the 3D sizes), and the resolution study on its 30-minute CPU budget
(``--full`` gives it the published budget on a GPU; ``--data`` a neurite-layout folder).

``--quick`` is the smoke version, seconds per benchmark: two or three models at tiny sizes, one
repeat, and a resolution study of two steps on tiny phantoms. Its figures mean nothing; it checks
that the whole chain runs and writes its outputs (the test suite runs the same settings).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_memory, bench_resolution, bench_speed  # noqa: E402

BENCHMARKS = ("speed", "memory", "resolution")
TINY_FNOREG = ('tiny-fnoreg:{"model_name": "fnoreg", "model_config": {"preset": "small", "n_layers": 1, '
               '"n_modes": [4, 4], "hidden_channels": 4, "projection_channels": 4}}')


def quick_args(name, gpu, out, threads):
    """The smoke settings of one benchmark (also used by tests/benchmarks/test_smoke.py)."""
    common = ["--gpu_num", *map(str, gpu), "--out", str(out)] + (["--threads", str(threads)] if threads else [])
    if name == "speed":
        return common + ["--models", "voxelmorph/vxm2", "fouriernet/c16", "--sizes", "16x32", "16x16x16",
                         "--repeats", "1", "--max_seconds", "20"]
    if name == "memory":
        # The timeout only guards against a hung child: a child that imports torch from a stalled
        # disk took over 120 s once on the 2-core CI machine.
        return common + ["--models", "voxelmorph/vxm2", "--sizes", "16x16x16", "--modes", "inference",
                         "--timeout", "600"]
    g = [x for x in gpu if x >= 0][:1] or [-1]
    return ["--gpu_num", str(g[0]), "--out", str(out)] + (["--threads", str(threads)] if threads else []) + [
        "--models", "--variant", TINY_FNOREG, "--sizes", "16", "32",
        "--phantom_shape", "32", "32", "--phantom_subjects", "10", "--epochs", "1", "--steps", "2",
        "--batch_size", "2", "--ants_pairs", "1", "--ants_transforms", "SyN",
        "--work", str(Path(out) / "bench_resolution_work")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu_num", type=int, nargs="+", default=[-1, 0],
                   help="-1 the CPU, K cuda:K when present (the resolution study uses the first GPU given, else the CPU)")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    p.add_argument("--quick", action="store_true", help="smoke settings: tiny sizes, seconds per benchmark")
    p.add_argument("--full", action="store_true", help="resolution study with the published budget (a GPU)")
    p.add_argument("--data", help="resolution study on this neurite-layout folder")
    args = p.parse_args(argv)
    modules = {"speed": bench_speed, "memory": bench_memory, "resolution": bench_resolution}
    results = {}
    for name in args.only:
        started = time.perf_counter()
        if args.quick:
            bench_argv = quick_args(name, args.gpu_num, args.out, args.threads)
        else:
            bench_argv = ["--out", args.out] + (["--threads", str(args.threads)] if args.threads else [])
            if name == "resolution":
                gpus = [g for g in args.gpu_num if g >= 0]
                bench_argv += ["--gpu_num", str(gpus[0] if gpus else -1)]
                bench_argv += (["--full"] if args.full else []) + (["--data", args.data] if args.data else [])
            else:
                bench_argv += ["--gpu_num", *map(str, args.gpu_num)]
        print(f"== {name}: python benchmarks/bench_{name}.py {' '.join(bench_argv)}", file=sys.stderr, flush=True)
        results[name] = modules[name].main(bench_argv)
        print(f"== {name} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    main()
