"""Value checks of a pretraining config (ranges, finite numbers, known names and choices).

Types are checked when a config is loaded (:mod:`priormim.config`); this module checks values
in one place, each failure a one-line :class:`UserError` naming the key and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from priormim.errors import UserError

if TYPE_CHECKING:
    from priormim.config import ModelConfig, PretrainConfig

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


_REGISTERED_METHODS: set[str] = set()


def register_method_name(name: str) -> None:
    """Let :func:`validate_config` accept ``method: NAME`` (called by ``priormim.methods.register_method``)."""
    _REGISTERED_METHODS.add(str(name))


def unregister_method_name(name: str) -> None:
    _REGISTERED_METHODS.discard(str(name))


def known_methods() -> list[str]:
    """Method names of the packaged recipes (``method:`` in ``configs/*.yaml``: MAE, VasoMIM and
    its ablations, VP-MIM and the zoo) and of the methods registered in code."""
    names = set(_REGISTERED_METHODS)
    for p in PACKAGED_CONFIGS.glob("*.yaml"):
        try:
            m = (yaml.safe_load(p.read_text()) or {}).get("method")
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(m, str):
            names.add(m)
    return sorted(names)


def _patch_size(m: ModelConfig) -> int | None:
    import re

    ps = m.encoder_kwargs.get("patch_size")
    if isinstance(ps, int) and not isinstance(ps, bool):
        return ps
    found = re.search(r"patch(\d+)", m.encoder)
    return int(found.group(1)) if found else None


def validate_config(cfg: PretrainConfig, source: str = "config") -> PretrainConfig:
    """Check values (ranges, finite numbers, known names) in one place; UserError naming the
    key and the fix. Types are checked on loading (:func:`load_config`)."""
    import math

    def bad(key: str, value: Any, need: str) -> None:
        raise UserError(f"'{key}' is {value!r}; {need}", source)

    def finite(key: str, value: float | None, *, lo: float | None = None, lo_open: bool = False,
               hi: float | None = None, hi_open: bool = False) -> None:
        if value is None:
            return
        ok = math.isfinite(value)
        ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
        ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
        if not ok:
            rng = (f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, "
                   f"{hi if hi is not None else 'inf'}{')' if hi_open or hi is None else ']'}")
            bad(key, value, f"it must be a finite number in {rng}")

    def at_least(key: str, value: int | None, lo: int) -> None:
        if value is not None and value < lo:
            bad(key, value, f"it must be >= {lo}")

    methods = known_methods()
    if methods and cfg.method not in methods:
        import difflib

        close = difflib.get_close_matches(cfg.method, methods, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        bad("method", cfg.method, f"known methods: {', '.join(methods)}{hint}")
    m, o, t, d, k = cfg.model, cfg.optim, cfg.train, cfg.data, cfg.masking
    if m.in_chans != 1:
        bad("model.in_chans", m.in_chans, "X-ray images are read as one grey channel: use model.in_chans=1")
    at_least("model.img_size", m.img_size, 1)
    ps = _patch_size(m)
    if ps is not None:
        if ps < 1:
            bad("model.encoder_kwargs.patch_size", ps, "it must be >= 1")
        if m.img_size < ps or m.img_size % ps:
            bad("model.img_size", m.img_size, f"it must be a multiple of the patch size {ps} (e.g. {max(ps, m.img_size // ps * ps)})")
    for key in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
        at_least(f"model.{key}", getattr(m, key), 1)
    finite("model.drop_path_rate", m.drop_path_rate, lo=0, hi=1, hi_open=True)
    finite("masking.mask_ratio", k.mask_ratio, lo=0, lo_open=True, hi=1, hi_open=True)
    finite("consistency.weight", cfg.consistency.weight, lo=0)
    at_least("consistency.segmentor_epochs", cfg.consistency.segmentor_epochs, 1)
    at_least("consistency.segmentor_base_channels", cfg.consistency.segmentor_base_channels, 1)
    finite("gaze_weighting.alpha", cfg.gaze_weighting.alpha, lo=0, hi=1)
    finite("gaze_weighting.gamma", cfg.gaze_weighting.gamma, lo=0)
    if d.prior not in ("vessel", "gaze", "none"):
        bad("data.prior", d.prior, "use vessel, gaze or none")
    finite("data.norm_mean", d.norm_mean)
    finite("data.norm_std", d.norm_std, lo=0, lo_open=True)
    cs = d.crop_scale
    if (len(cs) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in cs)
            or not 0 < cs[0] <= cs[1] <= 1):
        bad("data.crop_scale", cs, "it must be [min, max] shares of the image with 0 < min <= max <= 1, e.g. [0.2, 1.0]")
    at_least("data.num_workers", d.num_workers, 0)
    at_least("optim.epochs", o.epochs, 1)
    at_least("optim.warmup_epochs", o.warmup_epochs, 0)
    at_least("optim.batch_size", o.batch_size, 1)
    at_least("optim.accum_iter", o.accum_iter, 1)
    finite("optim.blr", o.blr, lo=0, lo_open=True)
    finite("optim.lr", o.lr, lo=0, lo_open=True)
    finite("optim.min_lr", o.min_lr, lo=0)
    finite("optim.weight_decay", o.weight_decay, lo=0)
    finite("optim.clip_grad", o.clip_grad, lo=0, lo_open=True)
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in o.betas):
        bad("optim.betas", o.betas, "it must be two numbers in [0, 1), e.g. [0.9, 0.95]")
    at_least("train.save_every", t.save_every, 1)
    at_least("train.log_every", t.log_every, 1)
    at_least("train.max_steps_per_epoch", t.max_steps_per_epoch, 1)
    if t.amp not in ("auto", "bf16", "fp16", "off"):
        bad("train.amp", t.amp, "use auto, bf16, fp16 or off")
    return cfg


# Keys whose value is one of a few names: refused with the valid names, never a silent default.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.encoder_init": ("auto", "mae", "sincos", "timm"),
    "masking.schedule": ("official", "priormim"),
    "optim.schedule": ("mae", "timm"),
    "data.interpolation": ("bicubic", "bilinear"),
    "prior.preset": ("official", "priormim"),
    "consistency.segmentor_recipe": ("official", "priormim"),
    "consistency.segmentor_arch": (None, "unext_s", "unext", "unet"),
}


def _check_choices(cfg: PretrainConfig, source: str) -> None:
    for key, valid in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in valid:
            names = ", ".join("null" if v is None else v for v in valid)
            raise UserError(f"'{key}' must be one of {names}, got {value!r}", source)
    w = cfg.masking.segmentor_weight
    if not 0.0 <= w <= 1.0:
        raise UserError(f"'masking.segmentor_weight' must be in [0, 1], got {w!r}", source)


