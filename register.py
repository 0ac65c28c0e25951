"""Register your own NIfTI pair with a trained experiment.

`python register.py --exp_num N --dim 2|3 --moving M.nii.gz --fixed F.nii.gz --out DIR [--moving_seg S]
[--fixed_seg T] [--ckpt_epoch E] [--gpu_num K] [--rescale] [--refine K [--refine_lr L]] [--fold_repair on|off]`;
see engine/registration_io.py for the conventions.
"""

import sys

from engine import run_cli
from engine.registration_io import register_main

if __name__ == "__main__":
    sys.exit(run_cli(register_main))
