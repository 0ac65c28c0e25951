"""What the benchmark scripts share: the machine description, model entries, sizes, timing and
the JSON / markdown writers.

Every figure a benchmark writes carries :func:`machine_info` (CPU model from ``/proc/cpuinfo``,
torch threads, torch version, device, GPU name, load average before and after), so a table never
travels without the machine that made it.
"""

import datetime
import json
import os
import platform
import re
import shlex
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.allocator import retain_freed_memory  # noqa: E402

CONFIG_DIR = REPO / "configs"
REFERENCE = ("voxelmorph", "vxm2")  # every ratio is to VoxelMorph-2 measured in the same run

# Named sizes of the issue; any "HxW" or "DxHxW" is accepted too (the smoke tests use tiny ones).
NAMED_SIZES = {
    "2d_half": (80, 96),
    "2d_full": (160, 192),
    "3d_half": (80, 96, 112),
    "3d_full": (160, 192, 224),
}
# Presets that fix their own dimension; every other preset runs in 2D and 3D.
DIM_PRESETS = {"small": 2, "medium": 2, "large": 2, "3d": 3}
DIM_MODELS = ("fnoreg", "fno")  # their presets carry a dimension


def parse_size(text):
    """``"2d_half"`` or ``"80x96"`` -> (name, shape tuple)."""
    if text in NAMED_SIZES:
        return text, NAMED_SIZES[text]
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise SystemExit(f"error: size {text!r} is neither one of {', '.join(NAMED_SIZES)} nor HxW / DxHxW")
    return "x".join(map(str, shape)), shape


def shape_text(shape):
    return "x".join(map(str, shape))


# ----------------------------------------------------------------------------------- machine
def cpu_model():
    """CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device):
    """Everything a figure should state about the machine that made it."""
    device = torch.device(device)
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "host": socket.gethostname(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def finish_machine_info(info):
    """Add the load average at the end of the run (a loaded machine gives noisy figures)."""
    try:
        info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def command_line(script, argv=None):
    """The command that made a result, ready to paste into a shell (arguments quoted as needed).

    ``argv`` None means the process's own arguments; ``script`` is the file name in benchmarks/.
    """
    return f"python benchmarks/{script} " + shlex.join(sys.argv[1:] if argv is None else argv)


def machine_line(info):
    """One line for a markdown file or a plot title."""
    where = info.get("gpu") or info["cpu"]
    text = f"{where}; device {info['device']}, torch threads {info['torch_threads']}, torch {info['torch']}"
    if "loadavg_start" in info:
        text += f"; load average {info['loadavg_start'][0]:.2f} at start"
        if "loadavg_end" in info:
            text += f", {info['loadavg_end'][0]:.2f} at end"
    return text


def set_threads(threads):
    """``--threads``: torch intra-op threads (default: torch's own choice, stated in every figure).

    Also sets the process up as the scripts' :func:`utils.cli.run_cli` does (freed memory kept
    for reuse, :mod:`utils.allocator`), so the figures are what the scripts see.
    """
    retain_freed_memory()
    if threads:
        torch.set_num_threads(int(threads))


# ------------------------------------------------------------------------------------ models
@dataclass
class Entry:
    """One model to benchmark: a label, what builds it, and the training settings of its config."""

    label: str
    model_name: str
    model_config: dict
    dims: tuple = (2, 3)
    train_config: dict = field(default_factory=dict)  # per dim: {dim: resolved-ish train_config}
    config_file: str = None

    def batch_size(self, dim):
        return int(self.train_config.get(dim, {}).get("batch_size", 8 if dim == 2 else 1))

    def loss_settings(self, dim):
        tc = self.train_config.get(dim, {})
        seg = tc.get("seg_param", 0.0 if dim == 2 else 0.01)
        return {"similarity": tc.get("similarity", "mse"), "reg_param": tc.get("reg_param", 0.01),
                "seg_param": seg, "ncc_window": tc.get("ncc_window", 9), "jac_param": tc.get("jac_param", 0.0)}


def _read_config(path):
    with open(path) as f:
        return json.load(f)


def published_configs():
    """{(model_name, preset, dim): (train_config, file name)} of the plain published configs in ``configs/``.

    A config counts when its ``model_config`` is only a preset (no overrides, no diffeomorphic
    variant) and its name is not a demo.
    """
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        if path.name.startswith("demo"):
            continue
        try:
            cfg = _read_config(path)
        except (OSError, ValueError):
            continue
        mc = cfg.get("model_config", {})
        if set(mc) != {"preset"} or "model_name" not in cfg:
            continue
        dim = cfg.get("dim") or DIM_PRESETS.get(mc["preset"], 2)
        out.setdefault((cfg["model_name"], mc["preset"], dim), (cfg.get("train_config", {}), path.name))
    return out


def all_presets():
    """{model_name: [preset, ...]} from the model registry."""
    from models import list_presets

    return {name: list(presets) for name, presets in list_presets().items()}


def preset_dims(model_name, preset):
    if model_name in DIM_MODELS and preset in DIM_PRESETS:
        return (DIM_PRESETS[preset],)
    return (2, 3)


def make_entry(model_name, preset, configs=None):
    configs = published_configs() if configs is None else configs
    dims = preset_dims(model_name, preset)
    tcs = {d: configs[(model_name, preset, d)][0] for d in dims if (model_name, preset, d) in configs}
    files = [configs[(model_name, preset, d)][1] for d in dims if (model_name, preset, d) in configs]
    return Entry(f"{model_name}/{preset}", model_name, {"preset": preset}, dims, tcs, ", ".join(files) or None)


def config_entry(label, path):
    """An extra entry from a config file (``--configs LABEL=path.json``): its model and train_config."""
    cfg = _read_config(path)
    if "model_name" not in cfg:
        raise SystemExit(f"error: {path} has no model_name")
    mc = dict(cfg.get("model_config", {}))
    dim = cfg.get("dim")
    if dim is None and cfg["model_name"] in DIM_MODELS:
        dim = DIM_PRESETS.get(mc.get("preset"))
    dims = (dim,) if dim else (2, 3)
    tc = cfg.get("train_config", {})
    return Entry(label, cfg["model_name"], mc, dims, {d: tc for d in dims}, str(path))


def parse_models(names, extra_configs=(), add_reference=True):
    """``--models`` (``name`` = all its presets, or ``name/preset``) and ``--configs LABEL=path``.

    The reference model (VoxelMorph vxm2) is always added first unless ``add_reference`` is False.
    """
    presets = all_presets()
    configs = published_configs()
    entries = []
    for name in names or sorted(presets):
        model_name, _, preset = name.partition("/")
        if model_name not in presets:
            raise SystemExit(f"error: unknown model {model_name!r}; available: {', '.join(sorted(presets))}")
        if preset and preset not in presets[model_name]:
            raise SystemExit(f"error: unknown preset {preset!r} of {model_name}; available: "
                             f"{', '.join(presets[model_name])}")
        for p in [preset] if preset else presets[model_name]:
            entries.append(make_entry(model_name, p, configs))
    for item in extra_configs or ():
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).stem, item
        entries.append(config_entry(label, path))
    if add_reference and not any(e.model_name == REFERENCE[0] and e.model_config == {"preset": REFERENCE[1]}
                                 for e in entries):
        entries.insert(0, make_entry(*REFERENCE, configs))
    seen, out = set(), []
    for e in entries:
        if e.label not in seen:
            seen.add(e.label)
            out.append(e)
    return out


def is_reference(entry):
    return entry.model_name == REFERENCE[0] and entry.model_config == {"preset": REFERENCE[1]}


def build(entry, dim, device):
    """The entry's model for ``dim`` on ``device`` (gradients on: a normal trainable model)."""
    from models import build_model

    with torch.inference_mode(False):
        return build_model(entry.model_name, entry.model_config, dim).to(device)


def cannot_run(model, shape):
    """A one-line reason when ``model`` refuses ``shape`` (cheap, nothing runs), else None."""
    check = getattr(model, "check_input_shape", None)
    if check is None:
        return None
    try:
        check(tuple(shape))
    except Exception as exc:  # InputSizeError: the message names the model and the nearest sizes
        text = str(exc)
        text = text.split(":", 1)[1] if ":" in text else text
        return text.split(";", 1)[0].strip()
    return None


# ------------------------------------------------------------------------------------ timing
def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def unmeasured_text(cell):
    """A table's text for a cell that was not measured (``""`` for no cell), or None for a measured one."""
    if cell is None:
        return ""
    if cell["status"] != "ok":
        return f"{cell['status']} ({cell['reason']})" if cell.get("reason") else cell["status"]
    return None


def time_call(fn, device, repeats, max_seconds=None):
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call, synchronised.

    With ``max_seconds``, the number of timed calls is cut so that the cell stays within about
    that budget; when even one more call would exceed it, the warm-up call's time is returned
    and flagged approximate (it includes one-off costs, so it is an upper bound).

    Returns
    -------
    dict
        ``seconds`` (median), ``times`` (every timed call), ``warmup_s``, ``approx`` (bool).
    """
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    warmup = time.perf_counter() - start
    n = repeats
    if max_seconds is not None and warmup > 0:
        n = min(repeats, int(max(0.0, max_seconds - warmup) // warmup))
    times = []
    for _ in range(n):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    if not times:
        return {"seconds": warmup, "times": [], "warmup_s": warmup, "approx": True}
    return {"seconds": statistics.median(times), "times": times, "warmup_s": warmup, "approx": False}


def available_memory_bytes():
    """MemAvailable from /proc/meminfo (None elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def status_bytes(key):
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_resident():
    """Restart this process's peak resident memory (``VmHWM``) from now; False where Linux refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------- writing
def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(out_dir, stem, payload, markdown):
    """``out_dir/<stem>.json`` and ``out_dir/<stem>.md``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=jsonable) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def jsonable(value):
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fmt(value, digits=3):
    """A number for a table cell; None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def fmt_seconds(seconds):
    """Seconds in a unit that keeps three significant figures readable (ms below 1 s)."""
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def short_reason(text, width=80):
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= width else text[: width - 1] + "…"
