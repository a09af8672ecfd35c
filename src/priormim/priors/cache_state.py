"""The state files of a vessel-prior folder (:mod:`priormim.priors.cache`): ``manifest.json``
(parameters and, per prior, its source stamp), the per-shard states of ``--shard I/N`` runs
and their merge, and the data manifest ``manifest.csv`` for ``priormim pretrain --manifest``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from priormim.errors import UserError
from priormim.io import atomic_write_bytes, is_image_file
from priormim.io_manifest import ManifestEntry, write_manifest

__all__ = ["MANIFEST_NAME", "merge_if_complete", "merge_vessel_shards", "read_manifest", "refuse_foreign_folder",
           "shard_state_name", "shard_states", "source_stamp", "write_data_manifest", "write_state"]

logger = logging.getLogger("priormim.priors.cache")  # the cache's messages keep their logger name

MANIFEST_NAME = "manifest.json"
KIND = "vessel"
VERSION = 1  # bump when the algorithm changes so old caches are recomputed
LEGACY_PRESET = "priormim"  # manifests written before presets existed used this recipe


def read_manifest(out: str | Path, name: str = MANIFEST_NAME) -> dict[str, Any] | None:
    """The manifest of a prior folder, or None if there is none (or it is unreadable).

    Parameters recorded before presets existed get ``"preset": "priormim"`` (the recipe
    that made them), so those caches stay valid for that preset."""
    path = Path(out) / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable manifest (%s); priors will be recomputed", path, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        logger.warning("%s: manifest has an unexpected layout; priors will be recomputed", path)
        return None
    params = data.get("params")
    if isinstance(params, dict) and "preset" not in params and data.get("kind", KIND) == KIND:
        data["params"] = {"preset": LEGACY_PRESET, **params}
    return data


def shard_state_name(index: int, count: int) -> str:
    """State file of shard ``index`` of ``count``: ``manifest.shard-0003-of-0008.json``."""
    return f"manifest.shard-{index:04d}-of-{count:04d}.json"


def write_state(out: Path, params: dict[str, Any], files: dict[str, Any], *, name: str = MANIFEST_NAME,
                    extra: dict[str, Any] | None = None) -> None:
    data = {"kind": KIND, "version": VERSION, "params": params, **(extra or {}), "files": files}
    atomic_write_bytes(out / name, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def write_data_manifest(out: Path, files: dict[str, Any], csv_name: str) -> Path:
    """The data manifest (image, prior, bytes, checksums) of ``files`` entries, sorted by image."""
    rows = sorted(files.items(), key=lambda kv: kv[1].get("source", ""))
    return write_manifest(
        out / csv_name,
        [
            ManifestEntry(image=Path(e["source"]), prior=out / name, bytes=e.get("source_size"),
                          sha256=e.get("sha256"), prior_sha256=e.get("prior_sha256"))
            for name, e in rows
            if (out / name).is_file()
        ],
    )


def refuse_foreign_folder(out: Path) -> None:
    """A folder with image files but no prior manifest holds someone else's files (e.g.
    hand-made masks passed as ``data.priors``): computing priors there would overwrite them."""
    if any(out.glob("manifest*.json")):
        return
    foreign = next((p for p in sorted(out.iterdir()) if is_image_file(p)), None)
    if foreign is not None:
        raise UserError(f"holds image files ({foreign.name}, ...) but no prior manifest (manifest.json), so they were not "
                        "written by priormim and computing priors here would overwrite them; to use your own masks as "
                        "priors list them in a manifest CSV (columns image,prior) and pass --manifest, or choose an "
                        "empty folder", out)


def source_stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def shard_states(out: Path, count: int) -> dict[int, dict[str, Any] | None]:
    return {i: read_manifest(out, shard_state_name(i, count)) for i in range(count)}


def merge_if_complete(out: Path, count: int) -> bool:
    states = shard_states(out, count)
    if all(s is not None and s.get("complete") for s in states.values()):
        merge_vessel_shards(out, count=count)
        return True
    return False


def merge_vessel_shards(out: str | Path, *, count: int | None = None) -> tuple[Path, int]:
    """Merge the per-shard states of ``out`` into ``manifest.json`` and ``manifest.csv``.

    ``count`` (the N of ``--shard I/N``) is read from the state file names when not given.
    Returns ``(manifest.csv path, number of priors)``. Raises UserError when a shard is
    missing or unfinished, or the shards were made with different parameters.
    """
    out = Path(out)
    if count is None:
        counts = sorted({int(p.name.split("-of-")[1].split(".")[0]) for p in out.glob("manifest.shard-*-of-*.json")})
        if not counts:
            raise UserError("holds no shard states (manifest.shard-I-of-N.json); run `priormim prior vessel --shard I/N` first", out)
        if len(counts) > 1:
            raise UserError(f"holds shard states of different runs (N = {', '.join(map(str, counts))}); delete the stale ones", out)
        count = counts[0]
    states = shard_states(out, count)
    missing = [i for i, s in states.items() if s is None or not s.get("complete")]
    if missing:
        listed = ", ".join(f"{i}/{count}" for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} of {count} shards are missing or unfinished ({listed}); run them, then merge again", out)
    params = {json.dumps(s["params"], sort_keys=True) for s in states.values()}
    if len(params) != 1:
        raise UserError("the shards were computed with different parameters; re-run them with the same options", out)
    files: dict[str, Any] = {}
    for i in range(count):
        files.update(states[i]["files"])
    first = states[0]
    write_state(out, first["params"], dict(sorted(files.items())))
    path = write_data_manifest(out, files, "manifest.csv")
    logger.info("merged %d shards into %s (%d priors)", count, path, len(files))
    return path, len(files)
