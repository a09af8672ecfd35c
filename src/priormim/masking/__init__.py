"""Masking strategies for masked image modeling.

Pure batched functions (bool masks ``[B, L]``, True = masked, exactly
``num_masked(L, mask_ratio)`` per row) and :class:`MaskingStrategy` objects built by name
with :func:`build_masking`.
"""

from .base import (
    MaskIndices,
    MaskingContext,
    MaskingStrategy,
    build_masking,
    linear_schedule,
    mask_to_indices,
    masking_names,
    num_masked,
    register_masking,
)
from .random import RandomMasking, random_mask
from .anatomy import AnatomyGuidedMasking, anatomy_guided_mask, blend_guidance, patch_prob_from_prior
from .gaze import GazeGuidedMasking, GazeMaskResult, gaze_guided_mask, gaze_split
from .block import BlockMasking, block_mask
from .score import ScoreGuidedMasking, score_guided_mask

__all__ = [
    "AnatomyGuidedMasking",
    "BlockMasking",
    "GazeGuidedMasking",
    "GazeMaskResult",
    "MaskIndices",
    "MaskingContext",
    "MaskingStrategy",
    "RandomMasking",
    "ScoreGuidedMasking",
    "anatomy_guided_mask",
    "blend_guidance",
    "block_mask",
    "build_masking",
    "gaze_guided_mask",
    "gaze_split",
    "linear_schedule",
    "mask_to_indices",
    "masking_names",
    "num_masked",
    "patch_prob_from_prior",
    "random_mask",
    "register_masking",
    "score_guided_mask",
]
