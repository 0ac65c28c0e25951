"""Where an evaluation writes: one folder per checkpoint, size, data and option, never shared.

``experiments/<d>d/exp<N>/eval/<checkpoint>_<size>[_<data tag>][_evalgrid][_refine<K>][_repair<on|off>][_val]``;
the data tag names data other than what the weights were trained with (:func:`data_tag`).
"""

import hashlib
import json
import re
from pathlib import Path


def output_folder(exp_folder, checkpoint, size, split="test", data_tag=None, score_on="native", refine=0,
                  fold_repair=None):
    """``exp_folder/eval/<checkpoint>_<size>[_<data_tag>][_evalgrid][_refine<K>][_repair<on|off>][_val]``.

    Parameters
    ----------
    exp_folder : path-like
        The experiment folder.
    checkpoint : str
        "final" or "epoch<E>".
    size : int
        Smallest side of the evaluation shape.
    split : {"test", "val"}
        ``_val`` is appended for the validation split.
    data_tag : str, optional
        Names data other than the experiment's own (:func:`data_tag`); None for its own data.
    score_on : {"native", "eval"}
        ``_evalgrid`` is appended for ``eval`` (label maps subsampled to the evaluation grid).
    refine : int
        ``_refine<K>`` is appended for ``K`` refinement steps.
    fold_repair : {"on", "off"}, optional
        ``_repair<on|off>`` is appended when ``--fold_repair`` overrides the trained setting.
    """
    name = f"{checkpoint}_{size}"
    if data_tag:
        name += f"_{data_tag}"
    if score_on == "eval":
        name += "_evalgrid"
    if refine:
        name += f"_refine{refine}"
    if fold_repair:
        name += f"_repair{fold_repair}"
    if split != "test":
        name += f"_{split}"
    return Path(exp_folder) / "eval" / name


def data_tag(data_config, stored_data_config):
    """Folder tag of the data an evaluation runs on; None when it is the experiment's own data.

    The tag is the data's name (the root folder's name for OASIS-layout data, ``phantom`` for the
    phantom) and six hex digits of a hash of the whole resolved ``data_config``, so two datasets
    with the same folder name, or the same data at another root, never share an output folder.
    """
    if data_config == stored_data_config:
        return None
    name = Path(str(data_config["root"])).name if data_config.get("root") else data_config["dataset"]
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-.") or data_config["dataset"]
    digest = hashlib.sha1(json.dumps(data_config, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{name}-{digest}"
