"""Anatomical priors that guide masking: vessel maps for angiograms (VasoMIM)."""

from priormim.priors.cache import (
    PriorCacheSummary,
    compute_vessel_priors,
    ensure_vessel_priors,
    load_prior,
    prior_path,
    read_manifest,
)
from priormim.priors.vessel import (
    KEEP_MODES,
    PRESETS,
    collimator_mask,
    component_labels,
    effective_border,
    official_threshold,
    threshold_vesselness,
    vessel_mask,
    vesselness,
)

__all__ = [
    "KEEP_MODES",
    "PRESETS",
    "PriorCacheSummary",
    "collimator_mask",
    "component_labels",
    "compute_vessel_priors",
    "effective_border",
    "ensure_vessel_priors",
    "load_prior",
    "official_threshold",
    "prior_path",
    "read_manifest",
    "threshold_vesselness",
    "vessel_mask",
    "vesselness",
]
