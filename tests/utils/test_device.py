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
