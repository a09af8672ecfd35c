"""Vessel-segmentation fine-tuning (ViT encoder + conv decoder, or U-Net from scratch).

The protocol, the same for every method so that comparisons are fair:

* images of any size are resized (bilinear, antialiased) to ``img_size x img_size`` for the
  model, masks with nearest neighbour (or, with ``native``, not resized at all); logits are
  mapped back to each image's original size (bilinear) and thresholded before scoring, so
  metrics are at the original resolution;
* post-processing (:class:`PostProcess`, stored in ``config.json``): predictions outside the
  X-ray field of view (flat collimator regions touching the frame, as
  :func:`priormim.priors.vessel.collimator_mask` finds them, the same exclusion the
  vesselness baseline uses) are background, and the probability threshold is picked on the
  validation split (by Dice, from 0.3 to 0.7) once the best epoch is chosen;
* with ``train_crop`` the model trains on random ``train_crop`` windows of that image; a
  U-Net then predicts the whole image at once, a ViT (whose position embeddings are tied to
  its input size) predicts it window by window with half-window overlap and averages the
  logits (:func:`sliding_window_logits`);
* grey-level normalisation per data set: the encoder file's stats, else the training set's;
* paired augmentation: one random geometry (resized crop, flips, small rotation) for image and
  mask, intensity jitter on the image only;
* BCE + soft Dice, AdamW (layer-wise lr decay for a pretrained ViT), cosine schedule with
  warm-up; the best epoch is picked by Dice on a validation split (carved from the training
  folder with a fixed seed, or ``--val``), never the test set;
* one run per seed under ``<out>/seed<k>/`` (``metrics.json``, ``model.safetensors``,
  ``config.json``); a seed whose ``metrics.json`` exists is skipped on re-run; ``results.md``
  and ``results.csv`` give mean ± std over seeds.

Everything is plain functions usable without the CLI: :func:`finetune_segmentation`,
:func:`run_vesselness_baseline`, :func:`load_segmenter`, :func:`predict_masks`, :func:`predict_logits`.

The code lives in :mod:`priormim.training.seg` (one module per concern; the few-label
``--recipe strong`` preset and its pieces in :mod:`priormim.training.seg.recipe`); this module
re-exports its names, the historical import path.
"""

from __future__ import annotations

from priormim.models.seg import NormStats  # noqa: F401  (re-exported: callers import it from here)
from priormim.training.distributed import resolve_device  # noqa: F401
from priormim.training.seg.config import (  # noqa: F401
    AUGMENT_LEVELS,
    CONFIG_FORMAT,
    SCHEDULES,
    FOV_METHODS,
    THRESHOLD_GRID,
    SegFinetuneConfig,
    _encoder_img_size,
    carve_validation,
    fixed_split,
)
from priormim.training.seg.data import (  # noqa: F401
    STRONG_AUGMENT,
    AugmentConfig,
    SegData,
    SegSample,
    compute_norm_stats,
    load_samples,
    paired_augment,
    prepare_data,
    read_label_mask,
    resize_image,
    resize_mask,
    stack_native,
    stack_resized,
)
from priormim.training.seg.model_io import (  # noqa: F401
    _pick_model_dir,
    build_segmenter,
    create_segmenter,
    load_segmenter,
    save_segmenter,
)
from priormim.training.seg.inference import (  # noqa: F401
    HYSTERESIS_GAPS,
    PostProcess,
    _autocast,
    evaluate_samples,
    choose_postprocess,
    pick_postprocess,
    pick_threshold,
    predict_logits,
    predict_masks,
    score_masks,
    sliding_window_logits,
    val_dice,
)
from priormim.training.seg.loop import (  # noqa: F401
    POSTPROCESS_KEYS,
    _changed_settings,
    _check_finished_seed,
    _eval_kwargs,
    _resume_fingerprint,
    _seed_everything,
    finish_seed,
    make_optimizer,
    make_scheduler,
    rescore_seed,
    train_one_seed,
)
from priormim.training.seg.run import (  # noqa: F401
    SegRunResult,
    _check_split_file,
    finetune_segmentation,
)
from priormim.training.seg.baseline import (  # noqa: F401
    baseline_mask,
    evaluate_seed_ensemble,
    evaluate_saved_model,
    run_vesselness_baseline,
)
from priormim.training.seg.recipe import (  # noqa: F401
    RECIPES,
    dihedral_tta,
    elastic_grid_offsets,
    ensemble_probabilities,
    flip_tta,
    gaussian_blur_batch,
    hysteresis_mask,
    recipe_config,
    recipe_overrides,
)
