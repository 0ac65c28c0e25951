"""Inference time per pair (forward + warp) of every preset, and the spectral contraction.

Run: ``python benchmarks/bench_model.py [--gpu_num K] [--presets small medium] [--repeats 5]``.
Times are the best of ``repeats`` after a warm-up, with device synchronisation, under
``torch.inference_mode()``; on CUDA the peak memory is reported too. The second table compares
neuraloperator's own ``SpectralConv`` with ``models.spectral.SpectralConv``
(same weights, same result) for one 32-channel layer with (60, 72) modes at 160x192: the
project's layer reuses its reconstructed Tucker weight inside ``models.spectral.weight_cache``
(entered here, as every evaluation does), while neuraloperator's rebuilds it on every call.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import set_threads  # noqa: E402
from models import build_model, count_parameters, warp  # noqa: E402
from models.spectral import SpectralConv, weight_cache  # noqa: E402
from utils.device import select_device, synchronize  # noqa: E402

PRESET_DIMS = {"small": 2, "medium": 2, "large": 2, "3d": 3}
SIZES = {2: [(80, 96), (160, 192)], 3: [(80, 96, 112), (160, 192, 224)]}


def timed(fn, device, repeats):
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def bench_presets(device, presets, repeats):
    print("| preset | parameters | shape | s / pair | peak MiB |\n|---|---|---|---|---|")
    for preset in presets:
        dim = PRESET_DIMS[preset]
        with torch.inference_mode(False):  # as evaluation does: a normal model, run in inference mode
            model = build_model("fnoreg", {"preset": preset}, dim).to(device).eval()
        for shape in SIZES[dim]:
            if device.type == "cpu" and dim == 3 and shape[0] > 80:
                continue  # minutes per pair on a CPU
            moving, fixed = torch.rand(2, 1, 1, *shape, device=device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with weight_cache(model):  # as an evaluation runs it: spectral weights rebuilt once
                seconds = timed(lambda: warp(moving, model(moving, fixed)), device, repeats)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            print(f"| {preset} | {count_parameters(model):,} | {'x'.join(map(str, shape))} | {seconds:.4f} | {peak:.0f} |")


@torch.inference_mode()
def bench_contraction(device, repeats):
    from neuralop.layers.spectral_convolution import SpectralConv as NeuralopSpectralConv

    print("\n| spectral layer (32 ch, modes 60x72, 160x192) | factorization | batch | s / call |\n|---|---|---|---|")
    for batch in (1, 8):
        x = torch.randn(batch, 32, 160, 192, device=device)
        for factorization in ("tucker", None):
            torch.manual_seed(0)
            with torch.inference_mode(False):
                ref = NeuralopSpectralConv(32, 32, (60, 72), bias=False, factorization=factorization, rank=0.42)
                ours = SpectralConv(32, 32, (60, 72), bias=False, factorization=factorization, rank=0.42)
                ours.load_state_dict(ref.state_dict())
            for name, layer in (("neuraloperator", ref.to(device)), ("models.spectral", ours.to(device))):
                with weight_cache(layer):  # no-op for neuraloperator's layer, which rebuilds every call
                    seconds = timed(lambda: layer(x), device, repeats)
                print(f"| {name} | {factorization or 'dense'} | {batch} | {seconds:.4f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu_num", type=int, default=-1)
    parser.add_argument("--presets", nargs="+", default=list(PRESET_DIMS), choices=list(PRESET_DIMS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    set_threads(None)  # torch's own thread count; the scripts' allocator settings
    device = select_device(args.gpu_num)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    bench_presets(device, args.presets, args.repeats)
    bench_contraction(device, args.repeats)


if __name__ == "__main__":
    main()
