"""Helpers shared by the model tests: a phantom pair, one training step, README counts, inference checks."""

import re
from pathlib import Path

import pytest
import torch

from data.phantom import generate_phantom
from losses.registration import RegistrationLoss
from models import warp

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture()
def phantom_pair():
    """``phantom_pair(dim, shape)`` -> (moving, fixed), two phantom subjects (1, 1, *shape)."""

    def make(dim, shape):
        images, _ = generate_phantom([0, 1], dim, shape, seed=0)
        return images[0:1], images[1:2]

    return make


@pytest.fixture()
def one_step():
    """``one_step(model, moving, fixed, lr)`` -> (loss before, loss after) one Adam step on the pair."""

    def step(model, moving, fixed, lr=1e-3):
        loss_fn = RegistrationLoss("mse", reg_param=0.01)

        def loss():
            flow = model(moving, fixed)
            return loss_fn(fixed, warp(moving, flow), flow)[0]

        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        before = loss()
        optimizer.zero_grad()
        before.backward()
        optimizer.step()
        with torch.no_grad():
            after = loss()
        return before.item(), after.item()

    return step


@pytest.fixture(scope="session")
def readme_counts():
    """{(model, preset, dim): count} from the README's model table rows ``| `model/preset` | 2D | 1,234 |``."""
    text = README.read_text() if README.exists() else ""
    rows = re.findall(r"^\|\s*`(\w+)/(\w+)`\s*\|\s*([23])D\s*\|\s*([\d,]+)\s*\|", text, flags=re.M)
    return {(model, preset, int(dim)): int(count.replace(",", "")) for model, preset, dim, count in rows}


@pytest.fixture()
def inference_matches():
    """``inference_matches(module, x, reference)``: the module's inference pass (in place, folded)
    equals ``reference(module, x)``, the formula written out, computed without gradients."""

    def check(module, x, reference):
        with torch.no_grad():
            expected = reference(module, x)
        with torch.inference_mode():
            fast = module(x)
        torch.testing.assert_close(fast, expected)
        return expected

    return check
