"""Compute budgets of ``priormim bench``: one dataclass, three presets.

A budget fixes everything that costs time (data set sizes, image size, model, epochs) and is
the same for every method, so the comparison is fair within a budget. ``smoke`` runs in
seconds (CI), ``cpu`` finishes the small suite (the methods that exist today, three seeds)
in well under an hour on two CPU cores, ``gpu`` is an overnight run on one GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from priormim.errors import UserError


@dataclass(frozen=True)
class Budget:
    """Sizes and schedules shared by every method of a bench run."""

    name: str
    # Synthetic data (generated at ``synth_size`` px; the models see ``img_size`` px).
    synth_size: int
    n_unlabelled: int  # synthetic images in the pretraining pool
    n_train: int  # labelled synthetic images for fine-tuning
    n_val: int  # labelled synthetic images for model selection
    n_test: int  # labelled synthetic images for scoring
    # One ViT for every method (timm name + overrides); the MAE decoder for MIM methods.
    img_size: int
    encoder: str
    encoder_kwargs: dict[str, Any]
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    # Pretraining (same epochs and batch for every method; each recipe's base lr is scaled
    # by ``blr_scale``: short runs on small batches need a larger step than the recipes' 1.5e-4).
    pretrain_epochs: int
    pretrain_warmup: int
    pretrain_batch: int
    blr_scale: float
    segmentor_epochs: int  # the frozen consistency segmentor, once per seed
    # Fine-tuning (same for every method and data set).
    finetune_epochs: int
    finetune_warmup: int
    finetune_batch: int
    unet_base_channels: int
    # Analysis.
    mask_draws: int  # masks drawn per image and stage for the masking-frequency maps
    n_example_images: int  # images in the masking-frequency figure
    max_cluster_points: int  # patch tokens subsampled for the silhouette score
    num_workers: int = 0  # data-loader workers for pretraining (on 2 CPU cores: 1, decoding beside the model)
    notes: str = ""

    @property
    def patch_size(self) -> int:
        return int(self.encoder_kwargs.get("patch_size", 16))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TINY_VIT = {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}
_SMALL_VIT = {"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3}

BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        name="smoke", synth_size=48, n_unlabelled=8, n_train=4, n_val=2, n_test=3,
        img_size=32, encoder="vit_tiny_patch16_224", encoder_kwargs=_TINY_VIT,
        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
        pretrain_epochs=2, pretrain_warmup=0, pretrain_batch=4, blr_scale=10.0, segmentor_epochs=1,
        finetune_epochs=1, finetune_warmup=0, finetune_batch=2, unet_base_channels=4,
        mask_draws=32, n_example_images=2, max_cluster_points=500,
        notes="seconds, for tests (the numbers mean nothing)",
    ),
    "cpu": Budget(
        name="cpu", synth_size=96, n_unlabelled=160, n_train=24, n_val=6, n_test=16,
        img_size=64, encoder="vit_tiny_patch16_224", encoder_kwargs=_SMALL_VIT,
        decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4,
        pretrain_epochs=25, pretrain_warmup=3, pretrain_batch=32, blr_scale=10.0, segmentor_epochs=10,
        finetune_epochs=25, finetune_warmup=3, finetune_batch=4, unet_base_channels=16,
        mask_draws=256, n_example_images=3, max_cluster_points=2000, num_workers=1,
        notes="the small suite, 3 seeds in under an hour on 2 CPU cores (docs/benchmark.md)",
    ),
    "gpu": Budget(
        name="gpu", synth_size=256, n_unlabelled=6000, n_train=160, n_val=40, n_test=100,
        img_size=224, encoder="vit_small_patch16_224", encoder_kwargs={"patch_size": 16},
        decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8,
        pretrain_epochs=300, pretrain_warmup=20, pretrain_batch=128, blr_scale=1.0, segmentor_epochs=30,
        finetune_epochs=200, finetune_warmup=10, finetune_batch=16, unet_base_channels=32,
        mask_draws=1024, n_example_images=4, max_cluster_points=4000, num_workers=8,
        notes="one GPU overnight (estimated, not yet timed on a GPU)",
    ),
}


def get_budget(name: str, **overrides: Any) -> Budget:
    """The preset ``name`` with fields replaced by ``overrides`` (e.g. ``pretrain_epochs=5``)."""
    if name not in BUDGETS:
        raise UserError(f"unknown budget {name!r}; use one of: {', '.join(BUDGETS)}")
    preset = BUDGETS[name]
    fields = {f.name for f in dataclasses.fields(Budget)} - {"name"}
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields:
            raise UserError(f"unknown budget field {key!r}; valid: {', '.join(sorted(fields))}")
        want = type(getattr(preset, key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise UserError(f"budget field {key!r} must be {want.__name__}, got {value!r}")
        checked[key] = value
    return dataclasses.replace(preset, **checked)


__all__ = ["BUDGETS", "Budget", "get_budget"]
