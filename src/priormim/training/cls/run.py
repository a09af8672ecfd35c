"""One seed (train, test, save) and every seed of an experiment (finished seeds reused, results written)."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import Tensor

from priormim.errors import UserError
from priormim.io import atomic_write_bytes
from priormim.metrics import mean_std
from priormim.models.classifier import ClassifierInfo, attach_head, extract_features, save_classifier, to_model_input
from priormim.models.seg import create_vit_encoder, resolve_encoder_config
from priormim.training.cls.config import _RESUME_IGNORED, ClsFinetuneConfig, ClsRunResult
from priormim.training.cls.data import _Data, load_data, norm_from_images
from priormim.training.cls.results import write_results
from priormim.training.cls.train import SeedRun, auc_scores, fit, predict_logits, random_crop_rotate
from priormim.training.distributed import resolve_device
from priormim.training.loop import autocast_dtype, remove_checkpoints, seed_everything, sigterm_as_interrupt

logger = logging.getLogger(__name__)


def _jsonable(x: Any) -> Any:
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _fingerprint(cfg: ClsFinetuneConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_IGNORED}


def run_seed(cfg: ClsFinetuneConfig, data: _Data, seed: int, *, feature_cache: dict) -> dict[str, Any]:
    """Train and test one seed; returns the metrics dict (also written to ``seed<k>/metrics.json``)."""
    t0 = time.time()
    seed_everything(seed)
    device = resolve_device(cfg.device)
    seed_dir = cfg.out / f"seed{seed}"
    amp = cfg.amp
    model, file_norm = create_vit_encoder(
        cfg.backbone,
        encoder_path=cfg.encoder,
        img_size=cfg.img_size,
        drop_path_rate=cfg.drop_path if cfg.mode == "full" else 0.0,
        model_kwargs=cfg.model_kwargs,
    )
    norm = file_norm or norm_from_images(data.train.images)
    attach_head(model, num_outputs=len(data.class_names), mode=cfg.mode, global_pool=cfg.global_pool)
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    common = dict(
        task=data.task, class_names=data.class_names, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        batch_size=cfg.batch_size, generator=generator, device=device, log_prefix=f"[seed {seed}] ",
        run=SeedRun(run_dir=seed_dir, fingerprint=_fingerprint(cfg), log=True, progress=cfg.progress,
                    what=f"seed {seed} resumes from its checkpoint"),
    )
    if cfg.mode == "linear":
        # Pretrained features do not depend on the seed: compute them once for all seeds.
        if cfg.encoder is not None and "features" in feature_cache:
            feats = feature_cache["features"]
        else:
            t1 = time.time()
            feats = {
                name: extract_features(model, getattr(data, name).images, norm=norm, batch_size=max(cfg.batch_size, 64), device=device, amp=autocast_dtype(device, amp))
                for name in ("train", "val", "test")
            }
            logger.info("[seed %d] features extracted in %.1fs", seed, time.time() - t1)
            if cfg.encoder is not None:
                feature_cache["features"] = feats
        head = model.head
        optimizer = create_optimizer_v2(head, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
        result = fit(head, train_x=feats["train"], train_y=data.train.labels, val_x=feats["val"], val_y=data.val.labels, optimizer=optimizer, **common)
        test_logits = predict_logits(head, feats["test"], prepare=lambda x: x, batch_size=cfg.batch_size, device=device)
    else:
        optimizer = create_optimizer_v2(
            model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay if cfg.layer_decay < 1 else None
        )
        aug = dict(scale=(cfg.min_crop_scale, 1.0), max_degrees=cfg.max_rotation, hflip=cfg.hflip)

        def prepare_train(x: Tensor) -> Tensor:
            return to_model_input(random_crop_rotate(x.float() / 255.0, generator=generator, **aug), norm)

        result = fit(
            model, train_x=data.train.images, train_y=data.train.labels, val_x=data.val.images, val_y=data.val.labels,
            optimizer=optimizer, prepare_train=prepare_train, prepare_eval=lambda x: to_model_input(x, norm), amp=amp, **common,
        )
        test_logits = predict_logits(model, data.test.images, prepare=lambda x: to_model_input(x, norm), batch_size=cfg.batch_size, device=device, amp=amp)
    test_auc, per_label = auc_scores(test_logits, data.test.labels, task=data.task, class_names=data.class_names)
    seed_dir.mkdir(parents=True, exist_ok=True)
    model_name, model_kwargs, _ = resolve_encoder_config(cfg.backbone, encoder_path=cfg.encoder, model_kwargs=cfg.model_kwargs)
    if cfg.save_model:
        info = ClassifierInfo(
            model_name=model_name, model_kwargs=model_kwargs, img_size=cfg.img_size, mode=cfg.mode, global_pool=cfg.global_pool,
            task=data.task, class_names=data.class_names, norm=norm, extra={"encoder": str(cfg.encoder) if cfg.encoder else None, "seed": seed},
        )
        save_classifier(model.cpu(), seed_dir / "model.safetensors", info=info)
    metrics = {
        "method": cfg.label,
        "seed": seed,
        "mode": cfg.mode,
        "task": data.task,
        "test_auc": test_auc,
        "per_label_auc": per_label,
        "val_auc": result.best_val_auc,
        "best_epoch": result.best_epoch,
        "class_names": data.class_names,
        "positive_class": data.class_names[1] if data.task == "binary" else None,
        "n_train": len(data.train.paths),
        "n_val": len(data.val.paths),
        "n_test": len(data.test.paths),
        "skipped_files": data.train.skipped + data.val.skipped + data.test.skipped,
        "norm": {**norm.to_dict(), "source": "encoder" if file_norm is not None else "train"},
        "model_name": model_name,
        "splits": data.notes,
        "time_s": time.time() - t0,
        "history": result.history,
        "config": _fingerprint(cfg),
    }
    # The layout priormim.training.results aggregates (shared with the other finetune commands);
    # an undefined AUC is left out, so it shows as n/a there.
    values = {"auc": test_auc, **({f"auc_{k}": v for k, v in per_label.items()} if len(per_label) > 1 else {})}
    metrics["test"] = {"summary": {k: {"mean": v, "std": 0.0, "n": len(data.test.paths)} for k, v in values.items() if math.isfinite(v)}}
    atomic_write_bytes(seed_dir / "metrics.json", json.dumps(_jsonable(metrics), indent=2).encode())
    remove_checkpoints(seed_dir)  # metrics.json marks the seed done
    logger.info("[seed %d] test AUC %.4f (best epoch %d, val AUC %.4f)", seed, test_auc, result.best_epoch, result.best_val_auc)
    return metrics


def _load_finished(cfg: ClsFinetuneConfig, seed: int) -> dict[str, Any] | None:
    path = cfg.out / f"seed{seed}" / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"is not valid JSON ({exc}); delete it to run seed {seed} again", path) from exc
    old, new = metrics.get("config", {}), _fingerprint(cfg)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise UserError(
            f"was written with different settings ({', '.join(diff)}); use another --out or delete {cfg.out}/seed*/ to start over",
            path,
        )
    return metrics



def finetune_classification(cfg: ClsFinetuneConfig, *, overwrite: bool = False) -> ClsRunResult:
    """Run every seed of ``cfg`` (finished seeds are read back, not re-run; an interrupted seed
    resumes from its ``seed<k>/last.ckpt`` if its settings are unchanged) and write the results.

    With ``overwrite`` the seeds and results already in ``cfg.out`` are removed first (a seed
    finished with other settings is otherwise a UserError). Returns the per-seed test AUCs and
    their mean ± std. Raises UserError for bad input.
    """
    from priormim.outputs import check_writable_dir, claim_output, refuse_input_overlap

    cfg = cfg.resolved()
    refuse_input_overlap(cfg.out, [("--train", cfg.train), ("--test", cfg.test), ("--val", cfg.val)], around=False)
    if overwrite:
        claim_output(cfg.out, markers=("seed*/metrics.json", "results.md"), owned=("seed*", "results.csv"), overwrite=True)
    check_writable_dir(cfg.out)
    finished = {s: _load_finished(cfg, s) for s in cfg.seeds}
    todo = [s for s in cfg.seeds if finished[s] is None]
    if len(todo) < len(cfg.seeds):
        logger.info("seeds %s already finished; skipping them", [s for s in cfg.seeds if s not in todo])
    if todo:
        data = load_data(cfg)
        logger.info(
            "%s %s: %d train / %d val / %d test images, %d classes (%s)",
            cfg.mode, data.task, len(data.train.paths), len(data.val.paths), len(data.test.paths), len(data.class_names), ", ".join(data.class_names),
        )
        cache: dict = {}
        with sigterm_as_interrupt():  # scancel / pre-emption: stop like Ctrl-C, keep seed<k>/last.ckpt
            for seed in todo:
                finished[seed] = run_seed(cfg, data, seed, feature_cache=cache)
    metrics = [finished[s] for s in cfg.seeds]
    write_results(cfg.out, [cfg.out / f"seed{s}" for s in cfg.seeds], title=f"Classification: {cfg.label}")
    aucs = [_nan(m["test_auc"]) for m in metrics]
    mean, std = mean_std(aucs)
    per_label = {}
    for name in metrics[0]["per_label_auc"]:
        values = [_nan(m["per_label_auc"].get(name)) for m in metrics]
        per_label[name] = mean_std([v for v in values if math.isfinite(v)])
    return ClsRunResult(out_dir=cfg.out, seeds=list(cfg.seeds), test_auc=aucs, mean_auc=mean, std_auc=std, per_label=per_label, metrics=metrics)
