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

    ``rows[name]`` holds ``image``, ``prior``, ``mask_image``, ``recon``: ``[1, H, W]`` tensors,
    image and recon in the same intensity space. Image, masked input and reconstruction share one
    grey scale (the images' min..max, colourbar), so reconstructions compare with the original;
    the prior is a 0/1 map; hidden patches are blue (legend).
    """
    from matplotlib.patches import Patch

    cols = ["image", "prior", "mask_image", "recon"]
    labels = ["image", "vessel prior", "masked input", "reconstruction"]
    images = torch.stack([row["image"].float().cpu() for row in rows.values()])
    vmin, vmax = float(images.min()), float(images.max())
    if vmax - vmin < 1e-6:
        vmin, vmax = 0.0, 1.0
    fig, axes = plt.subplots(len(rows), 4, figsize=(9, 2.1 * len(rows) + 0.6), squeeze=False, layout="constrained")
    grey = None
    for r, (name, row) in enumerate(rows.items()):
        for c, key in enumerate(cols):
            ax = axes[r, c]
            img = row[key][0].cpu().numpy()
            if key == "mask_image":
                shown = np.ma.masked_where(img > 0.5, row["image"][0].cpu().numpy())
                ax.set_facecolor("tab:blue")
                ax.imshow(shown, cmap="gray", vmin=vmin, vmax=vmax)
            elif key == "prior":
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            else:
                grey = ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
            ax.set_xticks([]); ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.colorbar(grey, ax=axes.ravel().tolist(), shrink=0.7, label="grey level (shared by image, masked input, reconstruction)")
    fig.legend(handles=[Patch(color="tab:blue", label="hidden patch (masked)"),
                        Patch(facecolor="white", edgecolor="0.5", label="vessel prior (white)")],
               loc="outside lower left", ncol=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def stage_epochs(n_epochs: int, n_stages: int = 3) -> list[tuple[int, float]]:
    """Distinct 1-based epochs spread over a run, with the masking schedule's progress at each.

    Progress follows the pretraining loop (``(epoch - 1) / (n_epochs - 1)``; 1.0 for a one-epoch
    run), so a panel labelled "epoch e" shows the masking of epoch e. A short run gives fewer
    stages rather than repeated labels: 2 epochs -> ``[(1, 0.0), (2, 1.0)]``.
    """
    if n_epochs < 1 or n_stages < 1:
        raise ValueError(f"need n_epochs >= 1 and n_stages >= 1, got {n_epochs}, {n_stages}")
    if n_epochs == 1:
        return [(1, 1.0)]
    epochs = sorted({1 + round(i * (n_epochs - 1) / max(1, n_stages - 1)) for i in range(n_stages)})
    return [(e, (e - 1) / (n_epochs - 1)) for e in epochs]


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
    if len(set(stages)) != len(stages):
        raise ValueError(f"stage labels must differ, got {list(stages)}; see stage_epochs()")
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


def random_masking_reference(histories: dict[str, list[dict]]) -> float | None:
    """Mean ``vessel_patch_share`` of the runs' logs: the share of vessel patches among all
    patches, i.e. what uniform random masking gives on average. None when not logged."""
    values = [h["vessel_patch_share"] for hist in histories.values() for h in hist if h.get("vessel_patch_share")]
    return float(np.mean(values)) if values else None


def vessel_share_curve(histories: dict[str, list[dict]], path: str | Path, *,
                       random_reference: float | None = None) -> Path:
    """Share of masked patches that contain vessel, per epoch, one line per method.

    A dashed line marks what random masking gives on average (``random_reference``, by default
    the share of vessel patches in the data as logged by the runs, see :func:`random_masking_reference`).
    """
    if random_reference is None:
        random_reference = random_masking_reference(histories)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if random_reference is not None:
        ax.axhline(random_reference, color="0.35", ls="--", lw=1,
                   label=f"random masking, expected ({random_reference:.2f})")
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
