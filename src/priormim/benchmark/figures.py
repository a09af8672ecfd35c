"""PNG figures of a bench run (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from priormim.benchmark.methods import label  # noqa: E402
from priormim.benchmark.tables import Stat  # noqa: E402

DPI = 110


def method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    """One colour per method, the same in every figure (fixed order of the known methods)."""
    from priormim.benchmark.methods import BASELINES, DEFAULT_RECIPES

    known = ["random_init", *BASELINES, *DEFAULT_RECIPES]
    extra = sorted(set(methods) - set(known))
    cmap = plt.get_cmap("tab20")
    return {m: cmap((known + extra).index(m) % 20) for m in methods}


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def comparison_figure(stats: dict[tuple[str, str, str], Stat], methods: Sequence[str], datasets: Sequence[str],
                      path: Path) -> Path:
    """Per data set and metric: one horizontal bar per method (mean ± std), seeds as dots."""
    metrics = ("dice", "cldice")
    colors = method_colors(methods)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 0.34 * len(methods) * len(datasets) + 1.2 * len(datasets)),
                             squeeze=False)
    y = np.arange(len(methods))[::-1]
    for i, ds in enumerate(datasets):
        for j, m in enumerate(metrics):
            ax = axes[i, j]
            for yy, method in zip(y, methods):
                st = stats.get((method, ds, m))
                if st is None or st.n == 0:
                    continue
                ax.barh(yy, st.mean, xerr=st.std if st.n > 1 else None, color=colors[method], alpha=0.85,
                        error_kw={"elinewidth": 1, "capsize": 2})
                ax.scatter(st.values, [yy] * len(st.values), s=9, color="k", zorder=3)
            ax.set_yticks(y, [label(mt) for mt in methods], fontsize=8)
            ax.set_xlim(0, 1)
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{ds}: {'DSC' if m == 'dice' else 'clDice'}", fontsize=10)
            if j == 1:
                ax.set_yticklabels([])
    fig.tight_layout()
    return _save(fig, path)


def ablation_figure(stats: dict[tuple[str, str, str], Stat], ablation: dict[str, tuple[bool, bool]],
                    datasets: Sequence[str], path: Path) -> Path:
    """Per data set a 2 x 2 grid of DSC: rows consistency off/on, columns guidance off/on."""
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.3 * len(datasets), 3.0), squeeze=False)
    for i, ds in enumerate(datasets):
        grid = np.full((2, 2), np.nan)
        text = [["not run"] * 2 for _ in range(2)]
        for recipe, (g, c) in ablation.items():
            st = stats.get((recipe, ds, "dice"))
            if st is not None and st.n:
                grid[int(c), int(g)] = st.mean
                text[int(c)][int(g)] = st.fmt()
        ax = axes[0, i]
        finite = grid[np.isfinite(grid)]
        vmin, vmax = (finite.min(), finite.max()) if finite.size else (0, 1)
        ax.imshow(grid, cmap="Blues", vmin=vmin - 0.25 * (vmax - vmin + 1e-3), vmax=vmax)
        for r in range(2):
            for c in range(2):
                ax.text(c, r, text[r][c].replace(" ± ", "\n± "), ha="center", va="center", fontsize=9)
        ax.set_xticks([0, 1], ["random masking", "guided masking"], fontsize=8)
        ax.set_yticks([0, 1], ["no consistency", "consistency"], fontsize=8)
        ax.set_title(f"{ds}: DSC", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def vessel_share_figure(curves: dict[str, np.ndarray], path: Path, *, random_reference: float | None = None) -> Path:
    """Share of masked patches containing vessel per epoch: mean over seeds, band = min..max.

    ``random_reference``: the share of vessel patches among all patches of the pretraining data
    (what uniform random masking gives on average), drawn as a dashed line when given.
    """
    colors = method_colors(list(curves))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if random_reference is not None:
        ax.axhline(random_reference, color="0.35", ls="--", lw=1,
                   label=f"random masking, expected ({random_reference:.2f} = vessel patches / all patches)")
    for method, arr in curves.items():
        ep = np.arange(1, arr.shape[1] + 1)
        ax.plot(ep, arr.mean(0), marker="o" if arr.shape[1] < 15 else None, ms=3, color=colors[method], label=label(method))
        if arr.shape[0] > 1:
            ax.fill_between(ep, arr.min(0), arr.max(0), color=colors[method], alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked patches containing vessel")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def masking_figure(examples: Sequence[tuple[np.ndarray, np.ndarray]], maps: dict[str, np.ndarray],
                   stage_names: Sequence[str], path: Path) -> Path:
    """Rows: example images, then one row per recipe; for each image a column per stage.

    ``maps[recipe]`` is ``[n_images, n_stages, gh, gw]`` masking frequencies in [0, 1].
    """
    n_img, n_st = len(examples), len(stage_names)
    fig, axes = plt.subplots(1 + len(maps), n_img * n_st, figsize=(1.7 * n_img * n_st, 1.75 * (1 + len(maps))), squeeze=False)
    im = None
    for i, (image, prior) in enumerate(examples):
        for s in range(n_st):
            ax = axes[0, i * n_st + s]
            ax.imshow(image, cmap="gray")
            if s == 1 or n_st == 1:
                ax.contour(prior, levels=[0.5], colors="yellow", linewidths=0.6)
            ax.set_title(f"image {i + 1}" + (" + prior" if s == 1 or n_st == 1 else ""), fontsize=8)
        for r, (recipe, m) in enumerate(maps.items(), start=1):
            for s in range(n_st):
                ax = axes[r, i * n_st + s]
                ax.imshow(image, cmap="gray", extent=(0, 1, 1, 0))
                im = ax.imshow(m[i, s], cmap="magma", vmin=0, vmax=1, alpha=0.7, extent=(0, 1, 1, 0))
                ax.contour(np.linspace(0, 1, prior.shape[1]), np.linspace(0, 1, prior.shape[0]), prior, levels=[0.5],
                           colors="cyan", linewidths=0.4)
                if r == 1:
                    ax.set_title(stage_names[s], fontsize=7)
                if i == 0 and s == 0:
                    ax.set_ylabel(label(recipe).replace(" (", "\n("), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=min(0.6, 2.5 / (1 + len(maps))), label="P(patch masked)")
    return _save(fig, path)


def clustering_figure(stats: dict[tuple[str, str, str], Stat], methods: Sequence[str], datasets: Sequence[str],
                      path: Path) -> Path:
    """Silhouette of vessel vs background patch tokens per encoder (bars) and seeds (dots)."""
    colors = method_colors(methods)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 0.32 * len(methods) + 1.2), squeeze=False)
    y = np.arange(len(methods))[::-1]
    for i, ds in enumerate(datasets):
        ax = axes[0, i]
        for yy, method in zip(y, methods):
            st = stats.get((method, ds, "silhouette"))
            if st is None or st.n == 0:
                continue
            ax.barh(yy, st.mean, color=colors[method], alpha=0.85)
            ax.scatter(st.values, [yy] * len(st.values), s=9, color="k", zorder=3)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks(y, [label(m) for m in methods] if i == 0 else [""] * len(methods), fontsize=8)
        ax.set_title(f"{ds}: silhouette (vessel vs background)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def pca_figure(points: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, max_points: int = 1500, seed: int = 0) -> Path:
    """2-D PCA of patch tokens per encoder, vessel patches in red over background in grey."""
    n = len(points)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.9 * rows), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, (name, (xy, lab)) in zip(axes.ravel(), points.items()):
        idx = rng.choice(len(xy), size=min(max_points, len(xy)), replace=False)
        xy, lab = xy[idx], lab[idx]
        ax.scatter(*xy[~lab].T, s=4, color="0.65", alpha=0.5, label="background", rasterized=True)
        ax.scatter(*xy[lab].T, s=6, color="crimson", alpha=0.7, label="vessel", rasterized=True)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, loc="best", markerscale=2)
    fig.tight_layout()
    return _save(fig, path)


OUTCOME_COLORS = {"hit (vessel found)": (1, 1, 1), "false positive": (0.9, 0.2, 0.2), "missed vessel": (0.25, 0.45, 1.0)}


def outcome_legend(fig) -> None:
    """The legend of outcome-coloured prediction panels, below the panels."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="0.5", label=name) for name, c in OUTCOME_COLORS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)


def predictions_figure(rows: list[dict], methods: Sequence[str], path: Path, *, title: str = "",
                       labels: dict[str, str] | None = None) -> Path:
    """Per test image: image, ground truth, then each method's prediction coloured by outcome
    (white = hit, red = false positive, blue = missed vessel; legend below), test DSC under each
    panel. Column titles: ``labels[method]``, else the registry's display name."""
    cols = 2 + len(methods)
    fig, axes = plt.subplots(len(rows), cols, figsize=(max(1.45 * cols, 5.5), 1.5 * len(rows) + 0.6), squeeze=False,
                             layout="constrained")
    for r, row in enumerate(rows):
        gt = row["mask"]
        axes[r, 0].imshow(row["image"], cmap="gray")
        axes[r, 1].imshow(gt, cmap="gray")
        for c, method in enumerate(methods, start=2):
            pred = row["preds"].get(method)
            ax = axes[r, c]
            if pred is None:
                ax.axis("off")
                continue
            rgb = np.zeros((*gt.shape, 3))
            hit, false_pos, missed = OUTCOME_COLORS.values()
            rgb[pred & gt] = hit
            rgb[pred & ~gt] = false_pos
            rgb[~pred & gt] = missed
            ax.imshow(rgb)
            if "dice" in row and method in row["dice"]:
                ax.set_xlabel(f"{row['dice'][method]:.2f}", fontsize=7, labelpad=1)
        if r == 0:
            for c, name in enumerate(["image", "ground truth"] + [(labels or {}).get(m) or label(m) for m in methods]):
                axes[0, c].set_title(name.replace(" (", "\n("), fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle((f"{title}; " if title else "") + "number under a prediction: its DSC", fontsize=9)
    outcome_legend(fig)
    return _save(fig, path)
