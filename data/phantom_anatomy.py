"""The phantom's analytic anatomy: structures, per-subject randomness, and drawing on a grid.

Everything here is in the release's template frame (millimetres, x towards the subject's left,
y inferior, z anterior, the 160 x 192 x 224 mm field of view of ``aligned_norm``). A subject is
drawn by pulling every grid point back through its affine and smooth deformation into the
template and painting the structure that contains it: first the cerebrum (white matter, a folded
cortical ribbon, sulcal CSF, the interhemispheric and Sylvian fissures), then the table of
ellipsoidal structures. The result is a map of structure indices into :data:`STRUCTURE_NAMES` and
a T1-like image; :mod:`data.phantom` turns the indices into neurite-OASIS label ids and writes
subjects out. Subject ``i`` of a dataset depends only on ``(seed, i)`` (:func:`subject_params`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from data.resize import gaussian_blur

FOV_MM = (160.0, 192.0, 224.0)    # the aligned template's field of view (1 mm voxels)
SLICE_Z_MM = 109 - (224 - 1) / 2  # coronal slice 109 of the release, in template millimetres
CHUNK_POINTS = 1 << 20           # points evaluated at once (bounds the memory of the fields)


@dataclass(frozen=True)
class _Ellipsoid:
    """One structure of the left hemisphere (or the midline): centre, semi-axes, tilt, intensity."""
    name: str
    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    tilt_deg: tuple[float, float, float]  # rotations about x, y, z
    intensity: float
    sided: bool = True
    ventricle: bool = False  # scaled by the subject's ventricle enlargement


# Painted in this order over the cerebrum; later structures win where they overlap. Positions
# and sizes follow the release's template space (centroids and extents measured on a real seg35).
_STRUCTURES = (
    _Ellipsoid("cerebellum-cortex", (24, 38, -48), (27, 20, 26), (0, 0, 0), 0.23),
    _Ellipsoid("cerebellum-WM", (19, 35, -42), (11, 8, 13), (0, 0, 0), 0.33),
    _Ellipsoid("brain-stem", (0, 36, -14), (10, 36, 12), (-22, 0, 0), 0.32, sided=False),
    _Ellipsoid("4th-ventricle", (0, 34, -29), (3.5, 7, 3.5), (0, 0, 0), 0.10, sided=False,
               ventricle=True),
    _Ellipsoid("ventral-DC", (11, 13, -3), (8, 7, 11), (0, 0, 0), 0.37),
    _Ellipsoid("thalamus", (11, -5, -5), (9, 10, 17), (0, 0, 0), 0.31),
    _Ellipsoid("hippocampus", (28, 21, -10), (7, 8, 20), (-25, 0, 0), 0.24),
    _Ellipsoid("amygdala", (23, 22, 8), (7, 7, 7), (0, 0, 0), 0.26),
    _Ellipsoid("putamen", (31, 2, 8), (5.5, 11, 18), (0, 0, 10), 0.33),
    _Ellipsoid("pallidum", (25, 4, 4), (3.5, 6, 11), (0, 0, 0), 0.40),
    _Ellipsoid("caudate", (19, -19, 8), (4, 6, 24), (0, 0, -30), 0.26),
    _Ellipsoid("accumbens", (9, 9, 22), (5, 5, 6), (0, 0, 0), 0.28),
    _Ellipsoid("vessel", (24, 8, 14), (2.5, 2.5, 3), (0, 0, 0), 0.26),
    _Ellipsoid("lateral-ventricle", (12, -21, -6), (5, 9, 38), (0, 0, 35), 0.06, ventricle=True),
    _Ellipsoid("inf-lat-ventricle", (30, 16, -6), (2.5, 3, 14), (-25, 0, 0), 0.10,
               ventricle=True),
    _Ellipsoid("choroid-plexus", (15, -8, -10), (2.5, 3, 16), (0, 0, 35), 0.17),
    _Ellipsoid("3rd-ventricle", (0, 3, 1), (2.5, 10, 15), (0, 0, 0), 0.10, sided=False,
               ventricle=True),
)
_WM, _CORTEX, _SULCUS = 0.38, 0.25, 0.03

# Unified structure list: index 0 is background, then the cerebrum classes, then the table
# expanded into its left and right (or midline) instances.
STRUCTURE_NAMES = ["background", "L-cerebral-WM", "R-cerebral-WM", "L-cortex", "R-cortex",
                   "sulcal-CSF"]
_BASE_INTENSITY = [0.0, _WM, _WM, _CORTEX, _CORTEX, _SULCUS]
_FIRST_TABLE_INDEX = len(STRUCTURE_NAMES)
_INSTANCES = []  # (structure, side) per painted instance, in painting order
for _s in _STRUCTURES:
    for _side in (("L-", "R-") if _s.sided else ("",)):
        STRUCTURE_NAMES.append(_side + _s.name)
        _BASE_INTENSITY.append(_s.intensity)
        _INSTANCES.append((_s, _side))
_INDEX = {name: i for i, name in enumerate(STRUCTURE_NAMES)}
# Tissue of each structure index, ignoring the side (both sides get the same contrast).
_TISSUES = sorted({n.removeprefix("L-").removeprefix("R-") for n in STRUCTURE_NAMES})
_TISSUE_OF = np.array([_TISSUES.index(n.removeprefix("L-").removeprefix("R-"))
                       for n in STRUCTURE_NAMES])


def _rotation(tilt_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(tilt_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _template_instances():
    """Template centres, semi-axes and rotations (S, 3), (S, 3), (S, 3, 3) of all instances.

    Right-hemisphere instances are the mirror images (x -> -x) of the left ones.
    """
    mirror = np.diag([-1.0, 1.0, 1.0])
    centres, semis, rots = [], [], []
    for s, side in _INSTANCES:
        centre, rot = np.array(s.centre, float), _rotation(s.tilt_deg)
        if side == "R-":
            centre, rot = mirror @ centre, mirror @ rot @ mirror
        centres.append(centre)
        semis.append(s.semi)
        rots.append(rot)
    return np.array(centres), np.array(semis, float), np.array(rots)


_TEMPLATE = _template_instances()
_SIDED = np.array([s.sided for s, _ in _INSTANCES])
_VENTRICLE = np.array([s.ventricle for s, _ in _INSTANCES])


def _random_waves(rng, n: int, wavelength: tuple[float, float], amplitude) -> dict:
    """Random plane waves: unit directions scaled to 2*pi/wavelength, phases, amplitudes."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    return {"k": k, "phase": rng.uniform(0, 2 * np.pi, size=n), "amp": np.asarray(amplitude)}


def subject_params(seed: int, index: int) -> dict:
    """Draw every random quantity of one subject from its own stream (seed, index)."""
    rng = np.random.default_rng([seed, index])
    p = {}
    # Residual affine (the release is affinely aligned, so it is small).
    scale = rng.normal(1.0, 0.015) * (1 + rng.normal(0, 0.01, size=3))
    p["affine"] = _rotation(rng.normal(0, 1.0, size=3)) * scale[None, :]
    p["shift"] = rng.normal(0, 1.0, size=3)
    # Smooth deformation: long waves of a few mm (weaker along z, across a 2D slice's plane).
    p["deform"] = _random_waves(rng, 12, (60, 160),
                                rng.normal(0, 0.7, size=(12, 3)) * [1.0, 1.0, 0.6])
    # Cortical folding: unit-variance field of 1-2 cm waves; sulci lie along its zero set.
    p["fold"] = _random_waves(rng, 24, (12, 24), np.full((24, 1), math.sqrt(2 / 24)))
    p["folia"] = _random_waves(rng, 16, (6, 10), np.full((16, 1), math.sqrt(2 / 16)))
    p["reach"] = _random_waves(rng, 4, (40, 90), np.full((4, 1), math.sqrt(2 / 4)))
    p["cortex_mm"] = rng.uniform(2.5, 3.5)
    p["sulcus_mm"] = rng.uniform(14, 20)
    p["brain_scale"] = 1 + rng.normal(0, 0.025, size=3)
    # Structures: jittered centres (midline ones stay near x = 0), sizes, enlarged ventricles.
    n = len(_INSTANCES)
    centre, semi, rot = _TEMPLATE
    jitter = rng.normal(0, 0.5, size=(n, 3))
    jitter[~_SIDED, 0] *= 0.3
    p["centre"] = centre + jitter
    ventricles = np.exp(rng.normal(0.0, 0.3)) ** np.array([0.8, 1.0, 0.5])
    p["semi"] = semi * np.exp(rng.normal(0, 0.07, size=(n, 3))) * np.where(
        _VENTRICLE[:, None], ventricles, 1.0)
    p["rot"] = rot
    # Intensities: global gain, per-tissue offsets (shared by both sides), bias field, noise.
    offset = rng.normal(0, 0.012, size=len(_TISSUES))[_TISSUE_OF]
    p["intensity"] = (np.array(_BASE_INTENSITY) * rng.uniform(0.9, 1.15) + offset).clip(0, 1)
    p["intensity"][0] = 0.0
    p["bias"] = _random_waves(rng, 4, (150, 300), rng.normal(0, 0.05, size=(4, 1)))
    p["noise_sd"] = rng.uniform(0.008, 0.015)
    p["noise_seed"] = int(rng.integers(2**62))
    return p


def _stack(params: list[dict]) -> dict:
    """Stack per-subject parameters into float32 tensors with a leading batch axis."""
    out = {}
    for key, value in params[0].items():
        if isinstance(value, dict):
            out[key] = _stack([p[key] for p in params])
        elif key != "noise_seed":
            out[key] = torch.as_tensor(np.stack([p[key] for p in params]), dtype=torch.float32)
    return out


def _waves(points: torch.Tensor, waves: dict) -> torch.Tensor:
    """Evaluate sum_k amp_k * cos(k_k . p + phase_k) at ``points`` (B, M, 3) -> (B, M, C)."""
    phase = torch.baddbmm(waves["phase"][:, None, :], points, waves["k"].transpose(1, 2))
    return torch.cos(phase) @ waves["amp"]


def _ellipsoid_radius(q: torch.Tensor, exponent: float = 2.0) -> torch.Tensor:
    return q.abs().pow(exponent).sum(-1).pow(1 / exponent)


def _cerebrum(p: torch.Tensor, prm: dict) -> torch.Tensor:
    """Structure index of the cerebrum classes (WM, cortex, sulcal CSF, 0 outside) at p (B, M, 3)."""
    x, y, z = p.unbind(-1)
    # Egg shape: flatter below (temporal lobes) than above; slightly boxy (exponent 2.3).
    d = p - torch.tensor([0.0, -10.0, -4.0])
    semi_y = torch.where(y < -10.0, 63.0, 56.0)
    semi = torch.stack([torch.full_like(semi_y, 67.0), semi_y, torch.full_like(semi_y, 88.0)], -1)
    semi = semi * prm["brain_scale"][:, None, :]
    q = d / semi
    r = _ellipsoid_radius(q, 2.3).clamp_min(1e-6)
    # First-order distance to the surface in mm: (1 - r) / |grad_p r|.
    grad = q.abs().pow(1.3) * q.sign() / semi / r.pow(1.3)[..., None]
    depth = (1 - r) / grad.norm(dim=-1).clamp_min(1e-6)
    # Interhemispheric fissure: the sheet x = 0 above a floor that is the top of the corpus
    # callosum (y = -29 mm) and drops to the base in front of and behind it. Depth counts from
    # the sheet as well, so the medial walls get a cortex with sulci of their own.
    floor = -29 + 54 * ((z + 3).abs() - 38).clamp(0, 15) / 15
    to_sheet = torch.where(y < floor, x.abs(), torch.hypot(x, y - floor))
    depth = torch.minimum(depth, to_sheet - 1.0)
    # Basal notch between the temporal lobes, where brain stem and ventral DC sit.
    notch = (x / 22) ** 2 + ((y - 58) / 38) ** 2 < 1
    inside = (depth > 0) & ~notch

    # Sulci: the zero set of the folding field, plus the Sylvian fissure above the temporal
    # lobe; each is lined on both banks by a cortical ribbon of the subject's thickness.
    # Sulcal depth varies smoothly over the brain (between 40 % and 100 % of the subject's).
    reach = prm["sulcus_mm"][:, None] * (0.7 + 0.3 * _waves(p, prm["reach"])[..., 0].clamp(-1, 1))
    thick = prm["cortex_mm"][:, None]
    shell = inside & (depth < reach + thick)  # deeper points are white matter whatever the folds
    to_sulcus = _at(shell, p, prm["fold"], _distance_to_zero_set, fill=float("inf"))
    sylvian = (x.abs() > 36) & (z.abs() < 35)
    to_sulcus = torch.where(sylvian, torch.minimum(to_sulcus, (y - 4 - 0.3 * (x.abs() - 36)).abs()),
                            to_sulcus)
    csf = (to_sulcus < 0.6) & (depth < reach)
    # The ribbon follows both banks and wraps round the fundus (distance to the sulcal sheet).
    beyond = (depth - reach).clamp_min(0)
    cortex = (depth < thick) | (to_sulcus.pow(2) + beyond.pow(2) < (thick + 0.6) ** 2)
    left = x >= 0
    out = torch.where(left, _INDEX["L-cerebral-WM"], _INDEX["R-cerebral-WM"])
    out = torch.where(cortex, torch.where(left, _INDEX["L-cortex"], _INDEX["R-cortex"]), out)
    out = torch.where(csf, _INDEX["sulcal-CSF"], out)
    return torch.where(inside, out, 0)


def _at(mask: torch.Tensor, p: torch.Tensor, waves: dict, fn, fill: float) -> torch.Tensor:
    """``fn(p, waves)`` evaluated only where ``mask`` (B, M) holds (``fill`` elsewhere).

    The wave fields are the costly part of a subject; most points do not need them.
    """
    out = torch.full(mask.shape, fill, dtype=p.dtype)
    for b in mask.any(-1).nonzero()[:, 0].tolist():
        sub = {k: v[b:b + 1] for k, v in waves.items()}
        out[b, mask[b]] = fn(p[b:b + 1, mask[b]], sub)[0]
    return out


def _distance_to_zero_set(p: torch.Tensor, waves: dict) -> torch.Tensor:
    """First-order distance (mm) from p to the zero set of a wave field: |g| / |grad g|."""
    theta = torch.baddbmm(waves["phase"][:, None, :], p, waves["k"].transpose(1, 2))
    amp = waves["amp"][..., 0][:, None, :]
    g = (torch.cos(theta) * amp).sum(-1)
    grad = (torch.sin(theta) * amp) @ waves["k"]
    return g.abs() / grad.norm(dim=-1).clamp_min(0.02)


def _quadric_coefficients(prm: dict) -> torch.Tensor:
    """Coefficients (B, 10, S) with r^2 = features(p) @ coeffs for every ellipsoid instance.

    r^2 = (p - c)^T A (p - c), A = R diag(1 / semi^2) R^T, expanded in the monomials of
    :func:`_quadric_features`, so all structures are tested with one batched matmul.
    """
    rot, semi, c = prm["rot"], prm["semi"], prm["centre"]  # (B,S,3,3), (B,S,3), (B,S,3)
    a = rot @ torch.diag_embed(semi.pow(-2)) @ rot.transpose(-1, -2)
    ac = (a @ c[..., None])[..., 0]
    coeffs = [a[..., 0, 0], a[..., 1, 1], a[..., 2, 2],
              2 * a[..., 0, 1], 2 * a[..., 0, 2], 2 * a[..., 1, 2],
              -2 * ac[..., 0], -2 * ac[..., 1], -2 * ac[..., 2], (c * ac).sum(-1)]
    return torch.stack(coeffs, dim=1)


def _quadric_features(p: torch.Tensor) -> torch.Tensor:
    x, y, z = p.unbind(-1)
    return torch.stack([x * x, y * y, z * z, x * y, x * z, y * z, x, y, z, torch.ones_like(x)], -1)


_ARBOR = _INDEX["L-cerebellum-WM"] - _FIRST_TABLE_INDEX, _INDEX["R-cerebellum-WM"] - _FIRST_TABLE_INDEX


def _paint_structures(p: torch.Tensor, prm: dict, out: torch.Tensor) -> torch.Tensor:
    """Paint the table's structures over ``out`` (structure indices) at points p (B, M, 3)."""
    r2 = _quadric_features(p) @ prm["quadric"]  # (B, M, S)
    # Cerebellar white matter branches into the folia (only evaluated near the cerebellum).
    arbor = r2[..., list(_ARBOR)]
    folia = _at((arbor < 1.45 ** 2).any(-1), p, prm["folia"],
                lambda q, w: _waves(q, w)[..., 0], fill=0.0)
    r2[..., list(_ARBOR)] = (arbor.clamp_min(0).sqrt() - 0.45 * folia[..., None]).clamp_min(0) ** 2
    # Later instances win: the highest (1-based) index among those containing the point.
    order = torch.arange(1, r2.shape[-1] + 1, dtype=torch.uint8)
    top = torch.where(r2 < 1, order, torch.zeros((), dtype=torch.uint8)).amax(-1).long()
    return torch.where(top > 0, top - 1 + _FIRST_TABLE_INDEX, out)


def grid_points(shape: tuple[int, ...]) -> torch.Tensor:
    """Template-space millimetre coordinates (M, 3) of a 2D (coronal slice) or 3D grid."""
    axes = [torch.linspace(-(f - 1) / 2, (f - 1) / 2, n) for f, n in zip(FOV_MM, shape)]
    if len(shape) == 2:
        axes.append(torch.tensor([SLICE_Z_MM]))
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=1)


def _smooth_fields(shape: tuple[int, ...], prm: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Deformation (B, M, 3) and bias (B, 1, *shape) fields.

    Both vary over 6 cm or more, so they are evaluated on a 4 mm grid and interpolated
    (corners aligned, same field of view): far cheaper than evaluating every voxel.
    """
    coarse = tuple(min(n, max(2, math.ceil(f / 4))) for f, n in zip(FOV_MM, shape))
    pts = grid_points(coarse).expand(prm["shift"].shape[0], -1, -1)
    fields = torch.cat([_waves(pts, prm["deform"]), _waves(pts, prm["bias"])], dim=-1)
    fields = fields.transpose(1, 2).reshape(-1, 4, *coarse)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    fields = torch.nn.functional.interpolate(fields, size=shape, mode=mode, align_corners=True)
    deform = fields[:, :3].flatten(2).transpose(1, 2)
    return deform, torch.exp(fields[:, 3:])


def draw_subjects(grid: torch.Tensor, shape: tuple[int, ...], params: list[dict]):
    """Images (B, 1, *shape) float32 and structure indices (B, 1, *shape) of a batch."""
    prm = _stack(params)
    prm["quadric"] = _quadric_coefficients(prm)
    b, m = len(params), grid.shape[0]
    deform, bias = _smooth_fields(shape, prm)
    label = torch.empty((b, m), dtype=torch.int64)
    chunk = max(1, CHUNK_POINTS // b)
    for start in range(0, m, chunk):
        x = grid[start:start + chunk].expand(b, -1, -1)
        # Pull-back: the subject's anatomy at x is the template anatomy at p.
        p = (x @ prm["affine"].transpose(1, 2) + prm["shift"][:, None]
             + deform[:, start:start + chunk])
        label[:, start:start + chunk] = _paint_structures(p, prm, _cerebrum(p, prm))
    image = torch.gather(prm["intensity"], 1, label)
    image = gaussian_blur(image.view(b, 1, *shape), 0.6) * bias
    noise = torch.stack([torch.randn((1, *shape), generator=torch.Generator().manual_seed(
        q["noise_seed"])) * q["noise_sd"] for q in params])
    image = torch.where(image > 0.01, image + noise, image).clamp(0, 1)
    return image, label.view(b, 1, *shape)
