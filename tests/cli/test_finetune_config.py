"""``priormim finetune seg|cls --config PRESET KEY=VALUE``: the pretraining config machinery
(typed keys, one-line errors) over the fine-tuning configs; explicit flags win over presets."""

from __future__ import annotations

import pytest

from priormim.cli import build_parser
from priormim.cli.finetune import SEG_FLAG_KEYS
from priormim.cli.finetune_cls import CLS_FLAG_KEYS
from priormim.cli.finetune_config import merge_config
from priormim.config import FINETUNE_PRESETS, load_values
from priormim.errors import UserError
from priormim.training.finetune_cls import ClsFinetuneConfig
from priormim.training.finetune_seg import SegFinetuneConfig, recipe_config


def _cls(tmp_path, *extra):
    args = build_parser().parse_args(["finetune", "cls", "--train", str(tmp_path), "--test", str(tmp_path), "--out",
                                      str(tmp_path / "o"), "--encoder", "none", *extra])
    flags = dict(train=args.train, test=args.test, out=args.out, encoder=args.encoder, mode=args.mode, epochs=args.epochs,
                 lr=args.lr, global_pool=args.pool, seeds=list(args.seeds))
    return merge_config(ClsFinetuneConfig, args, flags, dest_to_key=CLS_FLAG_KEYS)


def test_cls_preset_overrides_and_explicit_flags(tmp_path):
    kw = _cls(tmp_path, "--config", "cls_full", "--epochs", "3", "--pool", "token", "lr=0.01", "seeds=[4, 5]")
    assert (kw["mode"], kw["epochs"], kw["lr"], kw["batch_size"], kw["global_pool"], kw["seeds"]) == ("full", 3, 0.01, 64, "token", [4, 5])
    # Without --config / overrides the flags are the whole story (the historical path).
    assert _cls(tmp_path, "--mode", "full")["mode"] == "full" and _cls(tmp_path)["epochs"] is None
    with pytest.raises(UserError, match=r"unknown key 'lrr' \(valid: .*\blr\b"):
        _cls(tmp_path, "lrr=1")
    with pytest.raises(UserError, match=r"'epochs' must be int or null, got 'abc'"):
        _cls(tmp_path, "epochs=abc")
    with pytest.raises(UserError, match=r"'lr' is given both as a flag and as lr=\.\.\.; keep one"):
        _cls(tmp_path, "--lr", "0.1", "lr=0.2")
    with pytest.raises(UserError, match="config file not found; pass a YAML path or one of: cls_full, cls_linear, seg_strong"):
        _cls(tmp_path, "--config", "nope")


def test_seg_presets_tuples_and_refused_non_square_size(tmp_path):
    assert {p.stem for p in FINETUNE_PRESETS.glob("*.yaml")} == {"seg_unet", "seg_vit", "seg_strong", "cls_linear", "cls_full"}
    values, _ = load_values(SegFinetuneConfig, "seg_strong", ["split_fractions=[0.5, 0.25, 0.25]", "seeds=[1, 2]", f"out={tmp_path}"])
    assert values["split_fractions"] == (0.5, 0.25, 0.25) and values["seeds"] == (1, 2)
    cfg = recipe_config(values.pop("recipe"), **values)
    assert (cfg.model, cfg.native, cfg.schedule, cfg.tta, cfg.recipe) == ("unet", True, "poly", True, "strong")
    with pytest.raises(UserError, match=r"'split_fractions' must be a list of 3 floats, e\.g\. \[0\.5, 0\.5, 0\.5\], got \[1, 2\]"):
        load_values(SegFinetuneConfig, None, ["split_fractions=[1, 2]"])
    # The models are square: a [H, W] size is refused, not silently squashed.
    with pytest.raises(UserError, match=r"'img_size' must be int or null, got \[256, 192\]"):
        load_values(SegFinetuneConfig, "seg_unet", ["img_size=[256,192]"])
    args = build_parser().parse_args(["finetune", "seg", "--out", str(tmp_path), "--data", str(tmp_path), "--config", "seg_vit",
                                      "--model", "unet", "epochs=7"])
    kw = merge_config(SegFinetuneConfig, args, dict(model=args.model, data=args.data, out=args.out, epochs=args.epochs,
                                                    split_seed=args.split_seed), dest_to_key=SEG_FLAG_KEYS)
    assert (kw["model"], kw["epochs"], "split_seed" in kw) == ("unet", 7, False)
