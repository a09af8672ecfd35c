"""The method zoo's models at 32 px / patch 4 / depth 2: losses, training signal, method details."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Attention

from priormim.losses.reconstruction import masked_reconstruction_loss
from priormim.masking import MaskingContext, build_masking, mask_to_indices, random_mask
from priormim.models.mae import encode_tokens, patchify, unpatchify
from priormim.models.zoo import AMT, DINO, HPM, ZOO_MODELS, CheXWorldJEPA, CrossMAE, DeblurMIM, MoCoV3, SimMIM
from priormim.models.zoo.augment import ViewConfig, gaussian_blur, random_view
from priormim.models.zoo.base import cosine_momentum
from priormim.models.zoo.contrastive import dino_loss, info_nce
from priormim.models.zoo.crossmae import CrossAttentionBlock
from priormim.models.zoo.mae_variants import relative_loss_ranking, throw_lowest
from priormim.models.zoo.simmim import simmim_l1_loss

ENC = dict(encoder_name="vit_tiny_patch16_224", img_size=32,
           encoder_kwargs={"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2})
DEC = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
KWARGS = {
    "simmim": ENC,
    "amt": {**ENC, **DEC, "warmup_share": 0.0},
    "hpm": {**ENC, **DEC},
    "deblurmim": {**ENC, **DEC},
    "crossmae": {**ENC, **DEC},
    "mocov3": {**ENC, "hidden_dim": 64, "out_dim": 32},
    "dino": {**ENC, "out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32},
    "chexworld": {**ENC, **DEC},
}
L = 64  # 8 x 8 patches
# DINO's centring deliberately raises the teacher's entropy (against collapse), so on one fixed
# batch its cross-entropy climbs; with the centre frozen the student must still fit the EMA teacher.
LEARN_KWARGS = {"dino": {"center_momentum": 1.0}}


def make(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return ZOO_MODELS[name](**{**KWARGS[name], **kw})


def step(model, x, mask, progress=1.0):
    scores = model.mask_scores(x, progress=progress) if hasattr(model, "mask_scores") else None
    return model(x, mask, progress=progress, scores=scores)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 32, 32, generator=g)
    x = gaussian_blur(x, 1.0)  # some spatial structure to learn
    return (x - x.mean()) / x.std(), random_mask(4, L, 0.75, generator=g)


@pytest.mark.parametrize("name", sorted(ZOO_MODELS))
def test_forward_backward_finite_and_encoder_gets_gradients(name, batch):
    model = make(name)
    assert model.patch_size == 4 and model.grid_size == (8, 8)
    assert {"encoder", "patch_size", "grid_size"} <= set(dir(model))
    out = step(model, *batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(torch.isfinite(v) for v in out.terms.values())
    out.loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(ZOO_MODELS))
def test_a_few_steps_on_one_batch_lower_the_loss(name, batch):
    x, mask = batch
    model = make(name, **LEARN_KWARGS.get(name, {}))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    losses = []
    for i in range(12):
        torch.manual_seed(123)  # the same random views / subsets every step: one fixed objective
        out = step(model, x, mask, progress=0.5)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step(0.5)
        losses.append(float(out.loss.detach()))
    assert sum(losses[-3:]) / 3 < 0.85 * losses[0], losses


# -- SimMIM --------------------------------------------------------------------------------------
def test_simmim_encoder_sees_all_tokens_and_masked_content_is_replaced(batch):
    x, mask = batch
    model = make("simmim").eval()
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    pred = model.forward_pred(x, mask)
    assert seen == [(4, 1 + L, 32)]  # class token + every patch
    assert pred.shape == (4, L, 16)
    p = patchify(x, 4).clone()
    p[mask] = 50.0  # change only the masked patches' pixels
    with torch.no_grad():
        assert torch.allclose(model.forward_pred(unpatchify(p, 4, (8, 8)), mask), pred.detach(), atol=1e-6)


def test_simmim_loss_counts_only_masked_pixels(batch):
    x, mask = batch
    target = patchify(x, 4)
    pred = torch.randn_like(target, requires_grad=True)
    loss = simmim_l1_loss(pred, target, mask)
    assert float(loss.detach()) == pytest.approx(float((pred.detach() - target).abs()[mask].mean()), rel=1e-5)
    other = target.clone()
    other[~mask] += 10.0  # visible pixels do not count
    assert float(simmim_l1_loss(pred, other, mask).detach()) == pytest.approx(float(loss.detach()))
    loss.backward()
    assert float(pred.grad[~mask].abs().sum()) == 0 and float(pred.grad[mask].abs().sum()) > 0


# -- CrossMAE ------------------------------------------------------------------------------------
def test_crossmae_decoder_has_no_self_attention_and_queries_are_independent(batch):
    x, mask = batch
    model = make("crossmae").eval()
    assert all(isinstance(b, CrossAttentionBlock) for b in model.decoder_blocks)
    assert not any(isinstance(m, Attention) for m in model.decoder_blocks.modules())
    ids_keep = mask_to_indices(mask).ids_keep
    ids_pred = model.choose_targets(mask)
    with torch.no_grad():
        latent = encode_tokens(model.encoder, x, ids_keep=ids_keep)
        full = model.forward_decoder(latent, ids_keep, ids_pred)
        part = model.forward_decoder(latent, ids_keep, ids_pred[:, :3])
    assert full.shape == (4, ids_pred.shape[1], 16)
    assert torch.allclose(full[:, :3], part, atol=1e-6)  # other queries do not influence a query


def test_crossmae_predicts_a_random_subset_of_the_masked_patches(batch):
    _, mask = batch
    model = make("crossmae")
    ids = model.choose_targets(mask)
    assert ids.shape == (4, 16)  # prediction_ratio 0.25 of 64 patches
    assert bool(torch.gather(mask, 1, ids).all())
    assert all(len(set(r.tolist())) == 16 for r in ids)
    assert not torch.equal(ids, model.choose_targets(mask))  # drawn anew each step


# -- DeblurringMIM -------------------------------------------------------------------------------
def test_deblurmim_encoder_input_is_blurred_but_target_sharp(batch):
    x, mask = batch
    model = make("deblurmim").eval()
    seen = []
    model.encoder.patch_embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        loss = model(x, mask).loss
        assert torch.allclose(seen[0], gaussian_blur(x, 1.5), atol=1e-6)
        assert not torch.allclose(seen[0], x, atol=1e-2)
        pred = model.mae(model.blur(x), mask).pred
    sharp = masked_reconstruction_loss(pred, patchify(x, 4), mask)
    blurred = masked_reconstruction_loss(pred, patchify(model.blur(x), 4), mask)
    assert float(loss) == pytest.approx(float(sharp), rel=1e-5)
    assert float(loss) != pytest.approx(float(blurred), rel=1e-3)


def test_gaussian_blur_per_image_sigma_matches_single_calls():
    x = torch.randn(3, 1, 16, 16)
    sig = torch.tensor([0.0, 1.0, 2.0])
    out = gaussian_blur(x, sig)
    assert torch.equal(out[0], x[0])
    for i in (1, 2):
        # the same kernel radius (set by the largest sigma), so the same truncated kernel
        assert torch.allclose(out[i : i + 1], gaussian_blur(x[i : i + 1], float(sig[i]), max_sigma=2.0), atol=1e-5)
    assert torch.allclose(gaussian_blur(torch.ones(1, 1, 8, 8), 1.5), torch.ones(1, 1, 8, 8), atol=1e-6)


# -- EMA teachers --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mocov3", "dino", "chexworld"])
def test_ema_teacher_gets_no_gradients_and_moves_toward_the_student(name, batch):
    model = make(name)
    teacher = list(model.teacher.parameters())
    assert teacher and not any(p.requires_grad for p in teacher)
    assert not {id(p) for p in teacher} & {id(p) for p in model.encoder.parameters()}
    step(model, *batch).loss.backward()
    assert all(p.grad is None for p in teacher)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))  # stands in for an optimiser step
    students = [p.detach() for p in model.encoder.parameters()]
    t_enc = list(model.teacher[0].parameters())
    before = [t.clone() for t in t_enc]
    dist_before = sum(float((t - s).pow(2).sum()) for t, s in zip(t_enc, students))
    model.after_optimizer_step(0.0)
    m = cosine_momentum(0.0, model.momentum)
    dist_after = sum(float((t - s).pow(2).sum()) for t, s in zip(t_enc, students))
    assert dist_after == pytest.approx(m**2 * dist_before, rel=1e-4)
    for t, b, s in zip(t_enc, before, students):
        assert torch.allclose(t, m * b + (1 - m) * s, atol=1e-6)
    assert cosine_momentum(1.0, 0.99) == 1.0 and cosine_momentum(0.0, 0.99) == pytest.approx(0.99)


def test_chexworld_predicts_layer_normed_target_features_of_masked_patches(batch):
    x, mask = batch
    model = make("chexworld")
    t = model.targets(x)
    assert t.shape == (4, L, 32) and not t.requires_grad
    assert torch.allclose(t.mean(-1), torch.zeros(4, L), atol=1e-5)
    latent = encode_tokens(model.encoder, x, ids_keep=mask_to_indices(mask).ids_keep)
    assert model.predictor(latent, mask).shape == (4, int(mask[0].sum()), 32)


# -- AMT / HPM -----------------------------------------------------------------------------------
def test_amt_scores_are_attention_after_warmup_and_drive_score_masking(batch):
    x, _ = batch
    model = make("amt", warmup_share=0.5)
    assert model.mask_scores(x, progress=0.2) is None  # warm-up: random masking, no throwing
    scores = model.mask_scores(x, progress=0.6)
    assert scores.shape == (4, L) and torch.allclose(scores.sum(1), torch.ones(4), atol=1e-5)
    masking = build_masking("score", mask_ratio=0.5, hard_share_start=1.0, hard_share_end=1.0)
    mask = masking(MaskingContext(batch_size=4, grid_size=(8, 8), patch_prior=scores, progress=1.0))
    top = torch.topk(scores, 32, dim=1).indices
    assert bool(torch.gather(mask, 1, top).all())  # the most-attended patches are masked


def test_amt_throws_the_least_attended_visible_and_masked_patches():
    scores = torch.arange(8.0).repeat(2, 1)  # patch i has score i
    mask = torch.tensor([[0, 1, 0, 1, 0, 1, 0, 1]] * 2, dtype=torch.bool)
    hidden, target = throw_lowest(mask, scores, 0.5)
    assert hidden[0].tolist() == [1, 1, 1, 1, 0, 1, 0, 1]  # visible 0 and 2 thrown
    assert target[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 1]  # masked 1 and 3 thrown
    model = make("amt", throw_ratio=0.25)
    x = torch.randn(2, 1, 32, 32)
    m = random_mask(2, L, 0.75)
    out = model(x, m, progress=1.0, scores=torch.rand(2, L))
    assert float(out.terms["thrown_share"]) == pytest.approx((4 + 12) / 64)  # 25% of 16 visible + 48 masked
    assert float(model(x, m, progress=1.0, scores=None).terms["thrown_share"]) == 0.0


def test_hpm_scores_shape_and_relative_loss_prefers_the_right_order(batch):
    x, mask = batch
    model = make("hpm")
    scores = model.mask_scores(x, progress=0.5)
    assert scores.shape == (4, L) and scores.dtype == torch.float32 and bool(torch.isfinite(scores).all())
    masking = build_masking("score", mask_ratio=0.75, hard_share_start=1.0, hard_share_end=1.0)
    m = masking(MaskingContext(batch_size=4, grid_size=(8, 8), patch_prior=scores, progress=1.0))
    assert bool(torch.gather(m, 1, torch.topk(scores, 48, dim=1).indices).all())
    true = torch.rand(4, L)
    assert relative_loss_ranking(true * 5, true, mask) < relative_loss_ranking(-true * 5, true, mask)
    out = model(x, mask, progress=0.5)
    assert set(out.terms) == {"loss_rec", "loss_pred"}


# -- MoCo v3 / DINO ------------------------------------------------------------------------------
def test_random_view_is_batched_and_keeps_shape():
    x = torch.randn(5, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    v = random_view(x, generator=g)
    assert v.shape == x.shape and v.dtype == x.dtype and bool(torch.isfinite(v).all())
    assert not torch.allclose(v, random_view(x, generator=g))
    ident = ViewConfig(crop_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, brightness=0.0, contrast=0.0, blur_p=0.0)
    assert torch.allclose(random_view(x, ident), x, atol=1e-5)


def test_mocov3_and_dino_shapes(batch):
    x, mask = batch
    moco = make("mocov3")
    assert moco.predictor(moco.projector(moco.encoder(x))).shape == (4, 32)
    q = torch.randn(4, 8)
    assert info_nce(q, q, 0.2) < info_nce(q, torch.randn(4, 8), 0.2)
    with pytest.raises(ValueError, match="at least 2"):
        moco(x[:1], mask[:1])
    dino = make("dino")
    assert dino.head(dino.encoder(x)).shape == (4, 64)
    assert dino.center.shape == (1, 64) and float(dino.center.abs().sum()) == 0
    dino(x, mask)
    assert float(dino.center.abs().sum()) > 0  # centre updated from the teacher output
    t = [torch.randn(4, 64), torch.randn(4, 64)]
    same = dino_loss([t[1] * 0.4, t[0] * 0.4], t, torch.zeros(1, 64), student_temp=0.1, teacher_temp=0.04)
    other = dino_loss([torch.randn(4, 64), torch.randn(4, 64)], t, torch.zeros(1, 64), student_temp=0.1, teacher_temp=0.04)
    assert same < other


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError):
        make("deblurmim", blur_sigma=0)
    with pytest.raises(ValueError):
        make("crossmae", prediction_ratio=0)
    with pytest.raises(ValueError):
        make("amt", throw_ratio=1.0)
    assert isinstance(make("simmim"), SimMIM) and isinstance(make("amt"), AMT) and isinstance(make("hpm"), HPM)
    assert {DeblurMIM, CrossMAE, MoCoV3, DINO, CheXWorldJEPA} <= set(ZOO_MODELS.values())
