"""Figures for pretraining runs: reconstructions, masking frequency, masked-vessel share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from priormim.losses import denormalize_prediction  # noqa: E402
from priormim.masking import MaskingContext, MaskingStrategy, patch_prob_from_prior  # noqa: E402
from priormim.models.mae import MaskedAutoencoder  # noqa: E402


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, images: Tensor, mask: Tensor) -> Tensor:
    """Full reconstruction ``[B, 1, H, W]`` in the input's intensity space, visible patches pasted."""
    model.eval()
    out = model(images, mask)
    target = model.patchify(images)
    pred = denormalize_prediction(out.pred, target) if model.norm_pix_loss else out.pred
    pred = torch.where(mask[..., None], pred, target)  # show the real pixels where visible
    return model.unpatchify(pred)


def mask_to_image(mask: Tensor, model: MaskedAutoencoder) -> Tensor:
    """bool ``[B, L]`` -> ``[B, 1, H, W]`` (1 = masked)."""
    p = model.patch_size
    m = mask.float().reshape(mask.shape[0], 1, *model.grid_size)
    return m.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)


def reconstruction_grid(
    rows: dict[str, dict[str, Tensor]], path: str | Path, *, title: str = ""
) -> Path:
    """One row per (method, image): columns image | prior | mask | reconstruction.

    ``rows[name]`` holds ``image``, ``prior``, ``mask_image``, ``recon``: ``[1, H, W]`` tensors.
    """
    cols = ["image", "prior", "mask_image", "recon"]
    labels = ["image", "vessel prior", "masked (grey = hidden)", "reconstruction"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for r, (name, row) in enumerate(rows.items()):
        for c, key in enumerate(cols):
            ax = axes[r, c]
            img = row[key][0].cpu().numpy()
            if key == "mask_image":
                shown = row["image"][0].cpu().numpy().copy()
                shown[img > 0.5] = np.nan
                ax.imshow(np.ma.masked_invalid(shown), cmap="gray")
                ax.set_facecolor("0.6")
            else:
                ax.imshow(img, cmap="gray")
            ax.set_xticks([]); ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def masking_frequency(
    strategy: MaskingStrategy,
    prior: Tensor,
    *,
    patch_size: int,
    grid_size: tuple[int, int],
    progress_values: Sequence[float],
    draws: int = 64,
    seed: int = 0,
) -> np.ndarray:
    """How often each patch is masked, for one image's prior ``[1, 1, H, W]``.

    Returns ``[len(progress_values), gh, gw]`` frequencies in [0, 1]: one map per training
    stage, so a weak-to-strong schedule shows up as masking concentrating on vessels.
    """
    gen = torch.Generator().manual_seed(seed)
    pp = patch_prob_from_prior(prior, patch_size).expand(draws, -1)
    maps = []
    for prog in progress_values:
        ctx = MaskingContext(batch_size=draws, grid_size=grid_size, patch_prior=pp, progress=prog, generator=gen)
        maps.append(strategy(ctx).float().mean(0).reshape(grid_size).numpy())
    return np.stack(maps)


def masking_frequency_figure(
    image: np.ndarray, prior: np.ndarray, freqs: dict[str, np.ndarray], stages: Sequence[str], path: str | Path
) -> Path:
    """Rows = methods, columns = training stages; each panel the per-patch masking frequency."""
    n = len(stages)
    fig, axes = plt.subplots(len(freqs), n + 1, figsize=(2.2 * (n + 1), 2.2 * len(freqs)), squeeze=False)
    for r, (name, f) in enumerate(freqs.items()):
        axes[r, 0].imshow(image, cmap="gray")
        axes[r, 0].contour(prior, levels=[0.5], colors="yellow", linewidths=0.5)
        axes[r, 0].set_ylabel(name, fontsize=9)
        if r == 0:
            axes[r, 0].set_title("image + prior", fontsize=9)
        for c in range(n):
            ax = axes[r, c + 1]
            ax.imshow(image, cmap="gray", extent=(0, 1, 1, 0))
            im = ax.imshow(f[c], cmap="magma", vmin=0, vmax=1, alpha=0.65, extent=(0, 1, 1, 0))
            if r == 0:
                ax.set_title(stages[c], fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([]); ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label="P(masked)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def vessel_share_curve(histories: dict[str, list[dict]], path: str | Path) -> Path:
    """Share of masked patches that contain vessel, per epoch, one line per method."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, hist in histories.items():
        ep = [h["epoch"] + 1 for h in hist]
        ax.plot(ep, [h["masked_vessel_share"] for h in hist], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked patches containing vessel")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def loss_curves(histories: dict[str, list[dict]], path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, hist in histories.items():
        ep = [h["epoch"] + 1 for h in hist]
        ax.plot(ep, [h["loss_rec"] for h in hist], label=f"{name} L_rec")
        if "loss_cons" in hist[0]:
            ax.plot(ep, [h["loss_cons"] for h in hist], ls="--", label=f"{name} L_cons")
    ax.set_xlabel("epoch"); ax.set_ylabel("loss"); ax.grid(alpha=0.3); ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def load_history(run_dir: str | Path) -> list[dict]:
    return json.loads((Path(run_dir) / "history.json").read_text())
