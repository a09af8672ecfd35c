"""Chest X-ray classification with a (pre-trained) ViT encoder: linear probe or full fine-tuning.

The historical import path: the code and its description live in :mod:`priormim.training.cls`
(split by concern); this module re-exports its names.
"""

from priormim.training.cls.config import (  # noqa: F401
    _RESUME_IGNORED,
    AMP_MODES,
    FORMATS,
    MODE_DEFAULTS,
    ClsFinetuneConfig,
    ClsRunResult,
    FitResult,
    _abs,
)
from priormim.training.cls.data import (  # noqa: F401
    _Data,
    _decode_split,
    _DecodeDataset,
    _Split,
    align_labels,
    check_training_labels,
    decode_images,
    detect_format,
    load_data,
    norm_from_images,
    patient_groups,
    read_split,
    split_indices,
    subset,
    task_of,
)
from priormim.training.cls.results import _summary_keys, write_results  # noqa: F401
from priormim.training.cls.run import (  # noqa: F401
    _fingerprint,
    _jsonable,
    _load_finished,
    _nan,
    finetune_classification,
    run_seed,
)
from priormim.training.cls.train import (  # noqa: F401
    SeedRun,
    auc_scores,
    classification_loss,
    fit,
    predict_logits,
    random_crop_rotate,
)

__all__ = [
    "FORMATS", "MODE_DEFAULTS", "ClsFinetuneConfig", "ClsRunResult", "FitResult", "SeedRun", "align_labels", "auc_scores",
    "check_training_labels", "classification_loss", "decode_images", "detect_format", "finetune_classification", "fit",
    "load_data", "norm_from_images", "patient_groups", "predict_logits", "random_crop_rotate", "read_split", "run_seed",
    "split_indices", "subset", "task_of", "write_results",
]
