"""Speed of every model side by side: inference time per pair and training throughput.

Run: ``python benchmarks/bench_speed.py [--gpu_num -1 0] [--models NAME[/PRESET] ...]
[--configs LABEL=path.json ...] [--sizes 2d_half 2d_full 3d_half 3d_full] [--repeats 5]
[--threads N] [--max_seconds 60] [--out benchmarks/results] [--cuda_graphs]
[--mixed_precision bfloat16]``

What is measured, per model, preset and size:

- **Inference**: one pair (batch 1), forward pass plus the image warp, under
  ``torch.inference_mode()`` with the model in eval mode and its spectral weights cached
  (``models.spectral.weight_cache``), as ``evaluate_<d>d.py`` times it: one warm-up call, then the median of ``--repeats`` calls, the device synchronised before and
  after each.
- **Training throughput**: pairs per second of full training steps (forward, warp, the project's
  ``RegistrationLoss`` with the config's similarity and weights, backward, Adam step) at the
  batch size of the model's config in ``configs/`` (2D 8, 3D 1 where there is none; a soft Dice
  term on random label maps when the config's ``seg_param`` is > 0, as in the published 3D
  runs). Same warm-up and median. With ``--mixed_precision bfloat16`` the step's network runs
  under autocast, as ``train_config.mixed_precision`` trains it (:mod:`utils.precision`).
- **Ratio to VoxelMorph vxm2**: each time per pair divided by that of VoxelMorph-2 measured in
  the same run on the same device and size (> 1 is slower), so the figures survive a noisy or
  different machine. vxm2 is always measured.
- **Cost growth**: ``speed_scaling.png``, time per pair against pixels on log-log axes, and the
  fitted exponent (slope) per model in ``speed.json``.

Every cell starts from the model's built weights (restored in place before each), so an
inference cell never times what an earlier training cell's steps on random images made of it
(a FNOReg that folds, whose fold repair then runs every call).

Cells that cannot or should not run say why: a size the model refuses (``skipped (...)``), a
cell whose time extrapolated from the next smaller size of the same dimension exceeds
``--max_seconds``, a CPU cell whose memory extrapolated from the next smaller size (the bytes the
autograd graph saved, measured with saved-tensor hooks, or the process's peak resident growth,
whichever is larger; :func:`_memory_need`) would not fit in the available memory (read after the
process hands its freed memory back to the kernel: ``utils.allocator.release_freed_memory``), or
``out of memory``. ``--max_seconds`` also caps each cell's repeats; a cell timed by its warm-up
call alone is flagged approximate (``≈``, an upper bound).

Outputs in ``--out``: ``speed.json`` (machine, settings, every cell with all its timings),
``speed.md`` (one inference and one training table per device) and ``speed_scaling.png``.
"""

import argparse
import contextlib
import gc
import math
import sys
from pathlib import Path
from typing import NamedTuple, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    command_line,
    NAMED_SIZES,
    available_memory_bytes,
    build,
    cannot_run,
    finish_machine_info,
    fmt_seconds,
    jsonable,
    machine_info,
    parse_models,
    parse_size,
    reset_peak_resident,
    set_threads,
    short_reason,
    status_bytes,
    time_call,
    write_outputs,
)
from benchmarks.speed_report import MODES, add_ratios, markdown, plot, scaling_exponents  # noqa: E402
from utils.allocator import release_freed_memory  # noqa: E402
from utils.cli import add_cuda_graphs_argument  # noqa: E402
from utils.fileio import write_json  # noqa: E402
from utils.precision import MIXED_PRECISIONS  # noqa: E402

DEFAULT_SIZES = tuple(NAMED_SIZES)
# A CPU cell may use at most this share of the available memory. The extrapolated need came out
# between 10 % low and 20 % high (2 threads, 80x96x112 -> 160x192x224: vxm1 inference 7.1
# predicted, 7.8 GiB grown; Fourier-Net 16 training 15.5 predicted, 12.8 grown).
MEMORY_HEADROOM = 0.85


def _devices(gpu_nums):
    out = []
    for g in gpu_nums:
        if g < 0:
            out.append(torch.device("cpu"))
        elif torch.cuda.is_available() and g < torch.cuda.device_count():
            out.append(torch.device(f"cuda:{g}"))
        else:
            print(f"notice: no cuda:{g} here; --gpu_num {g} skipped", file=sys.stderr)
    return out or [torch.device("cpu")]


def _label_ids(dim):
    return list(range(1, 25 if dim == 2 else 36))


class SavedBytes:
    """Bytes of the tensors autograd saves for backward (distinct storages), via saved-tensor hooks."""

    def __init__(self):
        self.seen = {}

    def pack(self, t):
        try:
            storage = t.untyped_storage()
            self.seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    @property
    def total(self):
        return sum(self.seen.values())


def inference_fn(model, shape, device, cuda_graphs=False):
    """Forward + warp of one pair, as ``evaluate_<d>d.py`` runs it.

    Inside :func:`models.graphed.inference_session`, held open for every call as an evaluation
    holds it for a whole split: a factorised spectral weight is rebuilt in the warm-up call and
    reused; with ``cuda_graphs`` on CUDA a first call, timed apart (``capture_s``), captures the
    graph that the warm-up and timed calls replay (``call.graphed`` then says how many calls it
    answered, or why it did not).
    """
    from models import warp
    from models.graphed import inference_session

    moving, fixed = torch.rand(2, 1, 1, *shape, device=device)
    session = inference_session(model, cuda_graphs and torch.device(device).type == "cuda")
    run = session.__enter__()  # freed with the model; nothing else runs on it

    def call():
        with torch.inference_mode():
            return warp(moving, run(moving, fixed))

    call.session = session  # the block lasts as long as the timed function: collected, it would close
    call.graphed = run if run is not model else None
    return call


def training_fn(model, entry, dim, shape, device, cuda_graphs=False, mixed_precision=False):
    """One full training step at the entry's batch size; returns (step function, batch, hooks).

    ``mixed_precision`` ("bfloat16"): the forward pass under autocast, as the trainer runs
    ``train_config.mixed_precision`` (:mod:`utils.precision`).

    With ``cuda_graphs`` on CUDA the model's forward and backward pass replay from CUDA graphs, as
    ``train_<d>d.py --cuda_graphs`` runs them (:mod:`utils.training_graphs`; captured in the
    warm-up step, which then measures no saved bytes); ``step.graphed`` is the wrapper, else None.
    """
    from engine.train_config import build_optimizer
    from losses import RegistrationLoss, one_hot
    from models import warp
    from utils.precision import network_field
    from utils.training_graphs import TrainingGraphs

    batch = entry.batch_size(dim)
    loss_fn = RegistrationLoss(**entry.loss_settings(dim))
    optimizer = build_optimizer(model.parameters(), 1e-4)  # the trainer's optimizer
    moving, fixed = torch.rand(2, batch, 1, *shape, device=device)
    labels = None
    if loss_fn.uses_labels:
        ids = _label_ids(dim)
        gen = torch.Generator(device="cpu").manual_seed(0)
        labels = torch.randint(0, len(ids) + 1, (2, batch, 1, *shape), generator=gen).to(device)
    saved = SavedBytes()
    graphed = TrainingGraphs(model) if cuda_graphs and torch.device(device).type == "cuda" else None
    net = graphed or model
    state = {"hooks": graphed is None}

    def step():
        optimizer.zero_grad(set_to_none=True)
        ctx = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t) if state["hooks"] else contextlib.nullcontext()
        with ctx:
            flow = network_field(net, moving, fixed, mixed_precision)
            warped = warp(moving, flow)
            onehots = (None, None)
            if labels is not None:
                onehots = (one_hot(labels[1], ids), warp(one_hot(labels[0], ids), flow))
            total, _ = loss_fn(fixed, warped, flow, *onehots)
        total.backward()
        optimizer.step()
        state["hooks"] = False  # measured on the first (warm-up) step only, so timings carry no hooks

    step.graphed = graphed
    return step, batch, (saved if graphed is None else None)


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:  # freed memory the process kept must count as available for the next cell's memory check
        release_freed_memory()


class Measured(NamedTuple):
    """What the next larger size of a model and mode is extrapolated from."""

    pixels: int
    seconds: float  # per call
    saved: Optional[int]  # bytes autograd saved (training)
    growth: Optional[int]  # peak resident growth (CPU)


def _inference_growth(cells, cell):
    """Peak resident growth of the inference cell of ``cell``'s model, size and device, if measured."""
    return next((c.get("peak_growth_bytes") for c in reversed(cells) if c["mode"] == "inference"
                 and all(c[k] == cell[k] for k in ("label", "size", "device", "dim"))), None)


def _memory_need(previous, pixels, param_bytes):
    """Bytes a CPU cell at ``pixels`` is expected to need, from the last measured size.

    The larger of two linear extrapolations in the pixel count: the bytes autograd saved, and the
    peak growth of the process's resident memory during that cell (which also counts the
    temporaries of the forward and backward passes and the allocator's fragmentation; the
    saved bytes alone let TransMorph 3-stage's 160x192x224 step exhaust 24 GB). Weights,
    gradients and Adam's two moments (four times the weights) do not grow with the size.
    """
    previous = Measured(*previous)
    fixed = 4 * param_bytes
    scale = pixels / previous.pixels
    by_saved = (previous.saved or 0) * scale
    by_growth = max((previous.growth or 0) - fixed, 0) * scale
    return max(by_saved, by_growth) + fixed


def _param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _is_oom(exc):
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc) \
        or "out of memory" in str(exc).lower()


def bench(entries, sizes, devices, repeats, max_seconds, modes=MODES, progress=True, cuda_graphs=False,
          mixed_precision=False, on_cell=None):
    """Measure every (device, entry, size, mode) cell; returns the list of cell dicts.

    ``on_cell(cells)`` is called after each cell with the cells so far (``main`` writes them, so
    that a run the kernel kills for memory keeps what it measured).

    ``cuda_graphs``: on CUDA, inference replayed from CUDA graphs (:mod:`models.graphed`) and the
    training step's forward and backward pass too (:mod:`utils.training_graphs`).
    ``mixed_precision``: training steps under autocast (:mod:`utils.precision`); inference stays
    float32, as evaluation runs it.
    """
    cells = []
    for device in devices:
        for entry in entries:
            for dim in sorted(entry.dims):
                dim_sizes = sorted([s for s in sizes if len(s[1]) == dim], key=lambda s: math.prod(s[1]))
                if not dim_sizes:
                    continue
                torch.manual_seed(0)
                model = build(entry, dim, device)
                from models import count_parameters

                n_params = count_parameters(model)
                # Every cell starts from the built weights: a training cell's Adam steps on random
                # images make FNOReg fold, and a later inference cell would time the fold repair.
                initial = {k: v.clone() for k, v in model.state_dict().items()}
                previous = {}  # mode -> Measured of the last measured size
                for size_name, shape in dim_sizes:
                    pixels = math.prod(shape)
                    for mode in modes:
                        cell = {"device": str(device), "label": entry.label, "model_name": entry.model_name,
                                "model_config": entry.model_config, "dim": dim, "size": size_name,
                                "shape": list(shape), "pixels": pixels, "mode": mode, "n_params": n_params,
                                "batch": 1 if mode == "inference" else entry.batch_size(dim),
                                "config_file": entry.config_file}
                        model.load_state_dict(initial)  # in place: a captured graph stays valid
                        watch = device.type == "cpu" and reset_peak_resident()
                        before = status_bytes("VmRSS") if watch else None
                        inferred = _inference_growth(cells, cell) if mode == "training" else None
                        cell.update(_measure(entry, model, dim, shape, device, mode, repeats, max_seconds,
                                             previous.get(mode), cuda_graphs, mixed_precision, inferred))
                        if cell["status"] == "ok" and before is not None:
                            cell["peak_growth_bytes"] = status_bytes("VmHWM") - before
                        if cell["status"] == "ok":
                            previous[mode] = Measured(pixels, cell["seconds_per_call"], cell.get("saved_bytes"),
                                                      cell.get("peak_growth_bytes"))
                        cells.append(cell)
                        if on_cell is not None:
                            on_cell(cells)
                        if progress:
                            what = (f"{fmt_seconds(cell['seconds_per_pair'])}/pair" if cell["status"] == "ok"
                                    else f"{cell['status']} ({cell.get('reason', '')})")
                            print(f"{device} {entry.label} {size_name} {mode}: {what}", file=sys.stderr, flush=True)
                        _free(device)
                del model, initial
                _free(device)
    add_ratios(cells)
    return cells


def _measure(entry, model, dim, shape, device, mode, repeats, max_seconds, previous, cuda_graphs=False,
             mixed_precision=False, inference_growth=None):
    reason = cannot_run(model, shape)
    if reason:
        return {"status": "skipped", "reason": short_reason(reason)}
    pixels = math.prod(shape)
    previous = None if previous is None else Measured(*previous)
    if previous is not None and max_seconds:
        predicted = previous.seconds * pixels / previous.pixels
        if predicted > max_seconds:
            return {"status": "skipped", "reason": f"≈{predicted:.0f} s per call extrapolated from "
                    f"{previous.pixels:,} pixels > --max_seconds {max_seconds:g}", "predicted_seconds": predicted}
    if device.type == "cpu":
        # Weights, gradients and Adam's moments do not grow with the size; an inference cell's
        # growth holds none of them (the weights were there before it).
        param_bytes = _param_bytes(model) if mode == "training" else 0
        if previous is not None and (previous.saved or previous.growth):
            need, how = _memory_need(previous, pixels, param_bytes), "extrapolated"
        elif mode == "training" and inference_growth:
            # No smaller size ran (TransMorph refuses 80x96x112). A training step grew by 1.8-4.6x
            # what inference at the same size grew by (3D models, 2 CPU threads); TransMorph base
            # at 160x192x224 by 2.5x (21 GiB), and with a factor of 2 it was killed for memory.
            need, how = 3 * inference_growth + 4 * param_bytes, "3x inference's growth"
        else:
            need = None
        have = available_memory_bytes()
        if need is not None and have is not None and need > MEMORY_HEADROOM * have:
            return {"status": "skipped", "reason": f"needs ≈{need / 2**30:.1f} GiB ({how}), "
                    f"{have / 2**30:.1f} GiB available", "predicted_bytes": need}
    try:
        if mode == "inference":
            model.eval()
            fn = inference_fn(model, shape, device, cuda_graphs)
            batch, saved = 1, None
        else:
            model.train()
            fn, batch, saved = training_fn(model, entry, dim, shape, device, cuda_graphs, mixed_precision)
        graphed = fn.graphed
        capture_s = None
        if graphed is not None and device.type == "cuda":
            # The capture (scan, warm-up passes, check) is a one-off of seconds: timed apart, so
            # that the warm-up call, which also budgets the repeats, is a replay.
            capture_s = time_call(fn, device, 0)["warmup_s"]
        timing = time_call(fn, device, repeats, max_seconds)
    except Exception as exc:  # noqa: BLE001 - an out-of-memory cell is a result, anything else is not
        if _is_oom(exc):
            return {"status": "out of memory", "reason": short_reason(exc)}
        raise
    out = {"status": "ok", "seconds_per_call": timing["seconds"], "seconds_per_pair": timing["seconds"] / batch,
           "pairs_per_s": batch / timing["seconds"], "times": timing["times"], "warmup_s": timing["warmup_s"],
           "approx": timing["approx"]}
    if saved is not None:
        out["saved_bytes"] = saved.total
    if graphed is not None:
        if capture_s is not None:
            out["capture_s"] = capture_s
        use = graphed.usage()
        out["graph_replays"], out["graph_eager"] = use["replays"], "; ".join(use["eager"]) or None
    return out


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu_num", type=int, nargs="+", default=[-1, 0],
                   help="devices: -1 is the CPU, K is cuda:K (skipped when absent); default the CPU and cuda:0")
    p.add_argument("--models", nargs="+", help="model names (all presets) or name/preset; default every model")
    p.add_argument("--configs", nargs="+", default=[], metavar="LABEL=PATH",
                   help="extra entries from config files (model, model_config, batch size, loss)")
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES),
                   help=f"named sizes ({', '.join(NAMED_SIZES)}) or HxW / DxHxW")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per cell after one warm-up (median)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; stated in the output)")
    p.add_argument("--max_seconds", type=float, default=60.0,
                   help="budget per cell; also skips a cell whose extrapolated time per call exceeds it")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    p.add_argument("--no_plot", action="store_true")
    add_cuda_graphs_argument(p)  # as evaluate_<d>d.py and train_<d>d.py --cuda_graphs run it
    p.add_argument("--mixed_precision", choices=sorted(MIXED_PRECISIONS),
                   help="training cells under autocast, as train_config.mixed_precision (inference stays float32)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    set_threads(args.threads)
    devices = _devices(args.gpu_num)
    sizes = [parse_size(s) for s in args.sizes]
    entries = parse_models(args.models, args.configs)
    info = machine_info(devices[-1])
    info["device"] = ", ".join(map(str, devices))  # every device the run measured
    if any(d.type == "cpu" for d in devices):
        info["cpu_device_measured"] = True
    out = Path(args.out)
    partial = out / "speed.partial.json"

    def keep(cells):  # so far; removed once the run's outputs are written
        out.mkdir(parents=True, exist_ok=True)
        write_json(partial, {"benchmark": "speed", "partial": True, "machine": info,
                             "command": command_line("bench_speed.py", argv), "cells": cells}, default=jsonable)

    cells = bench(entries, sizes, devices, args.repeats, args.max_seconds, args.modes, cuda_graphs=args.cuda_graphs,
                  mixed_precision=args.mixed_precision, on_cell=keep)
    finish_machine_info(info)
    result = {"benchmark": "speed", "machine": info,
              "command": command_line("bench_speed.py", argv),
              "settings": {"repeats": args.repeats, "max_seconds": args.max_seconds, "threads": torch.get_num_threads(),
                           "sizes": {n: list(s) for n, s in sizes}, "devices": [str(d) for d in devices],
                           "reference": "voxelmorph/vxm2", "cuda_graphs": args.cuda_graphs,
                           "mixed_precision": args.mixed_precision or False},
              "cells": cells, "scaling_exponents": scaling_exponents(cells)}
    json_path, md_path = write_outputs(out, "speed", result, markdown(result))
    partial.unlink(missing_ok=True)
    if not args.no_plot:
        plot(result, out / "speed_scaling.png")
    print(md_path.read_text())
    print(f"wrote {json_path}, {md_path}" + ("" if args.no_plot else f", {out / 'speed_scaling.png'}"),
          file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
