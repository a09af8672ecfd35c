import argparse
import json
import math

import numpy as np
import pytest
import timm
import torch

from priormim.errors import UserError
from priormim.io import write_png
from priormim.models.classifier import attach_head, load_classifier, to_model_input
from priormim.models.export import export_encoder
from priormim.models.seg import NormStats
from priormim.training.finetune_cls import (
    ClsFinetuneConfig,
    auc_scores,
    classification_loss,
    finetune_classification,
    fit,
    patient_groups,
    random_crop_rotate,
    split_indices,
)

TINY = dict(patch_size=4, depth=2, embed_dim=32, num_heads=2)
FAST = dict(img_size=32, model_kwargs=TINY, num_workers=0, batch_size=16, epochs=15, warmup_epochs=0)


def blob_image(rng: np.random.Generator, *, blob: bool, size: int = 32, where: str = "any") -> np.ndarray:
    """Grey noise, plus a bright Gaussian blob when ``blob`` (top / bottom half with ``where``)."""
    img = rng.normal(0.4, 0.08, (size, size))
    if blob:
        lo, hi = {"any": (8, size - 8), "top": (5, size // 2 - 3), "bottom": (size // 2 + 3, size - 5)}[where]
        cy, cx = rng.integers(lo, hi), rng.integers(8, size - 8)
        yy, xx = np.mgrid[:size, :size]
        img = img + 0.4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    return np.clip(img, 0, 1)


def write_blob_folders(root, *, n: int, seed: int, classes=("absent", "blob")):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            write_png(root / name / f"{i:03d}.png", blob_image(rng, blob=c > 0))
    return root


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    base = tmp_path_factory.mktemp("blobs")
    return write_blob_folders(base / "train", n=30, seed=0), write_blob_folders(base / "test", n=15, seed=1)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    torch.manual_seed(0)
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0, img_size=32, **TINY)
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    export_encoder(enc, path, model_name="vit_tiny_patch16_224", model_kwargs=TINY, norm_mean=0.4, norm_std=0.1, method="mae")
    return path, {k: v.clone() for k, v in enc.state_dict().items()}


def test_linear_probe_keeps_encoder_trains_head_and_separates_blobs(blobs, tiny_encoder, tmp_path):
    train, test = blobs
    enc_path, enc_state = tiny_encoder
    cfg = ClsFinetuneConfig(train=train, test=test, out=tmp_path / "run", encoder=enc_path, mode="linear", seeds=[0], **FAST)
    result = finetune_classification(cfg)
    # A bright blob is trivially separable; even random ViT features give ~1.0 here.
    assert result.test_auc[0] > 0.85, result.test_auc
    m = result.metrics[0]
    assert m["task"] == "binary" and m["positive_class"] == "blob" and m["norm"]["source"] == "encoder"
    assert m["n_val"] == 6 and m["n_train"] == 54 and m["n_test"] == 30  # 10 % stratified val
    model, info = load_classifier(tmp_path / "run" / "seed0" / "model.safetensors")
    state = model.state_dict()
    for k, v in enc_state.items():
        torch.testing.assert_close(state[k], v, msg=f"encoder weight {k} changed")
    assert state["head.0.running_mean"].abs().sum() > 0  # BatchNorm saw the features
    assert state["head.1.weight"].std() > 0.02  # moved away from its N(0, 0.01) init
    assert info.norm == NormStats(0.4, 0.1) and info.class_names == ["absent", "blob"]


def test_full_finetuning_lowers_the_loss():
    rng = np.random.default_rng(0)
    labels = torch.tensor([0, 1] * 8)
    images = torch.from_numpy(np.stack([blob_image(rng, blob=bool(y)) for y in labels])).float()[:, None]
    images = (images * 255).round().to(torch.uint8)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0, img_size=32, drop_path_rate=0.1, **TINY)
    attach_head(model, num_outputs=2, mode="full", global_pool="avg")
    norm = NormStats(0.4, 0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def loss_now() -> float:
        model.eval()
        with torch.no_grad():
            return classification_loss(model(to_model_input(images, norm)), labels, task="binary").item()

    initial = loss_now()
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, opt="adamw", lr=3e-3, weight_decay=0.05, layer_decay=0.75)
    result = fit(  # 8 epochs x 4 steps, no augmentation so that the loss measured is the one trained
        model, train_x=images, train_y=labels, val_x=images, val_y=labels, task="binary", class_names=["a", "b"],
        optimizer=opt, epochs=8, warmup_epochs=0, batch_size=4, generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"), prepare_train=lambda x: to_model_input(x, norm), prepare_eval=lambda x: to_model_input(x, norm),
    )
    assert loss_now() < initial - 0.1, (initial, loss_now())
    assert len(result.history) == 8 and 1 <= result.best_epoch <= 8
    assert not torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])


def test_full_mode_end_to_end_writes_outputs_and_resumes(blobs, tmp_path):
    train, test = blobs
    out = tmp_path / "run"
    cfg = ClsFinetuneConfig(train=train, test=test, out=out, mode="full", seeds=[0], save_model=False, **{**FAST, "epochs": 2})
    r1 = finetune_classification(cfg)
    metrics_file = out / "seed0" / "metrics.json"
    first = metrics_file.stat().st_mtime_ns
    m = json.loads(metrics_file.read_text())
    assert m["config"]["mode"] == "full" and m["config"]["lr"] == pytest.approx(1e-3 * 16 / 256)
    assert m["best_epoch"] in (1, 2) and len(m["history"]) == 2 and m["norm"]["source"] == "train"
    assert not (out / "seed0" / "model.safetensors").exists()

    r2 = finetune_classification(ClsFinetuneConfig(**{**cfg.__dict__, "seeds": [0, 1]}))
    assert metrics_file.stat().st_mtime_ns == first  # seed 0 was read back, not re-run
    assert r2.test_auc[0] == r1.test_auc[0] and (out / "seed1" / "metrics.json").is_file()
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,n_runs,std_over") and ",2,seeds," in csv_lines[1]
    md = (out / "results.md").read_text()
    assert "± " in md and "probability of 'blob'" in md

    with pytest.raises(UserError, match="different settings") as exc:
        finetune_classification(ClsFinetuneConfig(**{**cfg.__dict__, "epochs": 3}))
    assert exc.value.path == metrics_file


def test_multilabel_three_labels(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ml"
    (root / "images").mkdir(parents=True)
    rows = ["image,top,bottom,bright,lesion_type"]
    for i in range(60):
        top, bottom, bright = (int(b) for b in rng.integers(0, 2, 3))
        img = blob_image(rng, blob=bool(top), where="top")
        if bottom:
            img = np.maximum(img, blob_image(rng, blob=True, where="bottom"))
        write_png(root / "images" / f"{i:03d}.png", np.clip(img + 0.25 * bright, 0, 1))
        rows.append(f"{i:03d}.png,{top},{bottom},{bright},none")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    # --test == --train: a fixed 20 % test split is carved before the validation split
    r = finetune_classification(ClsFinetuneConfig(train=root, test=root, out=tmp_path / "run", mode="linear", seeds=[0], **FAST))
    m = r.metrics[0]
    assert m["task"] == "multilabel" and list(m["per_label_auc"]) == ["top", "bottom", "bright"]
    assert m["n_test"] == 12 and m["n_train"] + m["n_val"] == 48
    assert math.isfinite(m["test_auc"]) and m["test_auc"] > 0.6
    assert set(r.per_label) == {"top", "bottom", "bright"}
    header = (tmp_path / "run" / "results.csv").read_text().splitlines()[0]
    assert "auc_top_mean" in header and "auc_bright_std" in header


def test_bad_inputs_raise_user_error_naming_the_file(blobs, tmp_path):
    train, test = blobs
    one_class = tmp_path / "one"
    write_blob_folders(one_class, n=3, seed=2, classes=("only",))
    with pytest.raises(UserError) as exc:
        finetune_classification(ClsFinetuneConfig(train=one_class, test=test, out=tmp_path / "o1", **FAST))
    assert exc.value.path == one_class

    csv_root = tmp_path / "csv"
    (csv_root / "images").mkdir(parents=True)
    write_png(csv_root / "images" / "a.png", np.zeros((8, 8)))
    write_png(csv_root / "images" / "b.png", np.ones((8, 8)))
    (csv_root / "labels.csv").write_text("image,label\na.png,0\nb.png,\n")
    with pytest.raises(UserError, match="empty 'label'") as exc:
        finetune_classification(ClsFinetuneConfig(train=csv_root, test=test, out=tmp_path / "o2", **FAST))
    assert exc.value.path == csv_root / "labels.csv"

    other = write_blob_folders(tmp_path / "other", n=2, seed=3, classes=("absent", "nodule"))
    with pytest.raises(UserError, match="nodule") as exc:
        finetune_classification(ClsFinetuneConfig(train=train, test=other, out=tmp_path / "o3", **FAST))
    assert exc.value.path == other


def test_unreadable_image_is_a_counted_skip(tmp_path):
    train = write_blob_folders(tmp_path / "train", n=10, seed=4)
    (train / "blob" / "broken.png").write_bytes(b"not a png")
    r = finetune_classification(ClsFinetuneConfig(train=train, test=train, out=tmp_path / "run", seeds=[0], **{**FAST, "epochs": 2}))
    m = r.metrics[0]
    assert len(m["skipped_files"]) == 1 and "broken.png" in m["skipped_files"][0]
    assert m["n_train"] + m["n_val"] + m["n_test"] == 20
    assert "1 unreadable files skipped" in (tmp_path / "run" / "results.md").read_text()


def test_split_indices_stratified_fixed_and_grouped():
    labels = np.array([0] * 20 + [1] * 5 + [2] * 2)
    keep, held = split_indices(labels, fraction=0.2, seed=0)
    assert np.bincount(labels[held]).tolist() == [4, 1, 1]
    assert not set(keep) & set(held) and len(keep) + len(held) == len(labels)
    assert np.array_equal(held, split_indices(labels, fraction=0.2, seed=0)[1])

    from pathlib import Path

    paths = [Path(f"{p:08d}_{k:03d}.png") for p in range(10) for k in range(3)]
    groups = patient_groups(paths)
    keep, held = split_indices(np.zeros((30, 14), np.float32), fraction=0.2, seed=1, groups=groups)
    assert len(held) == 6 and not set(groups[keep]) & set(groups[held])
    assert patient_groups([Path("IM-0001-0001.jpeg")]) is None


def test_random_crop_rotate_identity_and_randomness():
    x = torch.rand(3, 1, 16, 16)
    gen = torch.Generator().manual_seed(0)
    same = random_crop_rotate(x, generator=gen, scale=(1.0, 1.0), ratio=(1.0, 1.0), max_degrees=0.0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    y = random_crop_rotate(x, generator=gen)
    assert y.shape == x.shape and not torch.allclose(y, x)
    flipped = random_crop_rotate(x, generator=torch.Generator().manual_seed(3), scale=(1.0, 1.0), ratio=(1.0, 1.0), max_degrees=0.0, hflip=True)
    mirrored = [torch.allclose(f, x[i].flip(-1), atol=1e-5) for i, f in enumerate(flipped)]
    kept = [torch.allclose(f, x[i], atol=1e-5) for i, f in enumerate(flipped)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored)


def test_binary_auc_scores_the_second_class():
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    assert auc_scores(logits, labels, task="binary", class_names=["NORMAL", "PNEUMONIA"]) == (1.0, {"PNEUMONIA": 1.0})
    assert auc_scores(-logits, labels, task="binary", class_names=["NORMAL", "PNEUMONIA"])[0] == 0.0


def test_cli(blobs, tmp_path, capsys):
    from priormim.cli import main
    from priormim.cli.finetune_cls import register_finetune

    train, test = blobs
    parser = argparse.ArgumentParser()
    register_finetune(parser.add_subparsers())
    args = parser.parse_args(
        ["cls", "--encoder", "none", "--train", str(train), "--test", str(test), "--out", str(tmp_path / "a"), "--seeds", "0",
         "--img-size", "32", "--model-kwargs", json.dumps(TINY), "--epochs", "3", "--batch-size", "16", "--num-workers", "0"]
    )
    assert args.encoder is None and args.mode == "linear" and args.pool is None
    assert args.func(args) == 0
    assert "test AUC" in capsys.readouterr().out and (tmp_path / "a" / "results.md").is_file()

    rc = main(["finetune", "cls", "--encoder", "none", "--train", str(tmp_path / "nope"), "--test", str(test), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and "Traceback" not in err


def test_interrupted_seed_resumes_to_the_same_result_and_logs(blobs, tmp_path, monkeypatch):
    """A seed stopped after epoch 2 (Ctrl-C / SIGTERM) resumes from seed0/last.ckpt on the next
    run and ends exactly as an uninterrupted run (full mode: augmentation and drop-path RNG
    restored); a changed setting is refused naming it; log.jsonl + TensorBoard per seed."""
    import priormim.training.cls.train as cls_train

    train, test = blobs
    kw = dict(train=train, test=test, mode="full", seeds=[0], save_model=False, **{**FAST, "epochs": 4})
    ref = finetune_classification(ClsFinetuneConfig(out=tmp_path / "ref", **kw))

    out = tmp_path / "run"
    real_save = cls_train.save_last_checkpoint

    def save_then_stop(state, run_dir):
        real_save(state, run_dir)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cls_train, "save_last_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        finetune_classification(ClsFinetuneConfig(out=out, **kw))
    monkeypatch.setattr(cls_train, "save_last_checkpoint", real_save)
    assert (out / "seed0" / "last.ckpt").is_file() and not (out / "seed0" / "metrics.json").exists()
    assert [json.loads(x)["epoch"] for x in (out / "seed0" / "log.jsonl").read_text().splitlines()] == [1, 2]

    with pytest.raises(UserError, match=r"seed 0 resumes from its checkpoint: lr is 0\.002 but the run was started with 6\.25e-05; resume with lr=6\.25e-05"):
        finetune_classification(ClsFinetuneConfig(out=out, **{**kw, "lr": 0.002}))

    res = finetune_classification(ClsFinetuneConfig(out=out, **kw))
    assert res.metrics[0]["history"] == ref.metrics[0]["history"] and res.test_auc == ref.test_auc
    assert not (out / "seed0" / "last.ckpt").exists() and not (out / "seed0" / "previous.ckpt").exists()
    log = [json.loads(x) for x in (out / "seed0" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4] and log[3]["val_loss"] == ref.metrics[0]["history"][3]["val_loss"]
    assert any((out / "seed0" / "tb").iterdir())


def test_non_finite_loss_names_epoch_and_step(blobs, tmp_path):
    train, test = blobs
    cfg = ClsFinetuneConfig(train=train, test=test, out=tmp_path / "run", mode="full", seeds=[0], save_model=False,
                            **{**FAST, "epochs": 1, "lr": 1e30})
    with pytest.raises(UserError, match=r"loss is (nan|inf) at epoch 1, step \d+; lower --lr"):
        finetune_classification(cfg)
