"""Refuse timm names that are not plain Vision Transformers, before anything is built.

Every model here drives a timm ``VisionTransformer`` the timm way (``patch_embed`` with a fixed
grid, ``_pos_embed``, ``blocks``, ``norm``). Other timm families fail late and obscurely when
built with these kwargs (``resnet50``: a ``TypeError`` about ``img_size``; ``swin_*``: a shape
error in the first forward), so the name is checked against timm's registry first.
"""

from __future__ import annotations

from pathlib import Path

from priormim.errors import UserError

# timm modules whose models are ``VisionTransformer`` (or a subclass with the same token path).
VIT_MODULES = ("vision_transformer", "deit", "vision_transformer_hybrid")


def timm_family(name: str) -> str | None:
    """The timm module that defines ``name`` (``"resnet"``, ``"vision_transformer"``...), or None if unknown."""
    from timm.models import is_model, model_entrypoint

    base = name.split(".", 1)[0]  # drop a pretrained tag such as ".augreg_in21k"
    if not is_model(base):
        return None
    return model_entrypoint(base).__module__.rsplit(".", 1)[-1]


def require_vit(name: str, *, path: str | Path | None = None) -> None:
    """Raise a one-line :class:`UserError` unless ``name`` is a timm ViT this project can train.

    ``path`` (a config or encoder file) is named in the message when given.
    """
    family = timm_family(name)
    if family is None:
        raise UserError(f"{name!r} is not a timm model name; use a ViT such as vit_tiny_patch16_224 "
                        "(see timm.list_models('vit_*'))", path)
    if family not in VIT_MODULES:
        raise UserError(f"{name!r} is a timm {family} model, not a Vision Transformer; priormim needs a ViT "
                        "encoder, e.g. vit_tiny_patch16_224 or vit_base_patch16_224", path)
