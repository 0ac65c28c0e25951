"""Time the metrics on a full-size 3D pair (160x192x224, 35 labels).

Uses the real neurite-OASIS sample label map when ``../shared/oasis_samples`` (or
``$FNOREG_OASIS_SAMPLES``) is present, else a 3D phantom; the moving map is the fixed one
shifted by a few voxels. Run: ``python benchmarks/bench_metrics.py``.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import set_threads  # noqa: E402
from engine.metrics import dice_per_label, folding_percent, hd95_per_label, jacobian_determinant, sdlogj  # noqa: E402


def _labels():
    root = Path(os.environ.get("FNOREG_OASIS_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "oasis_samples"))
    path = root / "3d" / "VXM_TESTSCAN" / "aligned_seg35.nii.gz"
    if path.is_file():
        import nibabel as nib

        return torch.from_numpy(np.asarray(nib.load(path).dataobj).astype(np.int16))[None, None], "OASIS sample"
    from data.phantom import generate_phantom

    return generate_phantom([0], 3)[1], "phantom"


def best_of(fn, repeats=3):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    set_threads(None)  # torch's own thread count; the scripts' allocator settings
    torch.manual_seed(0)
    fixed, source = _labels()
    moving = torch.roll(fixed, (2, 3, -2), dims=(2, 3, 4))
    flow = 0.002 * torch.randn(1, 3, *fixed.shape[2:])
    labels = list(range(1, 36))
    print(f"labels: {source}, shape {tuple(fixed.shape[2:])}, torch threads {torch.get_num_threads()}")
    t_dice = best_of(lambda: dice_per_label(moving, fixed, labels))

    def jac_metrics():
        jac = jacobian_determinant(flow)
        return folding_percent(jacobian=jac), sdlogj(jacobian=jac)

    t_jac = best_of(jac_metrics)
    t_hd = best_of(lambda: hd95_per_label(moving, fixed, labels), repeats=1)
    print(f"Dice (35 labels)        {t_dice:.3f} s")
    print(f"Jacobian+folding+SDlogJ {t_jac:.3f} s")
    print(f"Dice+folding+SDlogJ     {t_dice + t_jac:.3f} s")
    print(f"HD95 (35 labels)        {t_hd:.3f} s")


if __name__ == "__main__":
    main()
