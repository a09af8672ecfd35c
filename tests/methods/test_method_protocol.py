"""The pretraining-method protocol: registry, hook defaults, the frozen segmentor, and no type
dispatch left in the training engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from priormim.config import known_methods, load_config
from priormim.errors import UserError
from priormim.losses import freeze
from priormim.masking import build_masking
from priormim.methods import (
    METHODS,
    MAEMethod,
    MaskGuide,
    PretrainMethod,
    ScoredZooMethod,
    StepInfo,
    VPMIMMethod,
    ZooMethod,
    build_method,
    register_method,
    unregister_method,
)
from priormim.models.mae import MaskedAutoencoder
from priormim.models.segmentor import VesselSegmentor
from priormim.models.vpmim import VPMIMAutoencoder
from priormim.models.zoo import ZOO_MODELS

SRC = Path(__file__).resolve().parents[2] / "src" / "priormim"
TINY = ["model.img_size=32", "model.encoder_kwargs={patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}",
        "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2"]


def test_every_packaged_method_is_registered():
    assert set(known_methods()) <= set(METHODS)


@pytest.mark.parametrize("recipe", ["mae", "vasomim", "vasomim_guidance_only", "vasomim_consistency_only", "vpmim",
                                    *ZOO_MODELS])
def test_each_recipe_builds_its_method_and_network(recipe):
    extra = ["model.pyramid_scales=[1, 2]", "model.pyramid_weights=[1.0, 0.5]"] if recipe == "vpmim" else []
    method = build_method(load_config(recipe, [*TINY, *extra]))
    if recipe in ZOO_MODELS:
        assert type(method.model) is ZOO_MODELS[recipe]
        assert isinstance(method, ScoredZooMethod if recipe in ("amt", "hpm") else ZooMethod)
    elif recipe == "vpmim":
        assert type(method) is VPMIMMethod and type(method.model) is VPMIMAutoencoder
    else:
        assert type(method) is MAEMethod and type(method.model) is MaskedAutoencoder
    # The checkpoint's "model" is the network's state dict, keys unprefixed.
    assert list(method.model.state_dict()) == [k.removeprefix("model.") for k in method.state_dict()]


def test_segmentor_is_held_outside_the_module_tree():
    cfg = load_config("vasomim", TINY)
    method = build_method(cfg)
    before = (list(method.state_dict()), [id(p) for p in method.parameters()])
    seg = freeze(VesselSegmentor(arch="unet", base_channels=4, levels=2))
    method.attach_segmentor(seg, norm_mean=0.5, norm_std=0.25)
    assert method.segmentor is seg
    assert (list(method.state_dict()), [id(p) for p in method.parameters()]) == before
    imgs, prior = torch.randn(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.8).float()
    step = StepInfo(masking=build_masking("anatomy", mask_ratio=0.75), progress=0.5)
    out = method(imgs, prior, step=step)
    assert set(out.terms) == {"loss_rec", "loss_cons", "loss_cons_kl", "loss"}
    assert out.mask.shape == (2, 16) and int(out.mask.sum()) == 2 * 12
    out.loss.backward()
    assert all(p.grad is None for p in seg.parameters())
    method.train()
    assert not seg.training  # the engine's method.train() leaves the frozen segmentor in eval mode


class _Bare(PretrainMethod):
    pass


def test_hook_defaults():
    method = _Bare(MaskedAutoencoder(img_size=32, encoder_kwargs={"patch_size": 8, "depth": 1, "embed_dim": 32,
                                                                  "num_heads": 2}, decoder_embed_dim=16,
                                     decoder_depth=1, decoder_num_heads=2))
    pp = torch.rand(2, 16)
    guide = method.guide(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), pp, step=StepInfo())
    assert isinstance(guide, MaskGuide) and guide.scores is pp and guide.aux == {}
    assert method.after_optimizer_step(0.5) is None
    assert method.segmentor is None and method.grid_size == (4, 4) and method.patch_size == 8
    with pytest.raises(NotImplementedError, match="_Bare must implement loss"):
        method.loss(torch.zeros(2, 1, 32, 32), torch.zeros(2, 16, dtype=torch.bool), patch_prior=pp,
                    guide=guide, step=StepInfo())


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_method("mae", _Bare)
    register_method("bare_test", _Bare)
    try:
        cfg = load_config("mae", ["method=bare_test", *TINY])
        assert type(build_method(cfg)) is _Bare
    finally:
        unregister_method("bare_test")
    cfg.method = "nope"
    with pytest.raises(UserError, match="unknown method 'nope'"):
        build_method(cfg)


def _class_names(package: str) -> set[str]:
    names = set()
    for path in (SRC / package).rglob("*.py"):
        names |= {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}
    return names


def test_training_never_dispatches_on_model_or_method_types():
    """Acceptance of issue 13: no isinstance on model / method classes and no hasattr probes on
    models or methods anywhere under training/."""
    classes = _class_names("models") | _class_names("methods")
    found = []
    for path in sorted((SRC / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id == "isinstance" and len(node.args) == 2:
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                named = {k.id if isinstance(k, ast.Name) else getattr(k, "attr", "") for k in kinds}
                if named & classes:
                    found.append(f"{path.name}:{node.lineno} isinstance {sorted(named & classes)}")
            if node.func.id == "hasattr" and ast.unparse(node.args[0]).split(".")[-1] in ("model", "method", "forward"):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert not found, found
