import pytest

from priormim.data.synth_xca import write_synthetic_xca

TINY_OVERRIDES = [
    "model.img_size=32",
    "model.encoder_kwargs={patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2}",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "optim.batch_size=4",
    "optim.warmup_epochs=0",
    "optim.blr=1e-3",
    "data.num_workers=0",
    "train.progress=false",
    "train.save_every=1",
    "consistency.segmentor_epochs=2",
    "consistency.segmentor_base_channels=4",
]


@pytest.fixture
def tiny_overrides():
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_xca(tmp_path_factory):
    root = tmp_path_factory.mktemp("xca")
    write_synthetic_xca(root, n=8, size=48, seed=0)
    return root
