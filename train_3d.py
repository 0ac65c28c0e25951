"""Train a 3D registration model: `python train_3d.py --config_file CONFIG [--gpu_num K] [--exp_num N] [--ckpt_epoch E] [--size S]`."""

import sys

from engine import run_cli
from engine.training import train_main

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: train_main(3, argv)))
