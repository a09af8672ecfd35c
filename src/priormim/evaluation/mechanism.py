"""Mechanism metrics of a masked-image-modeling run: do reconstructions keep vessels?

VasoMIM claims more than a downstream score: its masking lands on vessels, and its consistency
loss makes reconstructions keep vessels. These are the measurements behind ``priormim analyze``
(:mod:`priormim.evaluation.analyze`), as plain batched functions:

* :func:`fixed_masks`: one set of uniform random patch masks per image, seeded and saved, so
  every method is scored on the *same* hidden patches (a method's own guided masks would hide
  different, harder patches and make the reconstructions incomparable).
* :func:`sato_maps`: binary Sato vessel maps of the original and of the reconstruction, both
  thresholded at the *original's* percentile value (a blurred vessel falls under it).
* :func:`region_dice`: Dice of two binary maps restricted to a region (the hidden pixels: the
  visible ones are pasted from the original and would inflate the score).
* :func:`region_psnr`: PSNR of the reconstruction inside a region (vessel vs background).
* :func:`paired_ci`: mean and Student-t confidence interval of paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from priormim.errors import UserError

FIXED_MASK_RATIO = 0.75  # MAE's and VasoMIM's mask ratio
SATO_PERCENTILE = 92.0  # the vessel prior's percentile (VasoMIM's frangi_filter.py)


@dataclass
class FixedMasks:
    """Per-image patch masks shared by every run that is analysed.

    names: image file names, in order. masks: bool ``[N, L]`` (True = hidden), ``L = gh * gw``.
    """

    names: list[str]
    grid: tuple[int, int]
    mask_ratio: float
    seed: int
    masks: Tensor

    def for_names(self, names: Sequence[str], path: Path) -> Tensor:
        """``[len(names), L]`` rows of ``names``; a name the file lacks is refused."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise UserError(f"holds no fixed mask for {missing[0]} (and {len(missing) - 1} more); "
                            "pass another --fixed-masks file or delete this one to draw new masks", path)
        return self.masks[[index[n] for n in names]]


def draw_fixed_masks(names: Sequence[str], *, grid: tuple[int, int], mask_ratio: float = FIXED_MASK_RATIO,
                     seed: int = 0) -> FixedMasks:
    """Uniform random masks, exactly ``round(mask_ratio * L)`` hidden patches per image, from a
    seeded generator (the same names, grid, ratio and seed always give the same masks)."""
    n, length = len(names), grid[0] * grid[1]
    n_mask = int(round(mask_ratio * length))
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(n, length, generator=gen).argsort(dim=1)
    masks = torch.zeros(n, length, dtype=torch.bool)
    masks.scatter_(1, order[:, :n_mask], True)
    return FixedMasks(names=list(names), grid=tuple(grid), mask_ratio=float(mask_ratio), seed=int(seed), masks=masks)


def save_fixed_masks(fm: FixedMasks, path: str | Path) -> Path:
    """Write ``fm`` as ``.npz`` (atomic)."""
    import io

    from priormim.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, names=np.array(fm.names), grid=np.array(fm.grid), mask_ratio=np.array(fm.mask_ratio),
                        seed=np.array(fm.seed), masks=fm.masks.numpy())
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_fixed_masks(path: str | Path) -> FixedMasks:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return FixedMasks(names=[str(s) for s in z["names"]], grid=(int(z["grid"][0]), int(z["grid"][1])),
                              mask_ratio=float(z["mask_ratio"]), seed=int(z["seed"]),
                              masks=torch.from_numpy(z["masks"].astype(bool)))
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"is not a fixed-mask file ({type(exc).__name__}); delete it to draw new masks", path) from exc


def fixed_masks(path: str | Path, names: Sequence[str], *, grid: tuple[int, int],
                mask_ratio: float = FIXED_MASK_RATIO, seed: int = 0) -> Tensor:
    """bool ``[len(names), L]``: the masks stored in ``path`` for ``names``; drawn and saved
    first when ``path`` does not exist. A file for another patch grid is refused."""
    path = Path(path)
    if not path.is_file():
        save_fixed_masks(draw_fixed_masks(names, grid=grid, mask_ratio=mask_ratio, seed=seed), path)
    fm = load_fixed_masks(path)
    if tuple(fm.grid) != tuple(grid):
        raise UserError(f"holds masks for a {fm.grid[0]}x{fm.grid[1]} patch grid, this run has "
                        f"{grid[0]}x{grid[1]}; use one --fixed-masks file per grid", path)
    return fm.for_names(names, path)


def patch_mask_to_pixels(mask: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """bool ``[B, L]`` -> bool ``[B, 1, gh * p, gw * p]``."""
    m = mask.reshape(mask.shape[0], 1, *grid)
    return m.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


@torch.no_grad()
def sato_maps(original: Tensor, recon: Tensor, *, percentile: float = SATO_PERCENTILE,
              sigmas: Sequence[float] = (1, 2, 3)) -> tuple[Tensor, Tensor]:
    """Binary Sato vessel maps ``[B, 1, H, W]`` of ``original`` and ``recon`` (both ``[B, 1, H, W]``
    in [0, 1]), both cut at the original's ``percentile`` response, so a reconstruction that
    blurs or drops a vessel loses vessel pixels instead of being re-thresholded to the same count."""
    from priormim.priors.sato import vesselness

    both = vesselness(torch.cat([original, recon]).float(), sigmas=sigmas, black_ridges=True)
    v_orig, v_rec = both[: len(original)], both[len(original):]
    cut = torch.quantile(v_orig.flatten(1), percentile / 100.0, dim=1).reshape(-1, 1, 1, 1)
    return v_orig > cut, v_rec > cut


def region_dice(a: Tensor, b: Tensor, region: Tensor) -> Tensor:
    """Dice of binary maps ``a`` and ``b`` inside ``region`` (all ``[B, 1, H, W]`` bool), per image
    ``[B]``; NaN where neither map has a pixel in the region."""
    a, b, region = a.bool() & region.bool(), b.bool() & region.bool(), region.bool()
    inter = (a & b).flatten(1).sum(1).double()
    total = a.flatten(1).sum(1).double() + b.flatten(1).sum(1).double()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.full_like(total, math.nan))


def region_soft_dice(p: Tensor, q: Tensor, region: Tensor) -> Tensor:
    """Soft Dice ``2 sum(p q) / (sum p + sum q)`` of probability maps inside ``region``, per image
    ``[B]`` (all ``[B, 1, H, W]``): defined even for a segmentor whose probabilities never pass
    0.5 (a briefly trained one), where the binary Dice is empty; NaN when both sums are 0."""
    r = region.float()
    p, q = p.double() * r, q.double() * r
    inter = (p * q).flatten(1).sum(1)
    total = p.flatten(1).sum(1) + q.flatten(1).sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1e-12), torch.full_like(total, math.nan))


def region_psnr(recon: Tensor, original: Tensor, region: Tensor, *, data_range: float = 1.0) -> Tensor:
    """PSNR (dB) of ``recon`` against ``original`` over the pixels of ``region``, per image ``[B]``
    (all ``[B, 1, H, W]``; intensities in ``[0, data_range]``); NaN for an empty region."""
    region = region.bool().flatten(1).double()
    err = (recon.double() - original.double()).flatten(1) ** 2
    n = region.sum(1)
    mse = (err * region).sum(1) / n.clamp_min(1)
    psnr = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))
    return torch.where(n > 0, psnr, torch.full_like(psnr, math.nan))


@dataclass
class PairedCI:
    """Mean of paired differences with a two-sided Student-t interval (``level``)."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (n={self.n}, no CI)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_ci(diffs: Sequence[float] | np.ndarray, *, level: float = 0.95) -> PairedCI:
    """Mean of ``diffs`` (NaNs dropped) and its t-interval: ``mean ± t_{n-1} * sd / sqrt(n)``."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        return PairedCI(0, math.nan, math.nan, math.nan, math.nan, level)
    mean = float(d.mean())
    if n == 1:
        return PairedCI(1, mean, math.nan, math.nan, math.nan, level)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return PairedCI(n, mean, sd, mean - half, mean + half, level)


__all__ = [
    "FIXED_MASK_RATIO",
    "FixedMasks",
    "PairedCI",
    "draw_fixed_masks",
    "fixed_masks",
    "load_fixed_masks",
    "paired_ci",
    "patch_mask_to_pixels",
    "region_dice",
    "region_psnr",
    "region_soft_dice",
    "sato_maps",
    "save_fixed_masks",
]
