"""Checkpoints: atomic writes, ``weights_only`` loads, and models that carry their own config.

A checkpoint (``checkpoints/ckpt_epoch<E>.pt``) holds everything a resume needs: model,
optimizer and LR-schedule states, RNG states, the epoch counter, the step inside the epoch
(non-zero only for a checkpoint written on interruption) and the metric history. Final weights
(``weights.pth``) hold the model state and the model name and config that rebuild it.
Everything is stored as tensors, numbers, strings, lists and dicts, so ``torch.load`` runs with
``weights_only=True``.
"""

import re
import sys
from pathlib import Path

import torch

from models.registry import build_model, stored_model_config
from utils.errors import UserError
from utils.fileio import atomic_torch_save

_CKPT = re.compile(r"^ckpt_epoch(\d+)\.pt$")


def checkpoint_path(folder, epoch):
    return Path(folder) / "checkpoints" / f"ckpt_epoch{epoch}.pt"


def list_checkpoint_epochs(folder):
    """Sorted epochs that have a checkpoint in ``folder/checkpoints``."""
    ckpt_dir = Path(folder) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _CKPT.match(p.name)))


def save_checkpoint(folder, epoch, state):
    """Write ``state`` as the checkpoint of ``epoch`` atomically; returns its path."""
    path = checkpoint_path(folder, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)
    return path


def _load(path, what):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
        raise UserError(f"{what} {path} cannot be read ({type(exc).__name__}: {exc}); it may be damaged") from None


def load_checkpoint(folder, epoch):
    """Load the checkpoint of ``epoch``; a missing one is a UserError listing those that exist."""
    path = checkpoint_path(folder, epoch)
    if not path.is_file():
        epochs = list_checkpoint_epochs(folder)
        have = ", ".join(map(str, epochs)) if epochs else "none"
        raise UserError(f"no checkpoint for epoch {epoch} in {path.parent} (existing checkpoint epochs: {have})")
    return _load(path, "checkpoint")


def weights_payload(model, epoch, train_size, config=None):
    """What ``weights.pth`` holds: the state, the config that rebuilds the model, and (``config``)
    the whole experiment config it was trained with, as a checkpoint holds it."""
    module = getattr(model, "module", model)
    return {
        "model_name": module.model_name,
        "model_config": module.model_config,
        "state_dict": module.state_dict(),
        "epoch": epoch,
        "train_size": list(train_size),
        "config": config,
    }


def save_weights(folder, model, epoch, train_size, config=None):
    """Write the final ``weights.pth`` atomically (``config``: the experiment config trained with)."""
    path = Path(folder) / "weights.pth"
    atomic_torch_save(weights_payload(model, epoch, train_size, config), path)
    return path


def load_model(folder, ckpt_epoch=None, device="cpu"):
    """Rebuild an experiment's model from its final weights or the checkpoint of ``ckpt_epoch``.

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on ``device``.
    info : dict
        ``checkpoint`` (a tag such as "final" or "epoch20"), ``epoch`` (completed epochs),
        ``train_size``, ``path``, ``model_config`` (the one stored with the weights, which built
        the model; editing the experiment's ``config.json`` does not change it),
        ``partial_epoch_steps`` (steps of the next epoch also done: non-zero only for a checkpoint
        written on an interruption, which a notice on stderr then points out), ``config`` (the
        experiment config the file was trained with, as stored; None in weights written before
        2026-11-30).
    """
    folder = Path(folder)
    if ckpt_epoch is None:
        path = folder / "weights.pth"
        if not path.is_file():
            epochs = list_checkpoint_epochs(folder)
            hint = f"pass --ckpt_epoch (existing checkpoint epochs: {', '.join(map(str, epochs))})" if epochs else \
                "the experiment has no checkpoints yet"
            raise UserError(f"{path} does not exist: training has not finished; {hint}")
        payload, tag = _load(path, "weights file"), "final"
    else:
        payload, tag = load_checkpoint(folder, ckpt_epoch), f"epoch{ckpt_epoch}"
        path = checkpoint_path(folder, ckpt_epoch)
    model_state = payload["state_dict"] if "state_dict" in payload else payload["model"]
    payload["model_config"] = stored_model_config(payload["model_name"], payload["model_config"])
    dim = payload["model_config"]["dim"]
    model = build_model(payload["model_name"], payload["model_config"], dim)
    model.load_state_dict(model_state)
    model.to(device).eval()
    info = {"checkpoint": tag, "epoch": payload.get("epoch"), "train_size": payload.get("train_size"), "path": str(path),
            "model_config": payload["model_config"], "partial_epoch_steps": payload.get("step", 0),
            "config": payload.get("config")}
    if info["partial_epoch_steps"]:
        # Only an interrupted run that was never resumed past it leaves such a file (engine.train_loop).
        print(f"notice: {path} was written on an interruption: the state after epoch {info['epoch']} plus "
              f"{info['partial_epoch_steps']} steps of epoch {info['epoch'] + 1}", file=sys.stderr)
    return model, info


FOLD_REPAIR_CHOICES = ("on", "off")


def add_fold_repair_argument(parser, outputs=""):
    """``--fold_repair on|off`` for a script that loads a trained model (:func:`set_fold_repair`)."""
    parser.add_argument("--fold_repair", choices=FOLD_REPAIR_CHOICES,
                        help="override the trained FNOReg's fold_repair: off gives the network's own field, on adds "
                        f"the repair{outputs} (default: as trained)")


def set_fold_repair(model, info, setting):
    """Override a loaded model's ``fold_repair`` for this run (``--fold_repair on|off``).

    The model config stored with the weights decides by default (``setting`` None). With
    ``"off"`` an FNOReg trained with ``fold_repair`` reports its network's own field; with
    ``"on"`` one trained without it gets the repair. The returned ``info`` records the config that
    actually ran, so summaries never claim a repair that did not happen.

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`load_model`.
    info : dict
        :func:`load_model`'s info; not modified.
    setting : {"on", "off"} or None

    Returns
    -------
    dict
        ``info`` with ``model_config["fold_repair"]`` as run and ``fold_repair_override`` set.

    Raises
    ------
    UserError
        A setting other than on/off, or a model without the option (baselines).
    """
    if setting is None:
        return info
    if setting not in FOLD_REPAIR_CHOICES:
        raise UserError(f"--fold_repair must be on or off, got {setting!r}")
    if not hasattr(model, "fold_repair"):
        raise UserError(f"--fold_repair applies to FNOReg models only; this experiment's model is "
                        f"{type(model).__name__}, whose fields are never repaired; drop the flag")
    model.fold_repair = setting == "on"
    return {**info, "model_config": {**info["model_config"], "fold_repair": model.fold_repair},
            "fold_repair_override": setting}
