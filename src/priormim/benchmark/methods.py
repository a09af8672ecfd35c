"""The methods a bench run compares, and which of them exist in this installation.

Three baselines need no pretraining: thresholded Sato vesselness (no training at all), a
U-Net and a ViT trained from scratch. Every other method is a packaged pretraining recipe
(``src/priormim/configs/<name>.yaml``) whose exported encoder initialises the same ViT.
A recipe that is not installed (yet) is skipped with a logged warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from priormim.config import PACKAGED_CONFIGS
from priormim.errors import UserError

log = logging.getLogger(__name__)

BASELINES = ("vesselness", "unet", "vit_scratch")

# The comparison set: one pretrained ViT per recipe, in table order.
COMPARISON_RECIPES = (
    "mae", "simmim", "amt", "hpm", "deblurmim", "crossmae", "mocov3", "dino", "chexworld", "vasomim",
)

# The ablation: anatomy-guided masking on/off x anatomical consistency loss on/off.
ABLATION = {  # recipe -> (guidance, consistency)
    "mae": (False, False),
    "vasomim_consistency_only": (False, True),
    "vasomim_guidance_only": (True, False),
    "vasomim": (True, True),
}

# Recipes whose model ignores the engine's mask (it compares two augmented views instead):
# their masking maps and logged masked-vessel share mean nothing, so analyses (a) and (b)
# leave them out.
MASK_FREE = frozenset({"mocov3", "dino"})

DEFAULT_RECIPES = COMPARISON_RECIPES + tuple(r for r in ABLATION if r not in COMPARISON_RECIPES)

_LABELS = {
    "vesselness": "Sato vesselness (no training)",
    "random_init": "Random init (no pretraining)",
    "unet": "U-Net (scratch)",
    "vit_scratch": "ViT (scratch)",
    "mae": "MAE", "simmim": "SimMIM", "amt": "AMT", "hpm": "HPM", "deblurmim": "DeblurMIM",
    "crossmae": "CrossMAE", "mocov3": "MoCo v3", "dino": "DINO", "chexworld": "CheXWorld",
    "vasomim": "VasoMIM", "vasomim_guidance_only": "VasoMIM (guidance only)",
    "vasomim_consistency_only": "VasoMIM (consistency only)",
}


def label(method: str) -> str:
    """Display name: ``vasomim`` -> ``VasoMIM``, ``unet`` -> ``U-Net (scratch)``."""
    return _LABELS.get(method, method)


def recipe_exists(name: str) -> bool:
    return (PACKAGED_CONFIGS / f"{name}.yaml").is_file()


@dataclass(frozen=True)
class MethodSelection:
    """What a run compares: baselines and installed pretraining recipes (in order)."""

    baselines: tuple[str, ...]
    recipes: tuple[str, ...]
    missing: tuple[str, ...]  # requested recipes that are not installed


def select_methods(recipes: list[str] | None = None, baselines: list[str] | None = None) -> MethodSelection:
    """Resolve ``--methods`` / ``--baselines``.

    ``recipes=None`` means every default recipe; names that are baselines may also be given
    there. Recipes without a packaged config are dropped with a warning (so the bench runs
    before every zoo recipe lands); a name that is neither a baseline nor a known or packaged
    recipe is a UserError.
    """
    chosen_baselines = list(BASELINES if baselines is None else baselines)
    wanted = list(DEFAULT_RECIPES if recipes is None else recipes)
    chosen: list[str] = []
    missing: list[str] = []
    for name in wanted:
        if name in BASELINES:
            if name not in chosen_baselines:
                chosen_baselines.append(name)
        elif recipe_exists(name):
            if name not in chosen:
                chosen.append(name)
        elif name in DEFAULT_RECIPES:
            missing.append(name)
        else:
            known = sorted(set(DEFAULT_RECIPES) | {p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")} | set(BASELINES))
            raise UserError(f"unknown method {name!r}; known: {', '.join(known)}")
    for name in chosen_baselines:
        if name not in BASELINES:
            raise UserError(f"unknown baseline {name!r}; use some of: {', '.join(BASELINES)}")
    if missing:
        log.warning("skipping %d method(s) whose recipe is not installed in %s: %s",
                    len(missing), PACKAGED_CONFIGS, ", ".join(missing))
    order = {b: i for i, b in enumerate(BASELINES)}
    return MethodSelection(baselines=tuple(sorted(set(chosen_baselines), key=order.__getitem__)),
                           recipes=tuple(chosen), missing=tuple(missing))
