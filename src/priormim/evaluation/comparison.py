"""The paper's comparison in one harness: every method fine-tuned and scored the same way.

Traditional vesselness (no training), U-Net from scratch, ViT from scratch, and ViTs
initialised from each pretraining run's exported encoder, all through
:func:`priormim.training.finetune_seg.finetune_segmentation` and the same metric code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from priormim.training.finetune_seg import SegFinetuneConfig, finetune_segmentation, fixed_split, run_vesselness_baseline
from priormim.training.results import aggregate_runs, format_results_markdown, write_results_table


def compare_segmentation(
    *,
    out: Path,
    encoders: Mapping[str, Path],
    backbone: str,
    model_kwargs: dict,
    img_size: int,
    epochs: int,
    seeds: Sequence[int],
    device: str = "auto",
    train: Path | None = None,
    test: Path | None = None,
    data: Path | None = None,
    unet_base_channels: int = 16,
    batch_size: int = 8,
    title: str = "Vessel segmentation",
) -> dict[str, Any]:
    """Fine-tune and score every method on one data set; returns rows and the Markdown table.

    Pass ``train`` + ``test`` folders, or one ``data`` folder to split with :func:`fixed_split`
    (the test part is never used for model selection). ``encoders`` maps a method name to an
    exported encoder (e.g. ``{"MAE": .../encoder.safetensors, "VasoMIM": ...}``).
    """
    out.mkdir(parents=True, exist_ok=True)
    common = dict(train=train, test=test, data=data, img_size=img_size, epochs=epochs, seeds=tuple(seeds),
                  device=device, batch_size=batch_size)
    run_dirs: list[Path] = []

    # Traditional baseline, scored on exactly the test images the learned models see.
    base_dir = out / "vesselness"
    if data is not None:
        from priormim.data.readers import read_segmentation_folder

        names = [p.name for p in read_segmentation_folder(data)]
        run_vesselness_baseline(data, base_dir, names=fixed_split(names)["test"])
    else:
        run_vesselness_baseline(test, base_dir)
    run_dirs.append(base_dir)

    jobs: list[tuple[str, SegFinetuneConfig]] = [
        ("unet", SegFinetuneConfig(out=out / "unet", model="unet", unet_base_channels=unet_base_channels,
                                   label="U-Net (scratch)", **common)),
        ("vit_scratch", SegFinetuneConfig(out=out / "vit_scratch", model="vit", backbone=backbone,
                                          model_kwargs=dict(model_kwargs), label="ViT (scratch)", **common)),
    ]
    for name, enc in encoders.items():
        jobs.append((name.lower(), SegFinetuneConfig(out=out / name.lower(), model="vit", backbone=backbone,
                                                     encoder=Path(enc), label=f"ViT ({name})", **common)))
    for _, cfg in jobs:
        res = finetune_segmentation(cfg)
        run_dirs.extend(res.run_dirs)
    rows = aggregate_runs(run_dirs)
    md_path, csv_path = write_results_table(rows, out, title=title)
    return {
        "rows": [{"method": r.method, "mean": r.mean, "std": r.std, "n_runs": r.n_runs} for r in rows],
        "markdown": format_results_markdown(rows, title=title),
        "results_md": str(md_path),
        "results_csv": str(csv_path),
    }
