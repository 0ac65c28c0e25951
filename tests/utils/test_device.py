"""utils.device: the device a flag selects (CUDA calls stood in for where there is no GPU)."""

import pytest
import torch

from utils.device import select_device
from utils.errors import UserError


def test_a_gpu_becomes_the_current_device(monkeypatch):
    """Streams and CUDA graphs default to the current device: it must be the selected one."""
    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert select_device(1) == torch.device("cuda:1") and made_current == [1]
    with pytest.raises(UserError, match="only 2 GPU"):
        select_device(2)
    assert made_current == [1]


def test_the_cpu_is_said(capsys):
    assert select_device(-1) == torch.device("cpu")
    assert "running on the CPU" in capsys.readouterr().err


def test_device_constant_is_kept_per_arguments_and_usable_in_training():
    from utils.device import device_constant

    made = []

    @device_constant(maxsize=4)
    def ramp(n, device):
        made.append(n)
        return torch.arange(n, dtype=torch.float32).to(device)

    with torch.inference_mode():  # first made during an evaluation...
        first = ramp(3, torch.device("cpu"))
    assert ramp(3, torch.device("cpu")) is first and made == [3]
    assert not first.is_inference() and not first.requires_grad
    w = torch.ones(3, requires_grad=True)
    (w * first).sum().backward()  # ...then read in a training step
    assert torch.equal(w.grad, first)
