"""The command-line flags shared by the four scripts, and the error boundary around them."""

import argparse
import sys

from utils.allocator import retain_freed_memory
from utils.errors import UserError


def train_parser(dim):
    """Flags of ``train_<dim>d.py``."""
    parser = argparse.ArgumentParser(
        prog=f"train_{dim}d.py",
        description=f"Train a {dim}D registration model; each new run gets experiments/{dim}d/exp<N>/.",
    )
    parser.add_argument("--config_file", help="JSON config: a path, or a file name in configs/ "
                        "(required unless --exp_num restarts or resumes an experiment)")
    parser.add_argument("--gpu_num", type=int, default=0, help="GPU index (cuda:K); -1 runs on the CPU (default 0)")
    parser.add_argument("--exp_num", type=int, help="restart experiment N from scratch with its stored config.json, "
                        "or resume it with --ckpt_epoch (a --config_file given too is only compared with it)")
    parser.add_argument("--ckpt_epoch", type=int, help="with --exp_num: resume from the checkpoint of this epoch")
    parser.add_argument("--size", type=int, help="smallest side of the training shape (160 full, 80 half)")
    add_cuda_graphs_argument(parser, training=True)
    return parser


def evaluate_parser(dim):
    """Flags of ``evaluate_<dim>d.py``."""
    parser = argparse.ArgumentParser(
        prog=f"evaluate_{dim}d.py",
        description=f"Evaluate a trained {dim}D experiment on its test split at full resolution.",
    )
    parser.add_argument("--exp_num", type=int, required=True, help="experiment number to evaluate")
    parser.add_argument("--config_file", help="JSON config whose data_config replaces the experiment's stored one "
                        "for this evaluation (other data, or data moved elsewhere); outputs go to folders named by "
                        "that data")
    parser.add_argument("--gpu_num", type=int, default=0, help="GPU index (cuda:K); -1 runs on the CPU (default 0)")
    parser.add_argument("--ckpt_epoch", type=int, help="evaluate the checkpoint of this epoch instead of weights.pth")
    parser.add_argument("--size", type=int, nargs="+", help="evaluation size(s), smallest side (default: full)")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="split to evaluate (default test)")
    return parser


def add_cuda_graphs_argument(parser, training=False):
    """``--cuda_graphs``: inference (:mod:`models.graphed`) or, with ``training``, the training
    step's forward and backward pass (:mod:`utils.training_graphs`) replayed from CUDA graphs."""
    what = "each training step's forward and backward pass" if training else "each forward pass"
    parser.add_argument("--cuda_graphs", action="store_true",
                        help=f"on a GPU, replay {what} from CUDA graphs captured per input shape "
                        "(fewer kernel launches; checked against the eager pass when captured; opt-in)")


def run_cli(main, argv=None):
    """Run ``main(argv)``; a UserError becomes one line on stderr and exit status 2.

    Sets the process up first: freed memory is kept for reuse (:mod:`utils.allocator`).
    """
    retain_freed_memory()
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
