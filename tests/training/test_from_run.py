"""MaskedAutoencoder.from_run and `priormim visualize` on one tiny VasoMIM run."""

import pytest
import torch

from priormim.config import load_config
from priormim.errors import UserError
from priormim.models.mae import MaskedAutoencoder
from priormim.training.pretrain import build_model, pretrain


@pytest.fixture(scope="module")
def vasomim_run(tmp_path_factory):
    from priormim.data.synth_xca import write_synthetic_xca

    root = tmp_path_factory.mktemp("fromrun")
    write_synthetic_xca(root / "xca", n=8, size=48, seed=0)
    overrides = [
        "model.img_size=32", "model.encoder_kwargs={patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}",
        "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
        "optim.batch_size=4", "optim.warmup_epochs=0", "optim.epochs=1", "data.num_workers=0",
        "train.progress=false", "consistency.segmentor_epochs=1", "consistency.segmentor_base_channels=4",
        f"data.images={root / 'xca' / 'images'}",
    ]
    pretrain(load_config("vasomim", overrides), root / "run")
    return root


def test_from_run_restores_the_trained_weights(vasomim_run):
    run = vasomim_run / "run"
    model = MaskedAutoencoder.from_run(run)
    assert not model.training and model.run_config.method == "vasomim" and model.run_epoch == 0
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    reference = build_model(model.run_config)
    reference.load_state_dict(ckpt["model"])
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
    out = model(torch.zeros(2, 1, 32, 32), mask_ratio=0.5)
    assert out.pred.shape == (2, 64, 16)


def test_runs_log_the_share_of_vessel_patches(vasomim_run):
    import json

    # the random-masking reference of the figures: vessel patches among all patches of the batches
    hist = json.loads((vasomim_run / "run" / "history.json").read_text())
    assert 0 < hist[0]["vessel_patch_share"] < 1


def test_from_run_names_the_missing_file(tmp_path, vasomim_run):
    with pytest.raises(UserError, match="has no config.yaml"):
        MaskedAutoencoder.from_run(tmp_path)
    with pytest.raises(UserError, match="checkpoint does not exist"):
        MaskedAutoencoder.from_run(vasomim_run / "run", checkpoint=tmp_path / "nope.ckpt")


def test_visualize_cli_draws_shared_scale_panels(vasomim_run, tmp_path):
    from priormim.cli import main
    from priormim.evaluation.visualize import compute_run_visuals

    v = compute_run_visuals(vasomim_run / "run", vasomim_run / "xca" / "images", n=2)
    assert v.image.shape == v.recon.shape == v.mask.shape == (2, 1, 32, 32)
    assert 0 <= float(v.recon.min()) and float(v.recon.max()) <= 1
    assert v.seg_image is not None and v.seg_recon.shape == (2, 1, 32, 32)  # VasoMIM trained a segmentor
    assert v.prior_source.startswith("cached")  # the run's own prior cache, next to the images
    assert 0 < float(v.mask.mean()) < 1
    assert main(["visualize", "--run", str(vasomim_run / "run"), "--images", str(vasomim_run / "xca" / "images"),
                 "--out", str(tmp_path / "vis"), "--n", "2"]) == 0
    png = tmp_path / "vis" / "reconstructions.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_visualize_refuses_a_folder_that_is_not_a_run(tmp_path):
    from priormim.cli import main

    assert main(["visualize", "--run", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
