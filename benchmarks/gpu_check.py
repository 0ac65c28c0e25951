"""One short GPU session: the CUDA tests, CUDA graphs, the demos on the GPU, memory and speed.

    python benchmarks/gpu_check.py [--gpu_num 0] [--out gpu_check] [--skip tests graphs memory demos precision speed]

What a session with a GPU should run first, in the order of what it is worth: the CUDA-against-
CPU tests (``tests/models/test_cuda.py``, CUDA graphs of inference and training included); 2D
inference and training of every model replayed from CUDA graphs (``bench_speed.py --cuda_graphs``,
first run on 2026-11-30); the 3D
memory of every model at half and full size with FNOReg's published config checkpointed and not
(``bench_memory.py --jobs 6``); the 2D and 3D demos trained and evaluated on the GPU (the 2D
one also with ``--cuda_graphs``, as experiment 2); the training speed of FNOReg small, FNOReg 3D and
vxm2 at full size in mixed precision (``bench_speed.py --mixed_precision bfloat16``, never run on a
GPU yet) and in float32 beside it (about 2 minutes); and the
speed of every model at the four sizes (``bench_speed.py``). Each step runs as a subprocess with
its own time limit and writes its log into ``--out``; a step that fails or runs out of time is
reported and the next one runs. The first run took about 10 minutes on an NVIDIA H200 (tests
2.5, memory 2, demos 2, speed 2 minutes; the graphs step, run later, took about 1.5 minutes), with
the experiments of the demos in ``--out/experiments`` so that nothing of the user's is touched.
Where a session's device time is short (15 minutes in all, the machine's start included, in
2026-11), run ``--skip speed`` (about 11 minutes: tests 2.5, graphs 1.5, memory 2, demos 3, precision 2); the
speed of every model was measured on 2026-11-29 and the graphs' speed on 2026-11-30. The
graphs step also times FNOReg small, its shipped config and vxm2 eagerly
(``--out/speed2d_eager``), so that it measures the graphs' gain by itself. The figures go where
each benchmark writes them (``--out/speed2d_graphs``, ``--out/memory``, ``--out/speed2d``, ``--out/speed3d``); ``benchmarks/results/cuda/`` holds the
ones of the first run.

Without CUDA it stops at once with exit status 2.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("tests", "graphs", "memory", "demos", "precision", "speed")


def plan(gpu, out):
    """The steps as (name, [(label, argv, seconds)]); argv without the interpreter."""
    ckpt = out / "fnoreg3d_ckpt.json"
    shipped = REPO / "configs" / "fnoreg_2d_small.json"  # diffeomorphic, fold repair: what users train
    g = str(gpu)
    return [
        ("tests", [("CUDA against the CPU", ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                                             "tests/models/test_cuda.py", "tests/models/test_mixed_precision.py"],
                    360)]),
        ("graphs", [("2D inference and training replayed from CUDA graphs, every model",
                     ["benchmarks/bench_speed.py", "--gpu_num", g, "--sizes", "2d_half", "2d_full",
                      "--cuda_graphs", "--repeats", "20", "--max_seconds", "6", "--no_plot",
                      "--configs", f"fnoreg_2d_small={shipped}", "--out", str(out / "speed2d_graphs")], 360),
                    # The same cells eagerly, minutes apart, so that the gain is measured by this step alone.
                    ("2D eager reference: FNOReg small, its shipped config, vxm2",
                     ["benchmarks/bench_speed.py", "--gpu_num", g, "--sizes", "2d_half", "2d_full",
                      "--models", "fnoreg/small", "voxelmorph/vxm2", "--repeats", "20", "--max_seconds", "6",
                      "--no_plot", "--configs", f"fnoreg_2d_small={shipped}",
                      "--out", str(out / "speed2d_eager")], 120)]),
        ("memory", [("3D memory, every model", ["benchmarks/bench_memory.py", "--gpu_num", g,
                                                "--configs", f"fnoreg3d_ckpt={ckpt}", "--sizes", "3d_half",
                                                "3d_full", "--jobs", "6", "--timeout", "150",
                                                "--out", str(out / "memory")], 420)]),
        ("demos", [("2D demo, training", ["train_2d.py", "--config_file", "demo_2d", "--gpu_num", g], 180),
                   ("2D demo, evaluation", ["evaluate_2d.py", "--exp_num", "1", "--gpu_num", g,
                                            "--size", "80", "160"], 120),
                   # The same run replayed from CUDA graphs (experiment 2): its log against the
                   # eager one's shows the speed-up and the same validation Dice; its metadata
                   # records how many steps were replayed.
                   ("2D demo, CUDA graphs, training", ["train_2d.py", "--config_file", "demo_2d", "--gpu_num", g,
                                                       "--cuda_graphs"], 120),
                   ("2D demo, CUDA graphs, evaluation", ["evaluate_2d.py", "--exp_num", "2", "--gpu_num", g,
                                                         "--size", "80", "160", "--cuda_graphs"], 120),
                   ("3D demo, training", ["train_3d.py", "--config_file", "demo_3d", "--gpu_num", g], 180),
                   ("3D demo, evaluation", ["evaluate_3d.py", "--exp_num", "1", "--gpu_num", g], 120)]),
        ("precision", [(f"Training in {label}: FNOReg small, FNOReg 3D, vxm2, full size",
                        ["benchmarks/bench_speed.py", "--gpu_num", g, "--sizes", "2d_full", "3d_full", "--models",
                         "fnoreg/small", "fnoreg/3d", "voxelmorph/vxm2", "--modes", "training", "--repeats", "10",
                         "--max_seconds", "6", "--no_plot", *flags, "--out", str(out / f"training_{label}")], 120)
                       for label, flags in (("bfloat16", ["--mixed_precision", "bfloat16"]), ("float32", []))]),
        ("speed", [("2D speed, every model", ["benchmarks/bench_speed.py", "--gpu_num", g, "--sizes", "2d_half",
                                              "2d_full", "--repeats", "20", "--max_seconds", "6",
                                              "--out", str(out / "speed2d")], 300),
                   ("3D speed, every model", ["benchmarks/bench_speed.py", "--gpu_num", g, "--sizes", "3d_half",
                                              "3d_full", "--repeats", "10", "--max_seconds", "6",
                                              "--out", str(out / "speed3d")], 360)]),
    ]


def _run(label, argv, seconds, log, env):
    started = time.perf_counter()
    with open(log, "w") as f:
        try:
            code = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=seconds).returncode
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {seconds} s"
    elapsed = time.perf_counter() - started
    print(f"{label}: {status}, {elapsed:.0f} s (log {log})", flush=True)
    return {"step": label, "status": status, "seconds": round(elapsed, 1), "log": str(log)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu_num", type=int, default=0, help="the GPU (cuda:K)")
    p.add_argument("--out", default="gpu_check", help="folder for logs, figures and the demos' experiments")
    p.add_argument("--skip", nargs="*", default=[], choices=STEPS)
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available() or args.gpu_num >= torch.cuda.device_count():
        print(f"error: no cuda:{args.gpu_num} here (torch {torch.__version__}, CUDA available: "
              f"{torch.cuda.is_available()}); this check needs a GPU", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((REPO / "configs" / "fnoreg_3d.json").read_text())
    config["model_config"]["checkpointing"] = True
    (out / "fnoreg3d_ckpt.json").write_text(json.dumps(config, indent=2))
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", FNOREG_EXPERIMENTS_DIR=str(out / "experiments"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"{torch.cuda.get_device_name(args.gpu_num)}, torch {torch.__version__}; logs in {out}", flush=True)
    results = []
    for name, commands in plan(args.gpu_num, out):
        if name in args.skip:
            continue
        skip_next = False
        for i, (label, step_argv, seconds) in enumerate(commands):
            if skip_next:  # an evaluation whose training failed has nothing to evaluate
                results.append({"step": label, "status": "skipped (its training failed)"})
                skip_next = False
                continue
            result = _run(label, step_argv, seconds, out / f"{name}{i}.log", env)
            results.append(result)
            skip_next = result["status"] != "ok" and label.endswith("training")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
