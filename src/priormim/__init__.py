"""priormim: prior-guided masked image modeling (VasoMIM, VP-MIM) on X-ray images.

``import priormim`` stays light (no torch): the top-level helpers below are imported on first
use (PEP 562), so ``priormim --help`` answers at once.

- :func:`load_encoder` ``(path)``: an exported encoder as a timm ViT whose ``pretrained_cfg``
  has the right input size ``(1, H, W)`` and grey-level mean/std.
- :func:`save_pretrained` ``(source, directory)`` / :func:`from_pretrained` ``(directory)``:
  Hugging Face Hub model folders (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load_encoder": "priormim.models.hub",
    "save_pretrained": "priormim.models.hub",
    "from_pretrained": "priormim.models.hub",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from priormim.models.hub import from_pretrained, load_encoder, save_pretrained


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'priormim' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
