"""Image similarity terms: mean squared error and local normalised cross-correlation."""

import torch.nn.functional as F

from utils.fields import check_same_spatial, check_spatial

_AVG_POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}


def mse(fixed, warped):
    """Mean squared intensity difference (the published similarity for OASIS)."""
    check_spatial(fixed, "fixed image")
    check_same_spatial(fixed, "fixed image", warped, "warped image")
    return F.mse_loss(warped, fixed)


def local_ncc(fixed, warped, window=9, eps=1e-5):
    """One minus the mean squared local normalised cross-correlation.

    Parameters
    ----------
    fixed, warped : torch.Tensor
        (B, 1, *spatial) images.
    window : int
        Side of the cubic/square window in pixels (odd). The window is in pixels, so at half
        resolution it covers twice the anatomy; scale it with ``--size`` if that matters.
    eps : float
        Stabiliser of the variance product, on window *sums* as in VoxelMorph (1e-5 there).
        The products here are of window means, so it enters divided by the squared window
        size: 1e-5 on means would be 81^2 (2D) or 729^2 (3D) times larger than intended, larger
        than the product of two brain images' local variances (about 1e-6), and the loss would
        then depend on the intensity scale instead of normalising it.

    Returns
    -------
    torch.Tensor
        Scalar in [0, 1]: 0 when every window matches up to an affine intensity change.
        Flat windows (zero variance, e.g. background) count as uncorrelated (1).
    """
    d = check_spatial(fixed, "fixed image")
    check_same_spatial(fixed, "fixed image", warped, "warped image")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"ncc window must be an odd positive integer, got {window}")
    pool = _AVG_POOL[d]

    def mean(x):
        # Windows are truncated at the border rather than zero-padded.
        return pool(x, window, stride=1, padding=window // 2, count_include_pad=False)

    mu_f, mu_w = mean(fixed), mean(warped)
    cross = mean(fixed * warped) - mu_f * mu_w
    var_f = (mean(fixed * fixed) - mu_f * mu_f).clamp_min(0)
    var_w = (mean(warped * warped) - mu_w * mu_w).clamp_min(0)
    cc = cross * cross / (var_f * var_w + eps / float(window) ** (2 * d))
    return 1.0 - cc.mean()


SIMILARITIES = {"mse": mse, "ncc": local_ncc}
