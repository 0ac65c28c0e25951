"""The report of ``bench_speed.py``: ratios to vxm2, cost-growth exponents, markdown tables, the plot."""

import math

from benchmarks.common import fmt_seconds, machine_line, markdown_table, shape_text, unmeasured_text

MODES = ("inference", "training")


def add_ratios(cells):
    """``ratio_to_vxm2``: time per pair / VoxelMorph vxm2's on the same device, size and mode."""
    ref = {(c["device"], c["size"], c["mode"]): c["seconds_per_pair"] for c in cells
           if c["status"] == "ok" and c["model_name"] == "voxelmorph" and c["model_config"] == {"preset": "vxm2"}}
    for c in cells:
        r = ref.get((c["device"], c["size"], c["mode"]))
        c["ratio_to_vxm2"] = c["seconds_per_pair"] / r if c["status"] == "ok" and r else None


def scaling_exponents(cells):
    """{device: {"label (dD)": {mode: slope}}}: least-squares slope of log(time per pair) on log(pixels).

    One fit per dimension: a model run in 2D and 3D is two architectures' worth of kernels (a
    2D and a 3D convolution), and one line through both would mix their costs.
    """
    out = {}
    groups = {}
    for c in cells:
        if c["status"] == "ok":
            key = (c["device"], f"{c['label']} ({c['dim']}D)", c["mode"])
            groups.setdefault(key, []).append((c["pixels"], c["seconds_per_pair"]))
    for (device, label, mode), points in groups.items():
        if len({p for p, _ in points}) < 2:
            continue
        xs = [math.log(p) for p, _ in points]
        ys = [math.log(t) for _, t in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        out.setdefault(device, {}).setdefault(label, {})[mode] = slope
    return out


def _cell_text(c):
    text = unmeasured_text(c)
    if text is not None:
        return text
    approx = "≈" if c["approx"] else ""
    ratio = f" · {c['ratio_to_vxm2']:.2f}×" if c.get("ratio_to_vxm2") else ""
    eager = " (eager)" if c.get("graph_eager") else ""  # a graph asked for and not used, either mode
    if c["mode"] == "inference":
        return f"{approx}{fmt_seconds(c['seconds_per_pair'])}{ratio}{eager}"
    return f"{approx}{c['pairs_per_s']:.3g} pairs/s (b{c['batch']}){ratio}{eager}"


def markdown(result):
    info = result["machine"]
    lines = ["# Speed", "", f"Machine: {machine_line(info)}.", ""]
    lines.append(f"Command: `{result['command']}`")
    lines.append("")
    lines.append("Ratio (·): time per pair ÷ VoxelMorph vxm2's time per pair in the same run, same device "
                 "and size (> 1: slower). ≈: timed by the warm-up call alone (an upper bound), the cell's "
                 "budget (`--max_seconds`) allowing no more.")
    if result["settings"].get("cuda_graphs"):
        lines.append("")
        lines.append("On CUDA, inference and the training step's forward and backward pass replayed from "
                     "CUDA graphs (`--cuda_graphs`: models/graphed.py, utils/training_graphs.py); (eager): a "
                     "model whose call could not be captured ran eagerly (the reason is in `speed.json`, "
                     "`graph_eager`). Each capture is timed apart from the cell (`capture_s`).")
    if result["settings"].get("mixed_precision"):
        lines.append("")
        lines.append(f"Training steps in mixed precision (`--mixed_precision {result['settings']['mixed_precision']}`, "
                     "as `train_config.mixed_precision`: the network under autocast, FFTs, spectral layers, "
                     "warp and loss in float32; utils/precision.py); inference in float32.")
    cells = result["cells"]
    sizes = list(dict.fromkeys(c["size"] for c in cells))
    for device in dict.fromkeys(c["device"] for c in cells):
        for mode in MODES:
            sel = [c for c in cells if c["device"] == device and c["mode"] == mode]
            if not sel:
                continue
            title = ("Inference, time per pair (batch 1, forward + warp)" if mode == "inference" else
                     "Training throughput (forward, loss, backward, Adam; config batch size)")
            lines += ["", f"## {title}, {device}", ""]
            labels = list(dict.fromkeys(c["label"] for c in sel))
            header = ["model", "parameters"] + [_size_header(sel, s) for s in sizes]
            rows = []
            for label in labels:
                by_size = {c["size"]: c for c in sel if c["label"] == label}
                params = sorted({c["n_params"] for c in by_size.values()})
                rows.append([f"`{label}`", " / ".join(f"{p:,}" for p in params)]
                            + [_cell_text(by_size.get(s)) for s in sizes])
            lines.append(markdown_table(header, rows))
    slopes = result.get("scaling_exponents", {})
    if slopes:
        lines += ["", "## Cost growth: exponent of time per pair against pixel count (log-log slope)", ""]
        rows = [[device, f"`{label}`", *(f"{m.get(mode):.2f}" if m.get(mode) is not None else "–" for mode in MODES)]
                for device, per in slopes.items() for label, m in per.items()]
        lines.append(markdown_table(["device", "model", "inference", "training"], rows))
        lines += ["", "![time per pair against pixels](speed_scaling.png)"]
    return "\n".join(lines)


def _size_header(cells, size):
    shape = shape_text(next(c["shape"] for c in cells if c["size"] == size))
    return size if size == shape else f"{size} ({shape})"


def plot(result, path):
    """Log-log time per pair against pixels: one line per model, a panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in result["cells"] if c["status"] == "ok"]
    if not cells:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    devices = list(dict.fromkeys(c["device"] for c in cells))
    labels = list(dict.fromkeys(c["label"] for c in cells))
    colours = plt.get_cmap("tab20")
    for ax, mode in zip(axes, MODES):
        for i, label in enumerate(labels):
            for j, device in enumerate(devices):
                name = label + (f" ({device})" if len(devices) > 1 else "")
                for dim in (2, 3):  # 2D and 3D as separate lines, as their fits are; one legend entry
                    pts = sorted((c["pixels"], c["seconds_per_pair"]) for c in cells if c["label"] == label
                                 and c["mode"] == mode and c["device"] == device and c["dim"] == dim)
                    if pts:
                        ax.plot(*zip(*pts), marker="osD^v<>p"[i % 8], linestyle=["-", "--", ":"][j % 3],
                                color=colours(i % 20), label=name)
                        name = None
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels / voxels per image")
        ax.set_ylabel("seconds per pair")
        ax.set_title("inference (batch 1, forward + warp)" if mode == "inference" else
                     "training step per pair (config batch)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", ncol=1)
    fig.suptitle("Time per pair against image size\n" + machine_line(result["machine"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
