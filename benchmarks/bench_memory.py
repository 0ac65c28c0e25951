"""Peak memory of one training step and of one inference call, per model, at 3D half and full size.

Run: ``python benchmarks/bench_memory.py [--gpu_num -1 0] [--models NAME[/PRESET] ...]
[--configs LABEL=path.json ...] [--sizes 3d_half 3d_full] [--threads N] [--timeout 900] [--jobs 1]
[--out benchmarks/results]``

Every (device, model, size, mode) cell runs in a fresh child process, so a cell that runs out of
memory is a result (``out of memory``) and not the end of the benchmark, and no cell inherits
another's allocator caches. The child imports torch, builds the model, the inputs (batch 1 for
inference; the config's batch size, loss and Adam for training, as ``bench_speed.py``) and runs
one warm-up call (for training: a full step, which also creates Adam's state), then measures a
second call:

- **CPU**: the child clears its peak resident set size (``/proc/self/clear_refs``), runs the
  call and reads ``VmHWM``. Reported: ``peak`` = the process's peak resident memory during the
  call (torch itself, the model, its gradients and optimizer state, the inputs and every
  activation), and ``step`` = that peak minus the resident memory just before the call (what the
  call itself adds: activations, gradients, temporaries). Where ``clear_refs`` is unavailable,
  ``ru_maxrss`` after the call is the peak and the step figure is marked approximate. The child's
  address space is capped (``--mem_limit_gb``, default 75 % of the available memory) so that an
  oversized cell fails alone instead of pushing the machine into swap or the OOM killer. The
  child leaves the C allocator at its defaults, so freed memory goes back to the kernel and the
  figures are what the computation holds; the scripts keep freed memory for reuse
  (:mod:`utils.allocator`), which raises a process's peak by fragmentation (``benchmarks/README.md``).
- **CUDA**: ``torch.cuda.max_memory_allocated`` over the call after ``reset_peak_memory_stats``
  (``peak``), minus ``memory_allocated`` before it (``step``); ``max_memory_reserved`` too.

Outputs in ``--out``: ``memory.json`` (machine, settings, every cell) and ``memory.md``.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    command_line,
    REPO,
    available_memory_bytes,
    finish_machine_info,
    machine_info,
    machine_line,
    markdown_table,
    parse_models,
    parse_size,
    reset_peak_resident,
    set_threads,
    shape_text,
    short_reason,
    status_bytes,
    unmeasured_text,
    write_outputs,
)

MODES = ("training", "inference")
DEFAULT_SIZES = ("3d_half", "3d_full")
MIB = 2**20


# ------------------------------------------------------------------------------------- child
def child(spec):
    """Measure one cell (runs in the child process); returns the result dict."""
    import torch

    # The C allocator at its defaults: a peak of what the computation holds, as the CUDA figure
    # counts tensors only. The scripts keep freed memory for reuse (utils.allocator), which
    # raises a process's peak a little through fragmentation; benchmarks/README.md gives it.
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if spec.get("cuda_fraction"):
        torch.cuda.set_per_process_memory_fraction(spec["cuda_fraction"], device)
    from benchmarks.bench_speed import inference_fn, training_fn
    from benchmarks.common import Entry, build, cannot_run
    from models import count_parameters

    entry = Entry(spec["label"], spec["model_name"], spec["model_config"], (spec["dim"],),
                  {spec["dim"]: spec["train_config"]})
    shape = tuple(spec["shape"])
    torch.manual_seed(0)
    model = build(entry, spec["dim"], device)
    reason = cannot_run(model, shape)
    if reason:
        return {"status": "skipped", "reason": short_reason(reason)}
    out = {"n_params": count_parameters(model),
           "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    if spec["mode"] == "inference":
        model.eval()
        call, batch = inference_fn(model, shape, device), 1
    else:
        model.train()
        call, batch, _ = training_fn(model, entry, spec["dim"], shape, device)
    out["batch"] = batch
    started = time.perf_counter()
    call()  # warm-up: allocator caches, Adam state, the spectral weight cache
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        out.update(peak_bytes=peak, before_bytes=before, step_bytes=peak - before,
                   reserved_bytes=torch.cuda.max_memory_reserved(device), measure="cuda max_memory_allocated")
    else:
        exact = reset_peak_resident()
        before = status_bytes("VmRSS")
        call()
        peak = status_bytes("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out.update(peak_bytes=peak, before_bytes=before, step_bytes=peak - before if before else None,
                   measure="VmHWM after clear_refs" if exact else "ru_maxrss (approximate)")
    out["seconds"] = time.perf_counter() - started
    out["status"] = "ok"
    return out


def _child_main(spec_json):
    spec = json.loads(spec_json)
    if spec.get("mem_limit_bytes") and spec["device"] == "cpu":
        limit = int(spec["mem_limit_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        result = child(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as the cell's result
        text = str(exc)
        oom = type(exc).__name__ in ("OutOfMemoryError", "MemoryError") or "can't allocate memory" in text \
            or "out of memory" in text.lower()
        result = {"status": "out of memory" if oom else "error", "reason": short_reason(f"{type(exc).__name__}: {text}")}
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------ parent
def run_cell(spec, timeout):
    """Run one cell in a child process; the child's death or silence is a result too."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "reason": f"over --timeout {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    if proc.returncode < 0 or proc.returncode == 137:
        return {"status": "out of memory", "reason": f"child killed (signal {-proc.returncode if proc.returncode < 0 else 9})"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "error", "reason": short_reason(f"exit {proc.returncode}: {tail}")}


def _cell_specs(entries, sizes, devices, threads, mem_limit_bytes, modes):
    for device in devices:
        for entry in entries:
            for dim in sorted(entry.dims):
                for size_name, shape in [s for s in sizes if len(s[1]) == dim]:
                    for mode in modes:
                        spec = {"device": device, "label": entry.label, "model_name": entry.model_name,
                                "model_config": entry.model_config, "dim": dim, "shape": list(shape), "mode": mode,
                                "train_config": entry.train_config.get(dim, {}), "threads": threads,
                                "mem_limit_bytes": mem_limit_bytes}
                        cell = {k: spec[k] for k in ("device", "label", "model_name", "model_config", "dim", "shape",
                                                     "mode")}
                        cell.update(size=size_name, pixels=math.prod(shape), config_file=entry.config_file)
                        yield spec, cell


def _report(cell):
    what = (f"peak {cell['peak_bytes'] / MIB:,.0f} MiB, step {cell['step_bytes'] / MIB:,.0f} MiB"
            if cell["status"] == "ok" else f"{cell['status']} ({cell.get('reason', '')})")
    print(f"{cell['device']} {cell['label']} {cell['size']} {cell['mode']}: {what}", file=sys.stderr, flush=True)


def bench(entries, sizes, devices, threads=None, timeout=900.0, mem_limit_bytes=None, modes=MODES, progress=True,
          jobs=1):
    """Measure every (device, entry, size, mode) cell, each in its own child process.

    With ``jobs`` > 1 that many children run at once. The peaks stay per process (CUDA counts
    each process's own allocations; the CPU figure is each process's resident set), but the
    children share the memory: a CPU child's address-space cap is divided by ``jobs``, and a CUDA
    child may take at most ``0.95 / jobs`` of the GPU. A CUDA cell that runs out of memory under
    that share is measured again alone afterwards, so a CUDA ``out of memory`` in the results
    always means the whole device was too small (a CPU one: the divided cap).
    """
    work = list(_cell_specs(entries, sizes, devices, threads, mem_limit_bytes, modes))
    if jobs > 1:
        for spec, _ in work:
            if spec["device"] != "cpu":
                spec["cuda_fraction"] = 0.95 / jobs
            elif spec["mem_limit_bytes"]:
                spec["mem_limit_bytes"] = spec["mem_limit_bytes"] // jobs

    def measure(item):
        spec, cell = item
        cell = dict(cell, **run_cell(spec, timeout))
        if cell["status"] == "out of memory" and spec.get("cuda_fraction"):
            cell["shared"] = True  # to be measured again alone
        elif progress:
            _report(cell)
        return cell

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        cells = list(pool.map(measure, work))
    for i, (spec, cell) in enumerate(work):
        if cells[i].pop("shared", False):
            alone = {k: v for k, v in spec.items() if k != "cuda_fraction"}
            cells[i] = dict(cell, **run_cell(alone, timeout))
            if progress:
                _report(cells[i])
    return cells


def _cell_text(c):
    text = unmeasured_text(c)
    if text is not None:
        return text
    step = f" (+{c['step_bytes'] / MIB:,.0f})" if c.get("step_bytes") is not None else ""
    return f"{c['peak_bytes'] / MIB:,.0f}{step}"


def markdown(result):
    lines = ["# Memory", "", f"Machine: {machine_line(result['machine'])}.", "",
             f"Command: `{result['command']}`", "",
             "MiB: peak during one call after a warm-up call, in a fresh process per cell; in brackets what "
             "the call itself adds to the memory held just before it. CPU: peak resident memory of the "
             "process (VmHWM, includes torch's own ~0.3-0.5 GiB, the model, Adam state and inputs). "
             "CUDA: `torch.cuda.max_memory_allocated` (tensors only, no CUDA context). Training: one full "
             "step at the config's batch size (b); inference: one pair, forward + warp."]
    cells = result["cells"]
    sizes = list(dict.fromkeys(c["size"] for c in cells))
    for device in dict.fromkeys(c["device"] for c in cells):
        sel = [c for c in cells if c["device"] == device]
        columns = [(s, m) for s in sizes for m in MODES if any(c["size"] == s and c["mode"] == m for c in sel)]
        header = ["model", "b"] + [f"{m} {s}" + ("" if s == shape_text(_shape(sel, s)) else f" ({shape_text(_shape(sel, s))})")
                                   for s, m in columns]
        rows = []
        for label in dict.fromkeys(c["label"] for c in sel):
            by = {(c["size"], c["mode"]): c for c in sel if c["label"] == label}
            batch = next((c.get("batch") for c in by.values() if c["mode"] == "training" and c.get("batch")), "")
            rows.append([f"`{label}`", batch] + [_cell_text(by.get(k)) for k in columns])
        lines += ["", f"## Peak memory, MiB, {device}", "", markdown_table(header, rows)]
    return "\n".join(lines)


def _shape(cells, size):
    return next(c["shape"] for c in cells if c["size"] == size)


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu_num", type=int, nargs="+", default=[-1, 0],
                   help="-1 is the CPU, K is cuda:K (skipped when absent); default the CPU and cuda:0")
    p.add_argument("--models", nargs="+", help="model names (all presets with a 3D form) or name/preset")
    p.add_argument("--configs", nargs="+", default=[], metavar="LABEL=PATH")
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="named sizes or HxW / DxHxW")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", type=int, help="torch CPU threads in each child")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per cell before it is reported timed out")
    p.add_argument("--mem_limit_gb", type=float,
                   help="address-space cap of a CPU child (default 75%% of the memory available at the start)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells measured at once, each in its own process (a CUDA child may take 0.95/jobs of the "
                        "GPU; cells that run out of memory under that share are measured again alone)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.child:
        return _child_main(args.child)
    import torch

    set_threads(args.threads)
    devices = []
    for g in args.gpu_num:
        if g < 0:
            devices.append("cpu")
        elif torch.cuda.is_available() and g < torch.cuda.device_count():
            devices.append(f"cuda:{g}")
        else:
            print(f"notice: no cuda:{g} here; --gpu_num {g} skipped", file=sys.stderr)
    devices = devices or ["cpu"]
    sizes = [parse_size(s) for s in args.sizes]
    dims = {len(s) for _, s in sizes}
    entries = [e for e in parse_models(args.models, args.configs) if set(e.dims) & dims]
    available = available_memory_bytes()
    limit = int(args.mem_limit_gb * 2**30) if args.mem_limit_gb else (int(0.75 * available) if available else None)
    info = machine_info(devices[-1])
    info["device"] = ", ".join(map(str, devices))  # every device the run measured
    cells = bench(entries, sizes, devices, args.threads or torch.get_num_threads(), args.timeout, limit, args.modes,
                  jobs=args.jobs)
    finish_machine_info(info)
    result = {"benchmark": "memory", "machine": info,
              "command": command_line("bench_memory.py", argv),
              "settings": {"sizes": {n: list(s) for n, s in sizes}, "devices": devices, "timeout_s": args.timeout,
                           "cpu_mem_limit_bytes": limit, "available_bytes_at_start": available, "jobs": args.jobs,
                           "threads": args.threads or torch.get_num_threads()},
              "cells": cells}
    json_path, md_path = write_outputs(args.out, "memory", result, markdown(result))
    print(md_path.read_text())
    print(f"wrote {json_path}, {md_path}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
