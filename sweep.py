"""Hyperparameter grid search (companion paper, section 4.3); see engine/sweep.py.

`python sweep.py --config_file BASE --dim 2|3 --param reg_param --values 0.001 0.01 0.1 [--gpus 0 1] [--set K=V]`
`python sweep.py --mode coordinate --config_file BASE --dim 2 --stage1_param reg_param --stage1_values ...
                 --stage2_param seg_param --stage2_values ... [--stage2_config BASE3D --stage2_dim 3]`
"""

import sys

from engine import run_cli
from engine.sweep import sweep_main

if __name__ == "__main__":
    sys.exit(run_cli(sweep_main))
