"""Data manifests, sharded vessel priors and `pretrain --manifest`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from priormim.cli import main
from priormim.data.manifest import (
    ManifestEntry,
    make_entry,
    parse_shard,
    read_manifest,
    shard_paths,
    verify_manifest,
    write_manifest,
)
from priormim.errors import UserError
from priormim.priors.cache import compute_vessel_priors, merge_vessel_shards, read_manifest as read_state

FAST = dict(sigmas=(1, 2), border=2, progress=False)


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = (0.8 - 0.4 * (np.abs(np.arange(32)[None, :] - 8 - i) < 2) + 0.05 * rng.standard_normal((32, 32)))
        path = folder / f"im{i:02d}.png"
        Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)
        out.append(path)
    return out


def test_manifest_roundtrip_relative_paths_and_errors(tmp_path):
    imgs = _images(tmp_path / "data" / "images", 3)
    entries = [make_entry(imgs[0], label="1"), ManifestEntry(image=imgs[1]), ManifestEntry(image=Path("/abs/x.png"))]
    path = write_manifest(tmp_path / "data" / "m.csv", entries)
    text = path.read_text().splitlines()
    assert text[0] == "image,prior,label,bytes,sha256,prior_sha256"
    assert text[1].startswith("images/im00.png,,1,")  # relative to the manifest's folder
    back = read_manifest(path)
    assert [e.image for e in back] == [imgs[0], imgs[1], Path("/abs/x.png")]
    assert back[0].sha256 == entries[0].sha256 and back[0].bytes == imgs[0].stat().st_size and back[0].label == "1"
    # Only the `image` column is required.
    (tmp_path / "min.csv").write_text("image\ndata/images/im02.png\n")
    assert read_manifest(tmp_path / "min.csv")[0].image == imgs[2]
    for text, needle in (("path\nx.png\n", "no 'image' column"), ("image\n", "no rows"),
                         ("image,bytes\nx.png,lots\n", "line 2: 'bytes'")):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(UserError, match=needle):
            read_manifest(tmp_path / "bad.csv")


def test_checksums_detect_a_changed_file(tmp_path):
    imgs = _images(tmp_path / "images", 3)
    entries = [make_entry(p) for p in imgs]
    assert verify_manifest(entries, checksums=True) == []
    # Same size, other bytes: only the checksum notices.
    raw = bytearray(imgs[1].read_bytes())
    raw[-20] ^= 0xFF
    imgs[1].write_bytes(bytes(raw))
    assert verify_manifest(entries) == []
    bad = verify_manifest(entries, checksums=True)
    assert [(e.image, "checksum" in r) for e, r in bad] == [(imgs[1], True)]
    imgs[2].unlink()
    assert [e.image for e, _ in verify_manifest(entries)] == [imgs[2]]
    m = write_manifest(tmp_path / "m.csv", entries)
    assert main(["prior", "verify", "--manifest", str(m), "--checksums"]) == 1


def test_shards_are_disjoint_balanced_and_cover_everything():
    paths = [Path(f"/d/{c}{i}.png") for c in "bca" for i in range(7)]
    shards = [shard_paths(paths, i, 4) for i in range(4)]
    flat = [p for s in shards for p in s]
    assert sorted(flat) == sorted(paths) and len(set(flat)) == len(paths)
    assert {len(s) for s in shards} <= {5, 6}
    assert shards == [shard_paths(list(reversed(paths)), i, 4) for i in range(4)]  # order of listing is irrelevant
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


def test_sharded_priors_resume_merge_and_match_one_job(tmp_path):
    imgs = _images(tmp_path / "images", 7)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    one = tmp_path / "one"
    compute_vessel_priors(tmp_path / "images", one, **FAST)
    out = tmp_path / "sharded"
    every = sorted((tmp_path / "images").iterdir())
    shard0 = shard_paths(every, 0, 3)  # broken.png, im02, im05
    s0 = compute_vessel_priors(tmp_path / "images", out, shard=(0, 3), **FAST)
    assert (s0.n_total, s0.n_done, s0.n_failed, s0.merged) == (3, 2, 1, False)
    assert (out / "manifest.shard-0000-of-0003.json").is_file() and (out / "manifest.shard-0000-of-0003.csv").is_file()
    with pytest.raises(UserError, match="2 of 3 shards are missing"):
        merge_vessel_shards(out)
    # Resume shard 0: the finished files are skipped; touching one (same bytes, new mtime) is
    # not a change (its checksum says so); the unreadable one is tried again.
    os.utime(shard0[1], ns=(10**18, 10**18))
    again = compute_vessel_priors(tmp_path / "images", out, shard=(0, 3), **FAST)
    assert (again.n_done, again.n_skipped_existing, again.n_failed) == (0, 2, 1)
    s1 = compute_vessel_priors(tmp_path / "images", out, shard=(1, 3), **FAST)
    s2 = compute_vessel_priors(tmp_path / "images", out, shard=(2, 3), **FAST)
    assert s1.n_total + s2.n_total + s0.n_total == 8 and s1.n_done + s2.n_done + s0.n_done == 7
    assert s2.merged  # the last shard merged by itself
    merged = read_state(out)["files"]
    assert sorted(merged) == sorted(p.name for p in imgs)
    for p in imgs:  # identical priors to one unsharded job
        assert (out / p.name).read_bytes() == (one / p.name).read_bytes()
    rows = read_manifest(out / "manifest.csv")
    assert [r.image.name for r in rows] == [p.name for p in imgs]
    assert all(r.prior == out / r.image.name and r.sha256 and r.prior_sha256 for r in rows)
    assert verify_manifest(rows, checksums=True) == []
    # A changed image is recomputed by its shard on the next run, nothing else.
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(imgs[4])
    owner = next(i for i in range(3) if imgs[4] in shard_paths(every, i, 3))
    redo = compute_vessel_priors(tmp_path / "images", out, shard=(owner, 3), **FAST)
    assert redo.n_done == 1 and redo.merged
    assert main(["prior", "merge", "--out", str(out)]) == 0


TINY = [
    "model.img_size=32", "model.encoder_kwargs={patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2}",
    "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2", "optim.batch_size=4",
    "optim.warmup_epochs=0", "data.num_workers=0", "train.progress=false", "train.device=cpu",
]


def test_cli_shard_then_pretrain_from_the_manifest(tmp_path, capsys):
    _images(tmp_path / "images", 8)
    out = tmp_path / "pri"
    for i in range(2):
        assert main(["prior", "vessel", "--images", str(tmp_path / "images"), "--out", str(out), "--shard", f"{i}/2",
                     "--sigmas", "1", "2", "--border", "2", "--no-progress"]) == 0
    assert "manifests merged" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["pretrain", "--config", "mae", "--manifest", str(out / "manifest.csv"), "--out", str(run),
                 *TINY, "optim.epochs=1", "masking.name=anatomy"]) == 0
    cfg = (run / "config.yaml").read_text()
    assert "manifest.csv" in cfg
    assert not (run / "priors").exists()  # the manifest's priors were used, none recomputed
    assert json.loads((run / "history.json").read_text())[0]["masked_vessel_share"] > 0
