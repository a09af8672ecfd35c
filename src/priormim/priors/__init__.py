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
    collimator_mask,
    component_labels,
    effective_border,
    threshold_vesselness,
    vessel_mask,
    vesselness,
)

__all__ = [
    "KEEP_MODES",
    "PriorCacheSummary",
    "collimator_mask",
    "component_labels",
    "compute_vessel_priors",
    "effective_border",
    "ensure_vessel_priors",
    "load_prior",
    "prior_path",
    "read_manifest",
    "threshold_vesselness",
    "vessel_mask",
    "vesselness",
]
