"""Load exported encoders as timm models that know their own input size and grey levels.

An encoder written by ``priormim export`` is a safetensors file with timm key names whose
metadata names the architecture, its ``create_model`` kwargs (``img_size``, ``patch_size``...)
and the grey-level mean/std of the pretraining data. timm's own ``pretrained_cfg`` for the
architecture still says ``3 x 224 x 224`` and ImageNet-style statistics, so a model built from
the name alone is fed the wrong input by ``timm.data`` pipelines. :func:`load_encoder` builds the
model with a ``pretrained_cfg`` that matches the file::

    import priormim, timm
    enc = priormim.load_encoder("RUN/encoder.safetensors")        # [B, 1, H, W] -> [B, D]
    cfg = timm.data.resolve_model_data_config(enc)               # input_size (1, H, W), grey mean/std

:func:`save_pretrained` writes the Hugging Face Hub layout timm reads (``config.json`` +
``model.safetensors``); :func:`from_pretrained` reads it back from a local folder without the
network (timm's ``local-dir:`` source), or from the Hub with an ``hf-hub:owner/name`` id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from priormim.errors import UserError
from priormim.models.seg import EncoderMetadata, NormStats, read_encoder_metadata
from priormim.models.vit_names import require_vit

HUB_CONFIG = "config.json"
HUB_WEIGHTS = "model.safetensors"

# Arguments that describe the exported encoder itself; the caller cannot change them here.
_FIXED_KWARGS = ("in_chans", "num_classes", "pretrained", "pretrained_cfg_overlay")


def encoder_pretrained_cfg(meta: EncoderMetadata, *, img_size: tuple[int, int]) -> dict[str, Any]:
    """The ``pretrained_cfg`` entries an exported encoder needs: one channel, its size and grey levels.

    ``crop_pct`` is 1: priormim resizes whole X-rays and never centre-crops them. The ImageNet
    weight sources of the architecture's default config are cleared so nothing is downloaded.
    """
    norm = meta.norm
    assert norm is not None
    return {
        "input_size": (1, int(img_size[0]), int(img_size[1])),
        "mean": (float(norm.mean),),
        "std": (float(norm.std),),
        "crop_pct": 1.0,
        "num_classes": 0,
        "url": None,
        "hf_hub_id": None,
        "tag": meta.method or "priormim",
        "license": None,
    }


def _checked_metadata(path: Path) -> EncoderMetadata:
    meta = read_encoder_metadata(path)
    if meta.model_name is None or "img_size" not in meta.model_kwargs or meta.norm is None:
        raise UserError("has no priormim metadata (model name, img_size, grey-level mean/std); "
                        "export it with `priormim export --run RUN --out FILE`", path)
    require_vit(meta.model_name, path=path)
    return meta


def _as_size(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def load_encoder(path: str | Path, **timm_kwargs: Any) -> nn.Module:
    """A head-less one-channel timm ViT loaded from an exported encoder.

    Args:
        path: a ``.safetensors`` file from ``priormim export`` (or ``RUN/encoder.safetensors``),
            or a folder written by :func:`save_pretrained`.
        timm_kwargs: extra ``timm.create_model`` kwargs (e.g. ``drop_path_rate=0.1``,
            ``global_pool="avg"``); the file's architecture kwargs win over them.

    Returns:
        The model in eval mode: ``model(x)`` maps ``[B, 1, H, W]`` (normalised with the file's
        mean/std) to pooled features ``[B, D]``. ``model.pretrained_cfg`` carries
        ``input_size=(1, H, W)``, ``mean=(m,)``, ``std=(s,)`` so ``timm.data.resolve_model_data_config``
        and ``timm.data.create_transform`` build the right preprocessing.

    Raises UserError naming the file when it is missing, not an exported encoder, or not a ViT.
    """
    path = Path(path)
    if path.is_dir():
        return from_pretrained(path, **timm_kwargs)
    import timm

    meta = _checked_metadata(path)
    kwargs = {k: v for k, v in timm_kwargs.items() if k not in _FIXED_KWARGS}
    kwargs.update(meta.model_kwargs)
    overlay = dict(encoder_pretrained_cfg(meta, img_size=_as_size(kwargs["img_size"])), file=str(path))
    try:
        model = timm.create_model(meta.model_name, pretrained=True, in_chans=1, num_classes=0,
                                  pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as exc:  # timm: key or shape mismatch between the file and its own metadata
        raise UserError(f"weights do not fit the architecture its metadata names ({exc}); re-export the encoder",
                        path) from exc
    model.priormim_metadata = meta
    return model.eval()


def save_pretrained(source: str | Path | nn.Module, directory: str | Path) -> Path:
    """Write an encoder as a Hugging Face Hub model folder timm can load (offline or after upload).

    Args:
        source: an exported encoder file, or a model returned by :func:`load_encoder` /
            :func:`from_pretrained`.
        directory: the folder to write: ``config.json`` (architecture, kwargs, ``pretrained_cfg``
            with ``input_size (1, H, W)`` and the grey mean/std, plus a ``priormim`` block) and
            ``model.safetensors`` (timm keys, with the same ``priormim_*`` metadata as an export,
            so it also works as ``--encoder`` for ``priormim finetune``).

    Returns the folder. Upload it with ``huggingface_hub.upload_folder``; load it with
    :func:`from_pretrained` or ``timm.create_model("local-dir:FOLDER", pretrained=True)``.
    """
    from timm.models._hub import save_config_for_hf

    from priormim.models.export import export_encoder

    model = load_encoder(source) if isinstance(source, (str, Path)) else source
    meta: EncoderMetadata | None = getattr(model, "priormim_metadata", None)
    if meta is None or meta.norm is None or meta.model_name is None:
        raise UserError("save_pretrained needs a model from priormim.load_encoder (it carries the grey-level "
                        "metadata), or the path of an exported encoder")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    export_encoder(model, directory / HUB_WEIGHTS, model_name=meta.model_name, model_kwargs=meta.model_kwargs,
                   norm_mean=meta.norm.mean, norm_std=meta.norm.std, method=meta.method or "")
    model_args = dict(meta.model_kwargs, in_chans=1, num_classes=0)
    model_args["img_size"] = list(_as_size(model_args["img_size"]))
    priormim_block = {"method": meta.method, "norm_mean": meta.norm.mean, "norm_std": meta.norm.std,
                      "model_name": meta.model_name, "model_kwargs": meta.model_kwargs}
    save_config_for_hf(model, str(directory / HUB_CONFIG), model_config={"priormim": priormim_block},
                       model_args=model_args)
    return directory


def _metadata_from_config(config: dict[str, Any]) -> EncoderMetadata | None:
    """The ``priormim`` block of a Hub ``config.json`` as :class:`EncoderMetadata` (None if absent)."""
    block = config.get("priormim") or {}
    if not block.get("model_name") or block.get("norm_mean") is None or block.get("norm_std") is None:
        return None
    return EncoderMetadata(model_name=block["model_name"], model_kwargs=dict(block.get("model_kwargs") or {}),
                           norm=NormStats(float(block["norm_mean"]), float(block["norm_std"])),
                           method=block.get("method") or None)


def from_pretrained(location: str | Path, **timm_kwargs: Any) -> nn.Module:
    """Load a folder written by :func:`save_pretrained` (no network), or ``hf-hub:owner/name``.

    A local folder goes through timm's ``local-dir:`` source, so what is tested here offline is
    exactly what ``timm.create_model("local-dir:FOLDER", pretrained=True)`` does. A Hub id needs
    the network (timm downloads ``config.json`` and ``model.safetensors``; untested here). Returns
    the model in eval mode with ``pretrained_cfg`` input size and grey mean/std from ``config.json``.
    """
    import timm

    name = str(location)
    if name.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        config_file = Path(hf_hub_download(name[len("hf-hub:"):].split("@")[0], HUB_CONFIG))
    else:
        folder = Path(location)
        config_file = folder / HUB_CONFIG
        if not config_file.is_file() or not (folder / HUB_WEIGHTS).is_file():
            raise UserError(f"is not a model folder ({HUB_CONFIG} + {HUB_WEIGHTS}); write one with "
                            "priormim.save_pretrained", folder)
        name = f"local-dir:{folder.resolve()}"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"is not readable JSON ({exc})", config_file) from exc
    architecture = config.get("architecture")
    if not isinstance(architecture, str):
        raise UserError("has no 'architecture'; write the folder with priormim.save_pretrained", config_file)
    require_vit(architecture, path=config_file)
    kwargs = {k: v for k, v in timm_kwargs.items() if k not in _FIXED_KWARGS}
    model = timm.create_model(name, pretrained=True, **kwargs)
    model.priormim_metadata = _metadata_from_config(config)
    return model.eval()
