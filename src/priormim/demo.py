"""``priormim demo``: the whole VasoMIM pipeline on built-in synthetic angiograms.

Synthesise data -> vessel priors -> consistency segmentor -> pretrain MAE and VasoMIM ->
figures -> fine-tune every method for vessel segmentation -> a DSC / clDice table. Sized to
finish in about 10 minutes on a 2-core CPU; the same command uses a GPU when there is one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from priormim.config import load_config
from priormim.training.distributed import resolve_device

log = logging.getLogger(__name__)


@dataclass
class DemoScale:
    """Sizes for the demo; ``quick`` is for tests (seconds, not minutes)."""

    n_unlabelled: int = 192  # pretraining images
    n_train: int = 40  # labelled images for fine-tuning (DCA1 has 40)
    n_test: int = 24
    synth_size: int = 96
    img_size: int = 64
    encoder_kwargs: dict = field(default_factory=lambda: {"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3})
    pretrain_epochs: int = 60
    batch_size: int = 32
    segmentor_epochs: int = 20
    finetune_epochs: int = 60
    unet_base_channels: int = 16
    n_cxr_train: int = 160  # synthetic chest X-rays with simulated gaze (VP-MIM part)
    n_cxr_test: int = 80
    cxr_pretrain_epochs: int = 30
    cxr_probe_epochs: int = 60

    @classmethod
    def quick(cls) -> "DemoScale":
        return cls(n_unlabelled=12, n_train=8, n_test=4, synth_size=48, img_size=32,
                   encoder_kwargs={"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2},
                   pretrain_epochs=2, batch_size=4, segmentor_epochs=1, finetune_epochs=1, unet_base_channels=4,
                   n_cxr_train=12, n_cxr_test=8, cxr_pretrain_epochs=1, cxr_probe_epochs=2)


def _step(msg: str) -> float:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)
    return time.perf_counter()


def pretrain_config(recipe: str, scale: DemoScale, images: Path, priors: Path, segmentor: Path, device: str, seed: int):
    return load_config(recipe, {
        "model": {"img_size": scale.img_size, "encoder_kwargs": scale.encoder_kwargs,
                  "decoder_embed_dim": 64, "decoder_depth": 2, "decoder_num_heads": 4},
        "data": {"images": str(images), "priors": str(priors), "num_workers": 0, "crop_scale": [0.35, 1.0]},
        "optim": {"epochs": scale.pretrain_epochs, "warmup_epochs": max(1, scale.pretrain_epochs // 10),
                  "batch_size": scale.batch_size, "blr": 1.5e-3},
        "consistency": {"segmentor": str(segmentor)},
        "train": {"device": device, "seed": seed, "save_every": 10_000, "progress": True},
    })


def run_demo(
    out: str | Path = "demo_out",
    *,
    real: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    quick: bool = False,
    finetune: bool = True,
    cxr: bool = False,
) -> dict:
    """Run the demo into ``out``; returns the summary dict (also written as JSON/Markdown)."""
    from priormim.data.synth_xca import write_synthetic_xca
    from priormim.priors.cache import ensure_vessel_priors, load_prior
    from priormim.training.pretrain import pretrain
    from priormim.training.segmentor import SegmentorTrainConfig, train_segmentor

    scale = DemoScale.quick() if quick else DemoScale()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t = _step(f"synthesising {scale.n_unlabelled} unlabelled, {scale.n_train} labelled and {scale.n_test} test angiograms")
    unlab_dir = out / "data" / "xca_unlabelled"
    train_dir, test_dir = out / "data" / "xca_train", out / "data" / "xca_test"
    for folder, n, offset in ((unlab_dir, scale.n_unlabelled, 0), (train_dir, scale.n_train, 1000), (test_dir, scale.n_test, 2000)):
        if not (folder / "images").exists() or len(list((folder / "images").glob("*.png"))) < n:
            write_synthetic_xca(folder, n=n, size=scale.synth_size, seed=seed + offset)
    timings["synthesis"] = time.perf_counter() - t

    t = _step("computing vessel priors (Sato, sigmas 1-4, percentile 92, one connected component)")
    prior_dir = unlab_dir / "priors" / "vessel"
    summary = ensure_vessel_priors(unlab_dir / "images", prior_dir)
    timings["priors"] = time.perf_counter() - t
    paths = sorted((unlab_dir / "images").glob("*.png"))

    t = _step("training the frozen consistency segmentor on the priors' pseudo-labels")
    seg_path = out / "segmentor.safetensors"
    if not seg_path.exists():
        train_segmentor(
            SegmentorTrainConfig(epochs=scale.segmentor_epochs, img_size=scale.img_size, seed=seed, batch_size=16),
            paths=paths, prior_loader=lambda p: load_prior(prior_dir, p), out=seg_path, device=dev,
        )
    timings["segmentor"] = time.perf_counter() - t

    runs: dict[str, Path] = {}
    histories: dict[str, list[dict]] = {}
    for name, recipe in (("MAE", "mae"), ("VasoMIM", "vasomim")):
        t = _step(f"pretraining {name} ({scale.pretrain_epochs} epochs)")
        run_dir = out / "runs" / recipe
        cfg = pretrain_config(recipe, scale, unlab_dir / "images", prior_dir, seg_path, device, seed)
        if (run_dir / "encoder.safetensors").exists() and (run_dir / "history.json").exists():
            histories[name] = json.loads((run_dir / "history.json").read_text())
        else:
            res = pretrain(cfg, run_dir, resume=(run_dir / "last.ckpt").exists())
            histories[name] = res.history
        runs[name] = run_dir
        timings[f"pretrain_{recipe}"] = time.perf_counter() - t

    t = _step("drawing figures")
    figures = make_pretraining_figures(out, runs, histories, scale, unlab_dir, prior_dir, seed)
    timings["figures"] = time.perf_counter() - t

    table = None
    if finetune:
        t = _step("fine-tuning every method for vessel segmentation")
        table = run_segmentation_table(out, runs, train_dir, test_dir, scale, device, seed, real=real)
        timings["finetune"] = time.perf_counter() - t

    cxr_table = None
    if cxr:
        t = _step("chest X-ray part: pretraining MAE and VP-MIM on synthetic CXRs with gaze, then linear probes")
        cxr_table = run_cxr_part(out, scale, device, seed)
        timings["cxr"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - t_all
    result = {
        "device": str(dev),
        "scale": scale.__dict__,
        "priors": {"done": summary.n_done, "skipped_existing": summary.n_skipped_existing, "failed": summary.n_failed},
        "pretraining": {
            name: {k: hist[-1][k] for k in ("loss", "loss_rec", "loss_cons", "masked_vessel_share", "beta") if k in hist[-1]}
            | {"first_epoch_masked_vessel_share": hist[0]["masked_vessel_share"]}
            for name, hist in histories.items()
        },
        "figures": [str(p.relative_to(out)) for p in figures],
        "segmentation": table,
        "classification": cxr_table,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    (out / "summary.md").write_text(summary_markdown(result))
    print(summary_markdown(result))
    return result


@torch.no_grad()
def make_pretraining_figures(out, runs, histories, scale, train_dir, prior_dir, seed) -> list[Path]:
    from priormim.data.pretrain import PretrainDataset, eval_transform
    from priormim.evaluation.figures import (
        loss_curves, mask_to_image, masking_frequency, masking_frequency_figure, reconstruct,
        reconstruction_grid, stage_epochs, vessel_share_curve,
    )
    from priormim.masking import MaskingContext, patch_prob_from_prior
    from priormim.priors.cache import load_prior
    from priormim.training.checkpoint import load_checkpoint
    from priormim.training.pretrain import build_masking_strategy, build_model
    from priormim.config import PretrainConfig, _from_dict

    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    paths = sorted((train_dir / "images").glob("*.png"))[:3]
    figures = [vessel_share_curve(histories, fig_dir / "masked_vessel_share.png"),
               loss_curves(histories, fig_dir / "loss_curves.png")]
    rows = {}
    freqs = {}
    stages = stage_epochs(scale.pretrain_epochs)  # distinct epochs and their schedule progress
    for name, run_dir in runs.items():
        ckpt = load_checkpoint(run_dir / "last.ckpt")
        cfg = _from_dict(PretrainConfig, ckpt["config"], "", str(run_dir))
        model = build_model(cfg)
        model.load_state_dict(ckpt["model"])
        model.eval()
        ds = PretrainDataset(paths, transform=eval_transform(cfg.model.img_size), norm_mean=cfg.data.norm_mean,
                             norm_std=cfg.data.norm_std, prior_loader=lambda p: load_prior(prior_dir, p))
        items = [ds[i] for i in range(len(ds))]
        imgs = torch.stack([it["image"] for it in items])
        priors = torch.stack([it["prior"] for it in items])
        strategy = build_masking_strategy(cfg)
        gen = torch.Generator().manual_seed(seed)
        ctx = MaskingContext(batch_size=len(items), grid_size=model.grid_size,
                             patch_prior=patch_prob_from_prior(priors, model.patch_size), progress=1.0, generator=gen)
        mask = strategy(ctx)
        recon = reconstruct(model, imgs, mask)
        to01 = lambda x: (x * cfg.data.norm_std + cfg.data.norm_mean).clamp(0, 1)  # noqa: E731
        mimg = mask_to_image(mask, model)
        for i in range(min(2, len(items))):
            rows[f"{name} #{i}"] = {"image": to01(imgs[i]), "prior": priors[i], "mask_image": mimg[i], "recon": to01(recon[i])}
        freqs[name] = masking_frequency(strategy, priors[:1], patch_size=model.patch_size, grid_size=model.grid_size,
                                        progress_values=[p for _, p in stages], draws=256, seed=seed)
        first_image = to01(imgs[0])[0].numpy()
        first_prior = priors[0, 0].numpy()
    figures.append(reconstruction_grid(rows, fig_dir / "reconstructions.png",
                                       title="final-epoch masks (beta at its end value)"))
    figures.append(masking_frequency_figure(first_image, first_prior, freqs,
                                            [f"epoch {e}" for e, _ in stages],
                                            fig_dir / "masking_frequency.png"))
    return figures


def run_segmentation_table(out, runs, train_dir, test_dir, scale, device, seed, real=None):
    """Fine-tune baselines + pretrained encoders and tabulate DSC / clDice (issue 3's table)."""
    from priormim.evaluation.comparison import compare_segmentation

    encoders = {name: run_dir / "encoder.safetensors" for name, run_dir in runs.items()}
    common = dict(encoders=encoders, backbone="vit_tiny_patch16_224", model_kwargs=scale.encoder_kwargs,
                  img_size=scale.img_size, epochs=scale.finetune_epochs, seeds=(seed,), device=device,
                  unet_base_channels=scale.unet_base_channels)
    table = compare_segmentation(out=out / "finetune" / "synthetic", train=train_dir, test=test_dir,
                                 title="Vessel segmentation, synthetic test set", **common)
    if real is not None:
        real_table = compare_segmentation(out=out / "finetune" / "real", data=Path(real),
                                          title=f"Vessel segmentation, {Path(real).name} (fixed split, test part)",
                                          **common)
        table["markdown"] += "\n\n" + real_table["markdown"]
        table["real"] = real_table
    return table


def run_cxr_part(out: Path, scale: DemoScale, device: str, seed: int) -> dict:
    """VP-MIM vs MAE on synthetic chest X-rays: pretrain both, linear-probe each (and a random
    encoder), AUC on a held-out synthetic test set."""
    from priormim.data.synth_cxr import write_synthetic_cxr
    from priormim.training.finetune_cls import ClsFinetuneConfig, finetune_classification
    from priormim.training.pretrain import pretrain
    from priormim.training.results import aggregate_runs

    train_dir, test_dir = out / "data" / "cxr_train", out / "data" / "cxr_test"
    for folder, n, offset in ((train_dir, scale.n_cxr_train, 0), (test_dir, scale.n_cxr_test, 1000)):
        if not (folder / "labels.csv").exists():
            write_synthetic_cxr(folder, n=n, size=scale.synth_size, seed=seed + offset)
    encoders: dict[str, Path | None] = {"random init": None}
    for name, recipe in (("MAE", "mae"), ("VP-MIM", "vpmim")):
        run_dir = out / "runs" / f"cxr_{recipe}"
        if not (run_dir / "encoder.safetensors").exists():
            pscales = [1, 2, 4] if scale.encoder_kwargs.get("patch_size", 16) >= 8 else [1, 2]
            cfg = load_config(recipe, {
                "model": {"img_size": scale.img_size, "encoder_kwargs": scale.encoder_kwargs,
                          "decoder_embed_dim": 64, "decoder_depth": 3, "decoder_num_heads": 4}
                         | ({"pyramid_scales": pscales, "pyramid_weights": [1.0 / s for s in pscales]} if recipe == "vpmim" else {}),
                "data": {"images": str(train_dir / "images"), "num_workers": 0, "hflip": False,
                         "prior": "gaze" if recipe == "vpmim" else "none"},
                "optim": {"epochs": scale.cxr_pretrain_epochs, "warmup_epochs": max(1, scale.cxr_pretrain_epochs // 10),
                          "batch_size": scale.batch_size, "blr": 1.5e-3},
                "train": {"device": device, "seed": seed, "save_every": 10_000},
            })
            pretrain(cfg, run_dir, resume=(run_dir / "last.ckpt").exists())
        encoders[name] = run_dir / "encoder.safetensors"
    run_dirs: list[Path] = []
    for name, enc in encoders.items():
        res = finetune_classification(ClsFinetuneConfig(
            train=train_dir, test=test_dir, out=out / "finetune" / "cxr" / name.lower().replace(" ", "_"),
            encoder=enc, mode="linear", seeds=[seed], img_size=scale.img_size, epochs=scale.cxr_probe_epochs,
            model_kwargs=None if enc is not None else dict(scale.encoder_kwargs), device=device, num_workers=0,
            label=f"linear probe ({name})",
        ))
        run_dirs.extend(res.out_dir / f"seed{s}" for s in res.seeds)
    rows = aggregate_runs(run_dirs, metrics=("auc",))
    lines = ["| Method | test AUC | seeds |", "|---|---|---|"]
    lines += [f"| {r.method} | {r.mean['auc']:.3f} | {r.n_runs} |" for r in rows]
    lines.append(f"\nLesion vs none on {scale.n_cxr_test} held-out synthetic chest X-rays; one seed (the demo's budget), "
                 "so differences of a few points are within noise.")
    return {"rows": [{"method": r.method, "auc": r.mean.get("auc")} for r in rows], "markdown": "\n".join(lines)}


def summary_markdown(result: dict) -> str:
    lines = ["# priormim demo summary", "", f"device: {result['device']}", ""]
    lines += ["## Pretraining (final epoch)", "", "| method | loss | L_rec | L_cons | beta | masked patches with vessel (first -> last epoch) |",
              "|---|---|---|---|---|---|"]
    for name, r in result["pretraining"].items():
        lines.append(
            f"| {name} | {r['loss']:.4f} | {r['loss_rec']:.4f} | {r.get('loss_cons', float('nan')):.4f} | "
            f"{r.get('beta', float('nan')):.2f} | {r['first_epoch_masked_vessel_share']:.3f} -> {r['masked_vessel_share']:.3f} |"
        )
    if result.get("segmentation"):
        lines += ["", "## Vessel segmentation (fine-tuned, test split)", "", result["segmentation"]["markdown"]]
    if result.get("classification"):
        lines += ["", "## Chest X-ray classification (linear probe, synthetic test set)", "", result["classification"]["markdown"]]
    lines += ["", "## Figures", ""] + [f"- {f}" for f in result["figures"]]
    lines += ["", "## Time (s)", "", ", ".join(f"{k} {v}" for k, v in result["timings_s"].items()), ""]
    return "\n".join(lines)
