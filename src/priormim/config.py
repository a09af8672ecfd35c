"""Pretraining configuration: typed dataclasses, YAML recipes and ``key=value`` overrides.

Unknown keys and wrong types are user errors with a one-line message naming the key, so a
typo in a recipe never silently falls back to a default. The resolved config is plain data
(``to_dict``) and is saved beside each run and inside checkpoints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from priormim.errors import UserError

PACKAGED_CONFIGS = Path(__file__).parent / "configs"

from priormim.config_validate import (  # noqa: E402, F401  (re-exported: the method registry and tests use them)
    CHOICES,
    _check_choices,
    known_methods,
    register_method_name,
    unregister_method_name,
    validate_config,
)


@dataclass
class ModelConfig:
    encoder: str = "vit_tiny_patch16_224"  # any timm ViT name
    img_size: int = 224
    in_chans: int = 1
    encoder_kwargs: dict = field(default_factory=dict)  # timm overrides: patch_size, depth, ...
    decoder_embed_dim: int = 128
    decoder_depth: int = 2
    decoder_num_heads: int = 4
    norm_pix_loss: bool = True
    drop_path_rate: float = 0.0
    pyramid_scales: list | None = None  # VP-MIM pyramid reconstruction, e.g. [1, 2, 4]; None = MAE head only
    pyramid_weights: list | None = None  # loss weight per scale; None = 1/scale
    method_kwargs: dict = field(default_factory=dict)  # zoo methods' own options (docs/zoo.md), e.g. {blur_sigma: 1.5}
    # auto: the method's reference (MAE family: fixed sin-cos pos. embedding + MAE init; see
    # docs/zoo.md) | mae | sincos (fixed pos. embedding, timm init) | timm (learnable, timm init)
    encoder_init: str = "auto"


@dataclass
class MaskingConfig:
    name: str = "random"  # random | anatomy | gaze | block | score
    mask_ratio: float = 0.75
    kwargs: dict = field(default_factory=dict)  # e.g. {beta_start: 0.0, beta_end: 0.5}
    # Guidance map = (1 - w) * prior + w * sigmoid(S(crop)) of the frozen consistency segmentor
    # (official VasoMIM: w = 0.5); 0 = the prior alone (no segmentor needed for masking).
    segmentor_weight: float = 0.0
    # Training progress the masking schedule sees in epoch e of E: official = (e + 1) / E (the
    # VasoMIM code's epoch ratio), priormim = e / (E - 1) (reaches beta_end in the last epoch).
    schedule: str = "official"


@dataclass
class ConsistencyConfig:
    enabled: bool = False
    weight: float = 1.0  # lambda in L = L_rec + lambda * L_cons
    segmentor: str | None = None  # path to a trained segmentor; None: train one on the priors
    # How the segmentor is trained when consistency.segmentor is not given: official = UNeXt-S,
    # 200 epochs, Adam 1e-3 + poly 0.9, 0.5 BCE + 0.5 Dice, crops 0.2-1 + h-flip; priormim =
    # 8-channel 3-level U-Net, 30 epochs, AdamW + cosine. arch / epochs None: the recipe's.
    segmentor_recipe: str = "official"
    segmentor_arch: str | None = None  # unext_s | unext | unet
    segmentor_epochs: int | None = None
    segmentor_base_channels: int = 8  # unet only


@dataclass
class PriorConfig:
    preset: str = "official"  # vessel prior: official (XA-SSL frangi_filter.py) | priormim (collimator-aware)


@dataclass
class GazeWeightingConfig:
    enabled: bool = False  # VP-MIM: weight the loss by recalibrated gaze heat
    alpha: float = 0.5  # H' = normalise(H * (alpha + (1 - alpha) * A)), A = class-token attention
    gamma: float = 1.0  # per-patch weight 1 + gamma * H', normalised to mean 1


@dataclass
class DataConfig:
    images: str | None = None  # folder of unlabelled images (set by --data)
    prior: str = "vessel"  # vessel | gaze | none: the spatial prior that guides masking
    priors: str | None = None  # prior cache folder; None: <images>/../priors/<prior>, else <out>/priors/<prior>
    gaze: str | None = None  # gaze data root (REFLACX layout) for prior=gaze
    norm_mean: float | None = None  # grey-level stats of this data set; None: measured
    norm_std: float | None = None
    crop_scale: list = field(default_factory=lambda: [0.2, 1.0])
    interpolation: str = "bicubic"  # image resampling of the random crop (official: bicubic); the prior is nearest
    hflip: bool = True
    num_workers: int = 2


@dataclass
class OptimConfig:
    epochs: int = 100
    warmup_epochs: int = 5
    batch_size: int = 64  # per process
    accum_iter: int = 1
    blr: float = 1.5e-4  # base lr; lr = blr * effective batch / 256 (MAE)
    lr: float | None = None  # absolute lr overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float | None = None
    # mae: MAE's per-step schedule (linear warm-up from 0, then half-cosine over the remaining
    # steps, lr set before each update); timm: timm's CosineLRScheduler (warm-up from lr * 1e-3,
    # cosine over all steps), priormim's earlier default.
    schedule: str = "mae"


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on GPU, off on CPU) | bf16 | fp16 | off
    save_every: int = 20  # epochs between numbered checkpoints (last.ckpt every epoch)
    log_every: int = 10  # steps between log lines
    progress: bool = True
    deterministic: bool = False
    max_steps_per_epoch: int | None = None  # for smoke runs


@dataclass
class PretrainConfig:
    method: str = "mae"
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    gaze_weighting: GazeWeightingConfig = field(default_factory=GazeWeightingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    """Return ``value`` coerced to ``tp`` where lossless (int -> float, str -> Path, list ->
    tuple), else raise UserError. Generic containers are checked element by element:
    ``tuple[int, int]`` (that many), ``tuple[int, ...]``, ``list[int]``; ``dict[...]`` as ``dict``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_check_type(v, args[0], key, source) for v in value)
            if len(value) == len(args):
                return tuple(_check_type(v, a, key, source) for v, a in zip(value, args))
        raise UserError(f"'{key}' must be a list of {_type_name(tp)}, got {value!r}", source)
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (list, tuple)):
            return [_check_type(v, arg, key, source) for v in value]
        raise UserError(f"'{key}' must be {_type_name(tp)}, got {value!r}", source)
    if origin is dict:
        tp = dict
    if tp is Path and isinstance(value, (str, Path)) and str(value) != "":
        return Path(value)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key, source)
            except UserError:
                pass
        raise UserError(f"'{key}' must be {_type_name(tp)}, got {value!r}", source)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept numeric strings for floats.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is str and value is False and key == "train.amp":
        return "off"  # YAML 1.1 reads the bare word `off` (train.amp=off) as false
    if tp is dict and isinstance(value, dict):
        return value
    if tp is list and isinstance(value, (list, tuple)):
        return list(value)
    raise UserError(f"'{key}' must be {_type_name(tp)}, got {value!r}", source)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{_type_name(args[0])}s"
        return f"{len(args)} {' / '.join(sorted({_type_name(a) for a in args}))}s, e.g. [{', '.join(_example(a) for a in args)}]"
    if origin is list:
        return f"list of {_type_name((typing.get_args(tp) or (Any,))[0])}"
    if origin is dict:
        return "dict"
    if tp is Path:
        return "path"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _example(tp: Any) -> str:
    return {int: "1", float: "0.5", str: "name"}.get(tp, "...")


def check_values(cls: type, data: dict, prefix: str, source: str) -> dict[str, Any]:
    """``data`` (plain YAML values) checked against dataclass ``cls``'s field types: the coerced
    keyword arguments (nested dataclasses built); a one-line UserError naming an unknown key
    (with the valid ones) or a value of the wrong type."""
    if not isinstance(data, dict):
        raise UserError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}", source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(
            f"unknown key '{prefix}{unknown[0]}' (valid: {', '.join(sorted(names))})", source
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _check_type(value, tp, f"{prefix}{name}", source)
    return kwargs


def _from_dict(cls: type, data: dict, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"'{prefix or 'config'}' must be a mapping, got {data!r}", source)
    return cls(**check_values(cls, data, prefix, source))


def _deep_update(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs" else v
    return out


def resolve_config_path(name_or_path: str | Path, packaged_dir: Path = PACKAGED_CONFIGS) -> Path:
    """A YAML path, or the name of a packaged recipe (``vasomim``, ``mae``, ...; fine-tuning
    presets with ``packaged_dir=FINETUNE_PRESETS``: ``seg_unet``, ``cls_linear``, ...)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    packaged = packaged_dir / f"{p.stem}.yaml"
    if p.suffix in ("", ".yaml", ".yml") and packaged.exists() and len(p.parts) <= 2:
        return packaged
    known = ", ".join(sorted(q.stem for q in packaged_dir.glob("*.yaml")))
    raise UserError(f"config file not found; pass a YAML path or one of: {known}", p)


def read_yaml_config(path: str | Path, packaged_dir: Path = PACKAGED_CONFIGS) -> tuple[dict, str]:
    """``(mapping, source)`` of a YAML config (path or packaged name); one-line UserErrors."""
    p = resolve_config_path(path, packaged_dir)
    if p.is_dir():
        raise UserError("is a folder; pass a YAML file or a packaged recipe name", p)
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"invalid YAML ({str(exc).splitlines()[0]})", p) from exc
    except UnicodeDecodeError as exc:
        raise UserError("is not a text (YAML) file; pass a YAML recipe", p) from exc
    except OSError as exc:
        raise UserError(f"cannot read the config ({exc.strerror or exc})", p) from exc
    if not isinstance(loaded, dict):
        raise UserError("a config must be a YAML mapping", p)
    return loaded, str(p)


# Fine-tuning presets (``priormim finetune seg|cls --config NAME``).
FINETUNE_PRESETS = PACKAGED_CONFIGS / "finetune"


def load_values(cls: type, path: str | Path | None = None, overrides: list[str] | dict | None = None, *,
                packaged_dir: Path = FINETUNE_PRESETS) -> tuple[dict[str, Any], str]:
    """A YAML preset (path or packaged name) + ``KEY=VALUE`` overrides, checked against the
    fields of dataclass ``cls`` as :func:`load_config` checks a pretraining recipe (unknown
    keys, wrong types: one-line UserErrors). Returns ``(keyword arguments, source)``; the
    caller builds ``cls`` (a fine-tuning config fills its own defaults in ``resolved()``)."""
    data: dict = {}
    source = "config"
    if path is not None:
        data, source = read_yaml_config(path, packaged_dir)
    if overrides:
        data = _deep_update(data, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides)))
        source = f"{source} + overrides"
    return check_values(cls, data, "", source), source


def parse_overrides(items: list[str]) -> dict:
    """``["optim.lr=1e-3", "model.encoder_kwargs={depth: 2}"]`` -> nested dict (YAML values)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override '{item}' is not KEY=VALUE (e.g. optim.epochs=10)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise UserError(f"override '{item}': cannot parse the value ({exc})") from exc
        _refuse_glued_colons(value, item)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _refuse_glued_colons(value: Any, item: str) -> None:
    """``{patch_size:4,depth:2}`` is YAML for ``{"patch_size:4": None, ...}``: a key with a
    colon and no value is that mistake, never an intended option."""
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None and isinstance(k, str) and ":" in k:
                fixed = k.replace(":", ": ", 1)
                raise UserError(f"override '{item}': '{k}' needs a space after the colon in YAML ('{fixed}'), "
                                "e.g. model.encoder_kwargs={patch_size: 4, depth: 2}")
            _refuse_glued_colons(v, item)
    elif isinstance(value, list):
        for v in value:
            _refuse_glued_colons(v, item)


# Method names registered in code (priormim.methods.register_method), besides the recipes' ones.
def load_config(
    path: str | Path | None = None, overrides: list[str] | dict | None = None
) -> PretrainConfig:
    """Load a recipe (path or packaged name), apply overrides, validate keys and types."""
    data: dict = {}
    source = "config"
    if path is not None:
        data, source = read_yaml_config(path)
    if overrides:
        upd = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        data = _deep_update(data, upd)
        source = f"{source} + overrides"
    cfg = validate_config(_from_dict(PretrainConfig, data, "", source), source)
    _check_choices(cfg, source)
    return cfg


def save_config(cfg: PretrainConfig, path: str | Path) -> None:
    from priormim.io import atomic_write_bytes

    atomic_write_bytes(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
