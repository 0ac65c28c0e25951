"""Device selection for ``--gpu_num``, and constants kept per device."""

import functools
import sys

import torch


def select_device(gpu_num, quiet=False):
    """``cuda:<gpu_num>`` when CUDA has that GPU (made the current device); the CPU for -1 or when CUDA is absent.

    Falling back to the CPU prints one line, so a run on the wrong device is never silent.
    An index beyond the visible GPUs is a ValueError naming how many there are.
    """
    if gpu_num is None or gpu_num < 0:
        if not quiet:
            print("notice: running on the CPU (--gpu_num -1)", file=sys.stderr)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if not quiet:
            print(f"notice: CUDA is not available; running on the CPU instead of cuda:{gpu_num}", file=sys.stderr)
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if gpu_num >= count:
        from utils.errors import UserError

        raise UserError(f"--gpu_num {gpu_num} but only {count} GPU(s) are visible (0..{count - 1}); pick one or -1")
    # The current device too: streams, CUDA graphs and PyTorch's own context default to it, and
    # left at 0 a run on GPU 1 would also hold a context (memory) on GPU 0.
    torch.cuda.set_device(gpu_num)
    return torch.device(f"cuda:{gpu_num}")


def synchronize(device):
    """Wait for queued work on ``device`` (a no-op on the CPU); needed for honest timings."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cuda_graphs_on(requested, device):
    """Whether ``--cuda_graphs`` takes effect on ``device``; a notice when it was asked for on the CPU."""
    if requested and torch.device(device).type != "cuda":
        print("notice: --cuda_graphs has no effect on the CPU", file=sys.stderr)
        return False
    return bool(requested)


def device_constant(maxsize):
    """Decorator: keep a function's tensor per arguments (an LRU cache), made with inference mode
    and autograd off.

    For the small constants that models and losses make from host values (a unit scale, a label
    list, weights of frequency bins, an attention mask): made afresh on a GPU in every call, a
    tensor from host data is a copy from pageable memory that waits for the stream, and a CUDA
    graph cannot capture it; made once per shape, dtype and device (the function's arguments), it
    is neither. Made outside inference mode, it is usable in training and evaluation alike. Callers
    must never write into the tensor it returns.
    """
    def decorate(fn):
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(fn)
        def kept(*args):
            with torch.inference_mode(False), torch.no_grad():
                return fn(*args)
        return kept
    return decorate
