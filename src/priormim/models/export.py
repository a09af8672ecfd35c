"""Export an encoder as safetensors with timm's key names.

Its metadata carries what a downstream run needs to rebuild and normalise inputs (timm name,
``create_model`` kwargs including ``img_size``, grey-level mean/std). Load it with
:func:`priormim.load_encoder` (a timm model whose ``pretrained_cfg`` has that input size and
those statistics), or with timm alone::

    timm.create_model(name, pretrained=True, in_chans=1, num_classes=0, **model_kwargs,
                      pretrained_cfg_overlay=dict(file=PATH, input_size=(1, S, S), mean=(m,), std=(s,)))

(without ``input_size`` timm assumes 3 channels and refuses the one-channel patch embedding).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def export_encoder(
    encoder: nn.Module,
    path: str | Path,
    *,
    model_name: str,
    model_kwargs: dict,
    norm_mean: float,
    norm_std: float,
    method: str,
) -> Path:
    """Write ``encoder.state_dict()`` (timm keys, no head) to ``path`` atomically."""
    from safetensors.torch import save

    from priormim.io import atomic_write_bytes

    path = Path(path)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder.state_dict().items()}
    metadata = {
        "format": "pt",
        "priormim_model_name": model_name,
        "priormim_model_kwargs": json.dumps(model_kwargs),
        "priormim_norm_mean": repr(float(norm_mean)),
        "priormim_norm_std": repr(float(norm_std)),
        "priormim_method": method,
    }
    atomic_write_bytes(path, save(state, metadata=metadata))  # user's umask, one-line WriteError on failure
    return path
