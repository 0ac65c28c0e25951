"""FNOReg inference against its own kernels' floor: how far the model is from its essential work.

The floor of one FNOReg inference (forward + warp, batch 1) is the sum of the kernels it cannot
avoid, each timed alone on a contiguous operand at the exact shape the model uses, in the same
run as the model (so both see the same machine):

- per Fourier layer: the real FFT along the last axis (all rows), the FFT along every other axis
  of the kept columns only, the contraction of the kept modes (the faster of the real form on the
  weight's interleaved real view and the complex batched matrix product, with the weight already
  laid out, one weight per layer as in the model, so that it is read from memory and not from
  the cache), the inverse transforms of the kept columns and rows, and the 1x1 convolution accumulated into the spectral output
  with the GELU and the residual add in place, as the model runs them;
- per FFC (two per block, two blocks): the reduce and expand 1x1 products, the Fourier unit's
  full real FFT, 1x1 product on the spectrum and inverse FFT, the ReLUs and the skip add in
  place (batch norms fold into the products in inference, so they cost nothing here), and each
  block's residual add;
- the lifting and the projection's two products and ReLU, and the warp (one ``grid_sample``);
  with ``diffeomorphic`` the scaling-and-squaring compositions (``steps`` more ``grid_sample``
  calls and adds).

What the floor leaves out is overhead: layout copies, the scatter of the kept modes into a
zero spectrum, allocation, Python dispatch. The issue's target is the model within 1.5x of it.

    python benchmarks/bench_floor.py --preset large --shape 160 192 --threads 2
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    command_line,
    finish_machine_info,
    machine_info,
    machine_line,
    set_threads,
    time_call,
)
from models import warp  # noqa: E402
from models.registry import build_model  # noqa: E402
from models.spectral import weight_cache  # noqa: E402


def _mm(c_in, c_out, pixels):
    w, x = torch.randn(c_out, c_in), torch.randn(c_in, pixels)
    return lambda: torch.mm(w, x)


def _elementwise(fn, shape):
    x = torch.randn(shape)
    return lambda: fn(x)


def inplace_add(shape):
    """``a += b``: every add of an inference call writes into a fresh intermediate in place."""
    a, b = torch.randn(shape), torch.randn(shape)
    return lambda: a.add_(b)


def _relu(shape):
    """ReLU in place, as inference runs it on a fresh intermediate."""
    return _elementwise(torch.relu_, shape)


def _layer_tail(c, pixels):
    """A Fourier layer after its inverse transform, as inference runs it: ``W x`` accumulated
    into the spectral output (``baddbmm_``), GELU and the residual add in place; no new tensor."""
    out, x, w = torch.randn(1, c, pixels), torch.randn(1, c, pixels), torch.randn(1, c, c) / c
    return lambda: torch.ops.aten.gelu_(out.baddbmm_(w, x)).add_(x)


def fourier_layer_kernels(c, shape, n_modes, n_layers=1):
    """{name: zero-argument call} for the essential kernels of one 2D Fourier layer."""
    h, w = shape
    width = min(n_modes[-1], w // 2 + 1)
    rows = min(n_modes[0], h)
    x = torch.randn(1, c, h, w)
    half = torch.fft.rfft(x, dim=-1)[..., :width].contiguous()
    # Along the first axis, the kept columns laid out as contiguous rows: (c, width, h).
    cols = half.transpose(-1, -2).contiguous()
    modes = rows * width
    # One weight per layer, used in turn: the model reads a different weight in every layer, and
    # a weight reused call after call would be timed from the cache (it is megabytes).
    # The real form as the model runs it: [x_re; x_im] (2 rows at batch 1) times the weight's
    # interleaved real view (C, 2C); the complex form: one complex row times (C, C).
    real_w = [torch.randn(modes, c, 2 * c) for _ in range(n_layers)]
    cplx_w = [torch.randn(modes, c, c, dtype=torch.cfloat) for _ in range(n_layers)]
    real_x, cplx_x = torch.randn(modes, 2, c), torch.randn(modes, 1, c, dtype=torch.cfloat)
    spec = torch.zeros(1, c, h, width, dtype=torch.cfloat)
    turn = iter(range(10**9))
    real_contract = lambda: torch.bmm(real_x, real_w[next(turn) % n_layers])  # noqa: E731
    complex_contract = lambda: torch.bmm(cplx_x, cplx_w[next(turn) % n_layers])  # noqa: E731
    return {
        "rfft (last axis)": lambda: torch.fft.rfft(x, dim=-1),
        "fft of the kept columns": lambda: torch.fft.fft(cols, dim=-1),
        "contraction": (real_contract, complex_contract),
        "ifft of the kept columns": lambda: torch.fft.ifft(cols, dim=-1),
        "irfft (last axis)": lambda: torch.fft.irfft(spec, n=w, dim=-1),
        "1x1 product accumulated, GELU and residual add in place": _layer_tail(c, h * w),
    }


def ffc_kernels(c, shape):
    """{name: call} for one FFC with alpha = 1 (global path only), batch norms folded."""
    h, w = shape
    half_c = c // 2
    z = torch.randn(1, half_c, h, w)
    spec = torch.fft.rfft2(z)
    spec_pixels = spec.shape[-2] * spec.shape[-1]
    return {
        "reduce 1x1 + ReLU": (_mm(c, half_c, h * w), _relu((1, half_c, h, w))),
        "rfft2": lambda: torch.fft.rfft2(z),
        "1x1 product on the spectrum + ReLU": (_mm(2 * half_c, 2 * half_c, spec_pixels),
                                              _relu((1, 2 * half_c, spec_pixels))),
        "irfft2": lambda: torch.fft.irfft2(spec, s=(h, w)),
        "skip add, expand 1x1 + ReLU": (inplace_add((1, half_c, h, w)), _mm(half_c, c, h * w),
                                        _relu((1, c, h, w))),
    }


def ffc_count(model):
    """FFCs in a 2D FNOReg: two per block, an encoder and a decoder block; none without them."""
    return 4 if model.encoder.__class__.__name__ != "Identity" else 0


def timed(calls, repeats):
    """Median seconds of ``calls``: one zero-argument call, or the sum over a tuple of them."""
    if callable(calls):
        return time_call(calls, "cpu", repeats)["seconds"]
    return sum(timed(c, repeats) for c in calls)


def floor_table(model, shape, repeats):
    """Rows (part, count, seconds each) of the floor of ``model`` at ``shape`` (2D FNOReg)."""
    c = model.lifting.out_channels
    p = model.projection[0].out_channels
    n_modes = list(model.layers[0].spectral.n_modes)
    h, w = shape
    rows = []
    for name, call in fourier_layer_kernels(c, shape, n_modes, len(model.layers)).items():
        if name == "contraction":  # the faster of the two layouts
            seconds = min(timed(call[0], repeats), timed(call[1], repeats))
        else:
            seconds = timed(call, repeats)
        rows.append((f"Fourier layer: {name}", len(model.layers), seconds))
    n_ffc = ffc_count(model)
    if n_ffc:
        for name, call in ffc_kernels(c, shape).items():
            rows.append((f"FFC: {name}", n_ffc, timed(call, repeats)))
        rows.append(("FFC block residual add", 2, timed(inplace_add((1, c, h, w)), repeats)))
    rows.append(("lifting 1x1", 1, timed(_mm(2, c, h * w), repeats)))
    rows.append(("projection 1x1 + ReLU + 1x1", 1,
                 timed((_mm(c, p, h * w), _relu((1, p, h, w)), _mm(p, 2, h * w)), repeats)))
    image, flow = torch.rand(1, 1, h, w), 0.01 * torch.randn(1, 2, h, w)
    rows.append(("warp (grid_sample)", 1, timed(lambda: warp(image, flow), repeats)))
    if model.integrate is not None:
        steps = model.integrate.steps
        rows.append(("scaling and squaring: compose + add", steps,
                     timed((lambda: warp(flow, flow, padding="border"), inplace_add((1, 2, h, w))),
                           repeats)))
    return rows


def floor_lines(title, info, script, argv, rows):
    """Markdown lines of a floor report: title, machine, command, the parts table and its sum.

    ``rows`` are (part, count, seconds each); ``argv`` None means the process's own arguments.
    """
    floor = sum(n * s for _, n, s in rows)
    lines = [f"# {title}", "", machine_line(info), "",
             f"Command: `{command_line(script, argv)}`", "",
             "| part | count | ms each | ms total |", "|---|---|---|---|"]
    lines += [f"| {name} | {n} | {1000 * s:.3f} | {1000 * n * s:.2f} |" for name, n, s in rows]
    return lines + [f"| **floor** | | | **{1000 * floor:.1f}** |", ""]


def write_floor(out, stem, lines, payload):
    """Print the report; with ``out``, also write ``<stem>.md`` and ``<stem>.json`` there.

    ``payload["rows"]`` (part, count, seconds) tuples are written as dicts in milliseconds.
    """
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.md").write_text(text)
        rows = [{"part": r[0], "count": r[1], "ms_each": 1000 * r[2]} for r in payload["rows"]]
        (out / f"{stem}.json").write_text(json.dumps({**payload, "rows": rows}, indent=1))


def floor_parser(description, preset, shape, stem):
    """The flags every floor benchmark takes: preset, shape, threads, repeats, output folder."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", default=preset, help="FNOReg 2D preset (small, medium, large)")
    p.add_argument("--shape", type=int, nargs=2, default=list(shape))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--out", help=f"write {stem}.json and {stem}.md here")
    return p


def main(argv=None):
    p = floor_parser(__doc__.splitlines()[0], "large", (160, 192), "floor")
    p.add_argument("--diffeomorphic", action="store_true", help="the configs' diffeomorphic model")
    args = p.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    info = machine_info("cpu")
    shape = tuple(args.shape)
    model = build_model("fnoreg", {"preset": args.preset, "diffeomorphic": args.diffeomorphic}, 2).eval()
    moving, fixed = torch.rand(2, 1, 1, *shape)
    with torch.inference_mode():
        with weight_cache(model):
            before = time_call(lambda: warp(moving, model(moving, fixed)), "cpu", args.repeats)
        rows = floor_table(model, shape, args.repeats)
        with weight_cache(model):  # again after the kernels, so a drifting machine shows
            after = time_call(lambda: warp(moving, model(moving, fixed)), "cpu", args.repeats)
    finish_machine_info(info)
    model_s, model_s2 = before["seconds"], after["seconds"]
    floor = sum(n * s for _, n, s in rows)
    # The median of every model call, before and after: like each kernel's, one median.
    model_ms = 1000 * statistics.median(before["times"] + after["times"] or [model_s, model_s2])
    lines = floor_lines(f"FNOReg {args.preset} inference against its kernels' floor, {shape[0]}x{shape[1]}, batch 1",
                        info, "bench_floor.py", argv, rows)
    lines += [f"Model forward + warp: {1000 * model_s:.1f} ms before the kernels, {1000 * model_s2:.1f} ms after "
              f"(median of {args.repeats} each); **{model_ms / (1000 * floor):.2f}x the floor** (the median of all "
              f"{2 * args.repeats} calls, {model_ms:.1f} ms)."]
    write_floor(args.out, "floor", lines, {
        "machine": info, "preset": args.preset, "shape": shape, "threads": args.threads,
        "model_ms": [1000 * model_s, 1000 * model_s2], "floor_ms": 1000 * floor, "rows": rows,
        "ratio": model_ms / (1000 * floor), "diffeomorphic": args.diffeomorphic})
    return 0 if math.isfinite(floor) else 1


if __name__ == "__main__":
    sys.exit(main())
