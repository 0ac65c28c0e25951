"""Evaluate a 3D experiment (see engine/evaluation.py).

`python evaluate_3d.py --exp_num N [--gpu_num K] [--ckpt_epoch E] [--size S ...] [--split val|test]`
"""

import sys

from engine import run_cli
from engine.evaluation import evaluate_main

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: evaluate_main(3, argv)))
