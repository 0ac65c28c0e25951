"""The resolution study's report (``bench_resolution.py``): each model's Dice drop and its tables."""

from benchmarks.common import fmt, machine_line, markdown_table


def dice_drop(runs, low, high):
    """Dice(trained high, tested high) - Dice(trained low, tested high); None when either is missing."""
    a = runs.get(high, {}).get("eval", {}).get(high, {}).get("dice_mean")
    b = runs.get(low, {}).get("eval", {}).get(high, {}).get("dice_mean")
    return a - b if a is not None and b is not None else None


def resolution_markdown(result):
    """The markdown report of :func:`benchmarks.bench_resolution.main`'s result: the 2x2 tables."""
    low, high = result["sizes"]
    shapes = result["shapes"]
    combos = [(low, low), (low, high), (high, low), (high, high)]
    lines = ["# Resolution robustness", "", f"Machine: {machine_line(result['machine'])}.", "",
             f"Command: `{result['command']}`", "",
             f"Data: {result['data_description']}. Budget: {result['budget_description']}. "
             f"Dice over the test pairs (scored on the native label maps), folding = % of pixels with "
             f"J < 0 on the evaluation grid. Dice drop = Dice(trained {high}, tested {high}) - "
             f"Dice(trained {low}, tested {high}): what training at half resolution costs at full resolution.",
             ""]
    header = ["model"] + [f"train {shapes[str(a)]} → test {shapes[str(b)]}: Dice / fold %" for a, b in combos] + \
        ["Dice drop"]
    rows = []
    before = result.get("before", {})
    if before:
        rows.append(["before registration (per test size)"] + [fmt(before.get(str(b))) if a == low else "" for a, b in combos] + [""])
    for label, model in result["models"].items():
        runs = {int(k): v for k, v in model["runs"].items()}
        cells = []
        for a, b in combos:
            s = runs.get(a, {}).get("eval", {}).get(str(b)) or runs.get(a, {}).get("eval", {}).get(b)
            cells.append(f"{fmt(s['dice_mean'])} / {fmt(s['folding_percent_mean'], 2)}" if s else
                         runs.get(a, {}).get("error", "–"))
        drop = model.get("dice_drop")
        rows.append([f"`{label}`"] + cells + [fmt(drop) if drop is not None else "–"])
    for transform, per_size in result.get("ants", {}).items():
        cells = []
        for a, b in combos:
            s = per_size.get(str(b)) if a == low else None
            cells.append(f"{fmt(s['dice_mean'])} / {fmt(s['folding_percent_mean'], 2)}" if s else "")
        rows.append([f"ANTs `{transform}` (no training; per test size)"] + cells + [""])
    lines.append(markdown_table(header, rows))
    lines += ["", "SDlogJ, HD95 (full-resolution voxels) and time per pair at each test size:", ""]
    header = ["model", "trained at"] + [f"test {shapes[str(b)]}: SDlogJ / HD95 / ms per pair" for b in (low, high)] + \
        ["training wall time"]
    rows = []
    for label, model in result["models"].items():
        for a in (low, high):
            run = model["runs"].get(str(a)) or model["runs"].get(a) or {}
            ev = run.get("eval", {})
            cells = [_extra(ev.get(str(b)) or ev.get(b)) for b in (low, high)]
            rows.append([f"`{label}`", shapes[str(a)]] + cells + [f"{run['train_seconds']:.0f} s" if
                                                                  run.get("train_seconds") else "–"])
    for transform, per_size in result.get("ants", {}).items():
        rows.append([f"ANTs `{transform}`", "–"] + [_extra(per_size.get(str(b))) for b in (low, high)] + ["–"])
    lines.append(markdown_table(header, rows))
    if result.get("ants_note"):
        lines += ["", result["ants_note"]]
    return "\n".join(lines)


def _extra(s):
    if not s:
        return "–"
    t = s.get("time_per_pair_s")
    return f"{fmt(s.get('sdlogj_mean'))} / {fmt(s.get('hd95_mean'), 2)} / {fmt(t * 1000 if t else None, 1)}"
