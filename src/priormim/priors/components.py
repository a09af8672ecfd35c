"""Connected-component labels of batches of binary masks (4- or 8-connected).

Both backends give every component the same label (1 + the largest flat index
``row * W + col`` among its pixels), so results do not depend on the backend: batched label
propagation in torch (any device) or ``scipy.ndimage.label`` per image (CPU).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import Tensor

__all__ = ["CONNECTIVITIES", "component_labels"]

CONNECTIVITIES = (4, 8)


def _neighbour_max(grid: Tensor, connectivity: int) -> Tensor:
    """Largest value among each pixel and its 4 or 8 neighbours of ``grid [B, 1, H, W]``
    (pixels outside the image count as 0)."""
    if connectivity == 8:
        return F.max_pool2d(grid, kernel_size=3, stride=1, padding=1)
    padded = F.pad(grid, (1, 1, 1, 1))
    h, w = grid.shape[-2:]
    out = torch.maximum(grid, padded[..., :h, 1 : w + 1])  # neighbour above
    out = torch.maximum(out, padded[..., 2:, 1 : w + 1])  # below
    out = torch.maximum(out, padded[..., 1 : h + 1, :w])  # left
    return torch.maximum(out, padded[..., 1 : h + 1, 2:])  # right


def _labels_torch(mask: Tensor, max_iter: int, connectivity: int) -> Tensor:
    """Batched label equivalence (Hawick et al. 2010, with max instead of min) in torch.

    Each mask pixel starts with its own label (flat index + 1). One round: every pixel
    looks at the largest label among its neighbours; where that is larger, the pixel the
    current label names (its "root") takes it (scatter-max), so whole trees merge at once;
    then every pixel chases root pointers until nothing changes. Thin vessel trees settle
    in about 5 rounds instead of the hundreds a plain max-pool flood fill needs.
    """
    b, _, h, w = mask.shape
    n = h * w
    # Labels live in float (max_pool2d has no integer kernel) and are exact below 2**24.
    dtype = torch.float32 if n < 2**24 else torch.float64
    # Slot 0 of every row is a sentinel 0 so that label 0 (background) points at itself.
    maskf = torch.cat([mask.new_zeros(b, 1), mask.reshape(b, n)], dim=1).to(dtype)
    labels = torch.arange(n + 1, device=mask.device, dtype=dtype).expand(b, n + 1) * maskf
    for _ in range(max_iter):
        grid = labels[:, 1:].reshape(b, 1, h, w)
        pooled = _neighbour_max(grid, connectivity).reshape(b, n)
        neigh = torch.cat([labels[:, :1], pooled], dim=1) * maskf
        if torch.equal(neigh, labels):
            break
        # Merge at the roots, then take the neighbours' labels locally as well.
        roots = labels.scatter_reduce(1, labels.long(), neigh, reduce="amax")
        labels = torch.maximum(roots, neigh)
        for _ in range(max_iter):  # pointer jumping to the roots
            jumped = torch.maximum(labels, labels.gather(1, labels.long()))
            if torch.equal(jumped, labels):
                break
            labels = jumped
    return labels[:, 1:].reshape(b, 1, h, w).long()


def _labels_scipy(mask: Tensor, connectivity: int) -> Tensor:
    """Same labels as :func:`_labels_torch` from ``scipy.ndimage.label``, one image at a time.

    On CPU this C union-find is 10-100x faster than any batched tensor propagation, so it
    is the default there; the per-image loop only runs over the batch, not over pixels.
    """
    b, _, h, w = mask.shape
    arr = mask.reshape(b, h, w).cpu().numpy()
    out = np.zeros((b, h * w), dtype=np.int64)
    structure = ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    for i in range(b):
        lab, count = ndi.label(arr[i], structure=structure)
        if count:
            flat = lab.ravel()
            # Relabel each component as 1 + its largest flat index, as the torch path does.
            last = np.zeros(count + 1, dtype=np.int64)
            np.maximum.at(last, flat, np.arange(1, h * w + 1))
            last[0] = 0
            out[i] = last[flat]
    return torch.from_numpy(out).view(b, 1, h, w).to(mask.device)


def component_labels(
    mask: Tensor, method: str = "auto", max_iter: int | None = None, connectivity: int = 8
) -> Tensor:
    """Connected-component labels of a batch of masks.

    Args:
        mask: ``bool [B, 1, H, W]``.
        method: ``"torch"`` (batched label propagation on the mask's device), ``"scipy"``
            (``scipy.ndimage.label`` per image on CPU) or ``"auto"``: scipy for CPU tensors,
            torch otherwise (GPU).
        max_iter: safety bound on propagation rounds (default ``H * W``, never reached).
        connectivity: 8 (diagonal neighbours join components) or 4 (edge neighbours only).

    Returns:
        ``int64 [B, 1, H, W]`` on the mask's device: 0 off the mask; on it, 1 + the largest
        flat index ``row * W + col`` of the pixel's component (the same for both methods).
    """
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool [B, 1, H, W], got {mask.dtype} {tuple(mask.shape)}")
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if method == "auto":
        method = "scipy" if mask.device.type == "cpu" else "torch"
    if method == "scipy":
        return _labels_scipy(mask, connectivity)
    if method == "torch":
        return _labels_torch(mask, max_iter or mask.shape[-1] * mask.shape[-2], connectivity)
    raise ValueError(f"method must be 'auto', 'torch' or 'scipy', got {method!r}")
