"""What a pretraining run does to a few images: mask, prior, reconstruction, segmentor maps.

:func:`visualize_run` rebuilds the run's model (:meth:`MaskedAutoencoder.from_run`), masks each
image the way the run's recipe does at the end of training, reconstructs it and draws one row per
image. The originals, the masked inputs and the reconstructions share one grey scale (the originals'
min..max, with a colourbar), so a dim or washed-out reconstruction looks dim or washed out.
When the run has a consistency segmentor (VasoMIM), its vessel probability on the original and
on the reconstruction are shown on a shared 0..1 scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from priormim.config import PretrainConfig
from priormim.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class RunVisuals:
    """Tensors behind the figure, all ``[N, 1, H, W]`` at the model's input size, CPU.

    ``image``/``recon`` in [0, 1] intensity (recon clipped), ``prior`` 0/1 (zeros when the run
    has no vessel prior), ``mask`` 1 where a patch was hidden, ``seg_image``/``seg_recon``
    vessel probabilities (None without a segmentor). ``prior_source`` says where the priors came from.
    """

    names: list[str]
    image: Tensor
    prior: Tensor
    mask: Tensor
    recon: Tensor
    seg_image: Tensor | None = None
    seg_recon: Tensor | None = None
    prior_source: str = ""
    notes: list[str] = field(default_factory=list)


def _prior_dirs(cfg: PretrainConfig, run: Path, images: Path, priors: Path | None) -> list[Path]:
    if priors is not None:
        return [priors]
    out = [Path(cfg.data.priors)] if cfg.data.priors else []
    return out + [images.resolve().parent / "priors" / "vessel", run / "priors" / "vessel"]


def _load_priors(cfg: PretrainConfig, run: Path, images: Path, files: list[Path], originals: list[np.ndarray],
                 priors: Path | None) -> tuple[list[np.ndarray], str]:
    """Cached vessel priors of ``files`` (the run's cache), else computed now; zeros for non-vessel runs."""
    from priormim.priors.cache import prior_path
    from priormim.io import read_mask

    if cfg.data.prior != "vessel":
        return [np.zeros_like(o, dtype=bool) for o in originals], f"none (data.prior={cfg.data.prior})"
    for folder in _prior_dirs(cfg, run, images, priors):
        paths = [prior_path(folder, f) for f in files]
        if all(p.is_file() for p in paths):
            return [read_mask(p) for p in paths], f"cached ({folder})"
    if priors is not None:
        raise UserError("holds no prior for some of the images; run `priormim prior vessel` first, or drop --priors", priors)
    from priormim.priors import vessel_mask

    computed = []
    for o in originals:  # images differ in size, so one call each (a handful of images)
        x = torch.from_numpy(o)[None, None]
        computed.append(vessel_mask(x, border=min(20, min(o.shape) // 10))[0, 0].numpy())
    return computed, "computed now (Sato, default parameters)"


def _resize(arrays: list[np.ndarray], size: int, *, nearest: bool = False) -> Tensor:
    import torch.nn.functional as F

    out = []
    for a in arrays:
        t = torch.from_numpy(np.asarray(a, dtype=np.float32))[None, None]
        out.append(F.interpolate(t, size=(size, size), mode="nearest") if nearest else
                   F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out)


def _segmentor_path(cfg: PretrainConfig, run: Path) -> Path | None:
    if not cfg.consistency.enabled:
        return None
    path = Path(cfg.consistency.segmentor) if cfg.consistency.segmentor else run / "segmentor.safetensors"
    return path if path.is_file() else None


@torch.no_grad()
def compute_run_visuals(run: str | Path, images: str | Path, *, n: int = 4, seed: int = 0,
                        priors: str | Path | None = None) -> RunVisuals:
    """Mask, reconstruct and segment the first ``n`` images of ``images`` with the run's model."""
    from priormim.evaluation.figures import mask_to_image, reconstruct
    from priormim.io import list_images, read_gray
    from priormim.masking import MaskingContext, build_masking, patch_prob_from_prior
    from priormim.models.mae import MaskedAutoencoder

    run, images = Path(run), Path(images)
    model = MaskedAutoencoder.from_run(run)
    cfg: PretrainConfig = model.run_config
    if cfg.data.norm_mean is None or cfg.data.norm_std is None:
        raise UserError("config.yaml has no data.norm_mean/norm_std; the run has not started training", run / "config.yaml")
    if model.in_chans != 1:
        raise UserError(f"visualize draws grey images; this run has in_chans={model.in_chans}", run / "config.yaml")
    files = list_images(images)[: max(1, n)]
    originals = [read_gray(f) for f in files]
    prior_list, source = _load_priors(cfg, run, images, files, originals, None if priors is None else Path(priors))
    size = cfg.model.img_size
    image01 = _resize(originals, size).clamp(0, 1)
    prior = (_resize(prior_list, size, nearest=True) > 0.5).float()
    x = (image01 - cfg.data.norm_mean) / cfg.data.norm_std
    strategy = build_masking(cfg.masking.name, mask_ratio=cfg.masking.mask_ratio, **cfg.masking.kwargs)
    ctx = MaskingContext(batch_size=len(files), grid_size=model.grid_size,
                         patch_prior=patch_prob_from_prior(prior, model.patch_size), progress=1.0,
                         generator=torch.Generator().manual_seed(seed))
    mask = strategy(ctx)
    recon = (reconstruct(model, x, mask) * cfg.data.norm_std + cfg.data.norm_mean).clamp(0, 1)
    out = RunVisuals(names=[f.name for f in files], image=image01, prior=prior, mask=mask_to_image(mask, model),
                     recon=recon, prior_source=source)
    seg_path = _segmentor_path(cfg, run)
    if seg_path is not None:
        from priormim.models.segmentor import load_segmentor

        seg = load_segmentor(seg_path).eval()
        out.seg_image, out.seg_recon = torch.sigmoid(seg(image01)), torch.sigmoid(seg(recon))
    elif cfg.consistency.enabled:
        out.notes.append("the run's consistency segmentor file is missing: no segmentor maps")
    return out


def visuals_figure(v: RunVisuals, path: str | Path, *, title: str = "") -> Path:
    """One row per image: original | prior | masked input | reconstruction [| segmentor maps].

    Original, masked input and reconstruction share the originals' grey range (one colourbar);
    segmentor maps share 0..1 (a second colourbar); hidden patches and the prior have a legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    has_seg = v.seg_image is not None
    labels = ["original", "vessel prior", "masked input", "reconstruction"]
    if has_seg:
        labels += ["segmentor:\noriginal", "segmentor:\nreconstruction"]
    n, cols = len(v.names), len(labels)
    fig, axes = plt.subplots(n, cols, figsize=(2.0 * cols + 1.6, 2.0 * n + 1.0), squeeze=False, layout="constrained")
    grey = seg_im = None
    # One grey range for every panel: the originals' own min..max, so the colourbar holds for all.
    vmin, vmax = float(v.image.min()), float(v.image.max())
    if vmax - vmin < 1e-6:
        vmin, vmax = 0.0, 1.0
    for r in range(n):
        img = v.image[r, 0].numpy()
        shown = np.ma.masked_where(v.mask[r, 0].numpy() > 0.5, img)
        panels = [img, None, shown, v.recon[r, 0].numpy()]
        for c, data in enumerate(panels):
            ax = axes[r, c]
            if c == 1:
                ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
                ax.imshow(np.ma.masked_where(v.prior[r, 0].numpy() < 0.5, v.prior[r, 0].numpy()),
                          cmap="autumn", vmin=0, vmax=1, alpha=0.8)
                continue
            ax.set_facecolor("tab:blue")  # hidden patches of the masked input
            grey = ax.imshow(data, cmap="gray", vmin=vmin, vmax=vmax)
        if has_seg:
            for c, prob in ((4, v.seg_image), (5, v.seg_recon)):
                seg_im = axes[r, c].imshow(prob[r, 0].numpy(), cmap="viridis", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(v.names[r], fontsize=8)
    for c, name in enumerate(labels):
        axes[0, c].set_title(name, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([]); ax.set_yticks([])
    fig.legend(handles=[Patch(color="tab:blue", label="hidden patch (masked)"),
                        Patch(color=plt.get_cmap("autumn")(1.0), label="vessel prior")],
               loc="outside lower left", ncol=2, fontsize=8, frameon=False)
    fig.colorbar(grey, ax=axes[:, :4].ravel().tolist(), shrink=0.8, pad=0.02,
                 label="grey level (the originals' range; recon clipped to [0, 1])")
    if has_seg:
        fig.colorbar(seg_im, ax=axes[:, 4:].ravel().tolist(), shrink=0.8, pad=0.02, label="P(vessel)")
    fig.suptitle(title or f"priors: {v.prior_source}", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def visualize_run(run: str | Path, images: str | Path, out: str | Path, *, n: int = 4, seed: int = 0,
                  priors: str | Path | None = None) -> tuple[Path, RunVisuals]:
    """Write ``out/reconstructions.png`` for the first ``n`` images of ``images``; returns ``(path, visuals)``."""
    v = compute_run_visuals(run, images, n=n, seed=seed, priors=priors)
    title = f"{Path(run).name}: end-of-training masking, priors {v.prior_source}"
    return visuals_figure(v, Path(out) / "reconstructions.png", title=title), v
