"""Evaluate a 2D experiment (see engine/evaluation.py).

`python evaluate_2d.py --exp_num N [--gpu_num K] [--ckpt_epoch E] [--size S ...] [--split val|test]`
"""

import sys

from engine import run_cli
from engine.evaluation import evaluate_main

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: evaluate_main(2, argv)))
