"""Pretraining data: list the images (folder or manifest) and compute the missing priors.

Rank 0 plans (:func:`_plan_priors`: plain data, broadcast to the other ranks); every rank then
gets the usable image paths and a picklable prior loader (loader workers may be spawned).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from priormim.config import PretrainConfig
from priormim.errors import UserError
from priormim.io import list_images
from priormim.training import distributed as D

log = logging.getLogger("priormim.training.pretrain")

__all__ = ["default_prior_dir", "prepare_priors"]


def default_prior_dir(images: Path, out: Path, kind: str) -> Path:
    """``<images>/../priors/<kind>`` when that is writable, else inside the run folder."""
    candidate = images.resolve().parent / "priors" / kind
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        probe = candidate / ".write_test"
        probe.touch()
        probe.unlink()
        return candidate
    except OSError:
        return out / "priors" / kind


def prepare_priors(cfg: PretrainConfig, images: Path, out: Path, dist: D.DistInfo) -> tuple[list[Path], Any]:
    """Compute missing priors (rank 0) and return (usable image paths, prior loader or None).

    ``images`` is a folder or a data manifest (:mod:`priormim.data.manifest`). Rank 0 lists
    the data, computes what is missing and tells the others (who never touch the disk here);
    if it fails, every rank stops with its message. The prior loader is picklable (loader
    workers may be spawned).
    """
    plan = D.run_on_main(lambda: _plan_priors(cfg, images, out), dist)
    cfg.data.priors, cfg.data.gaze = plan["priors"], plan["gaze"]
    paths = [Path(p) for p in plan["paths"]]
    kind = plan["kind"]
    if kind == "none":
        return paths, None
    if plan["prior_map"] is not None:  # a manifest names each prior file
        prior_map = {str(k): Path(v) for k, v in plan["prior_map"].items()}
        if kind == "vessel":
            return paths, functools.partial(_mapped_vessel_prior, prior_map, Path(plan["priors"]))
        return paths, functools.partial(_mapped_gaze_prior, prior_map)
    if kind == "vessel":
        from priormim.priors.cache import load_prior

        return paths, functools.partial(load_prior, Path(plan["priors"]))
    from priormim.priors.gaze_cache import load_gaze_prior

    return paths, functools.partial(load_gaze_prior, Path(plan["priors"]), missing="none")


def _mapped_vessel_prior(prior_map: dict[str, Path], fallback_dir: Path, image: Path):
    from priormim.io import read_mask
    from priormim.priors.cache import load_prior

    p = prior_map.get(str(image))
    return read_mask(p) if p is not None else load_prior(fallback_dir, image)


def _mapped_gaze_prior(prior_map: dict[str, Path], image: Path):
    from priormim.priors.gaze_cache import load_gaze_prior

    p = prior_map.get(str(image))
    return None if p is None else load_gaze_prior(p.parent, p, missing="none")


def _plan_priors(cfg: PretrainConfig, images: Path, out: Path) -> dict[str, Any]:
    """Rank 0's half of :func:`prepare_priors`: plain data only (it is broadcast)."""
    from priormim.data.manifest import is_manifest_path, read_manifest, verify_manifest

    kind = cfg.data.prior
    if kind not in ("vessel", "gaze", "none"):
        raise UserError(f"data.prior must be vessel, gaze or none, got '{kind}'")
    manifest = is_manifest_path(images)
    prior_map: dict[str, str] | None = None
    if manifest:
        entries = read_manifest(images)
        bad = verify_manifest(entries)
        for e, reason in bad[:10]:
            log.warning("skipped %s: %s", e.image, reason)
        if bad:
            log.warning("%d of %d manifest rows skipped (missing or changed files; `priormim prior verify --manifest %s`)",
                        len(bad), len(entries), images)
        bad_ids = {id(e) for e, _ in bad}
        entries = [e for e in entries if id(e) not in bad_ids]
        if not entries:
            raise UserError("no usable rows: every image listed is missing or changed", images)
        paths = [e.image for e in entries]
        prior_map = {str(e.image): str(e.prior) for e in entries if e.prior is not None}
    else:
        paths = list_images(images)

    def result(usable: list[Path], prior_dir: Path | None) -> dict[str, Any]:
        return {"paths": [str(p) for p in usable], "kind": kind, "priors": None if prior_dir is None else str(prior_dir),
                "gaze": cfg.data.gaze, "prior_map": prior_map if kind != "none" else None}

    if kind == "none":
        return result(paths, None)
    if cfg.data.priors:
        prior_dir = Path(cfg.data.priors)
    elif manifest:
        prior_dir = out / "priors" / kind
    else:
        prior_dir = default_prior_dir(images, out, kind)
    if kind == "vessel":
        from priormim.priors.cache import ensure_vessel_priors, prior_path

        todo = paths if prior_map is None else [p for p in paths if str(p) not in prior_map]
        if todo:
            summary = ensure_vessel_priors(images if prior_map is None else todo, prior_dir, progress=cfg.train.progress,
                                           preset=cfg.prior.preset)
            if summary.n_failed:
                log.warning("%d image(s) could not be read and are skipped", summary.n_failed)
        usable = [p for p in paths if (prior_map is not None and str(p) in prior_map) or prior_path(prior_dir, p).exists()]
        return result(usable, prior_dir)
    # gaze
    if prior_map is not None:
        n_without = len(paths) - len(prior_map)
        if n_without:
            log.warning("%d of %d manifest rows have no gaze prior; they are masked at random", n_without, len(paths))
        return result(paths, prior_dir)
    from priormim.priors.gaze_cache import compute_gaze_priors

    if not cfg.data.gaze and (images.resolve().parent / "gaze").is_dir():
        cfg.data.gaze = str(images.resolve().parent / "gaze")  # the layout `priormim synth cxr` writes
    if not cfg.data.gaze:
        raise UserError("data.prior=gaze needs data.gaze=<REFLACX-format gaze root>")
    compute_gaze_priors(root=cfg.data.gaze, images=images, out=prior_dir, format="reflacx", progress=cfg.train.progress)
    return result(paths, prior_dir)
