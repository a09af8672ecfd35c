"""Frozen-encoder linear probe for vessel segmentation: what the encoder already knows.

Fine-tuning a whole ViT on 24 angiograms mostly measures the fine-tuning; a linear probe on
frozen patch tokens measures the pretrained representation itself, at a fraction of the cost:
the tokens are computed once, then one linear layer maps each token ``[D]`` to the logits of
its ``p x p`` pixels (the pixel-shuffle head of SETR-naive / a 1x1 conv), trained with BCE +
soft Dice. The threshold is picked on the validation images, the test Dice is scored at the
masks' original resolution (logits upsampled bilinearly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass
class ProbeResult:
    """Test Dice (mean over images) at the threshold picked on val; per-image test Dice."""

    test_dice: float
    val_dice: float
    threshold: float
    per_image: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def frozen_tokens(encoder: nn.Module, images01: Tensor, *, mean: float, std: float, batch_size: int = 16) -> Tensor:
    """Patch tokens ``[N, gh, gw, D]`` of a timm ViT (after its last norm) for ``[N, 1, S, S]`` images in [0, 1]."""
    from priormim.models.mae import encode_tokens, encoder_geometry

    encoder.eval()
    _, grid = encoder_geometry(encoder)
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    out = []
    for s in range(0, len(images01), batch_size):
        t = encode_tokens(encoder, (images01[s : s + batch_size] - mean) / std)[:, prefix:]
        out.append(t.float().reshape(t.shape[0], *grid, t.shape[-1]))
    return torch.cat(out)


def _logits(head: nn.Linear, tokens: Tensor, patch: int) -> Tensor:
    """``[N, gh, gw, D]`` -> ``[N, 1, gh * p, gw * p]``."""
    x = head(tokens).permute(0, 3, 1, 2)  # [N, p*p, gh, gw]
    return F.pixel_shuffle(x, patch)


def _dice_per_image(prob_full: Sequence[np.ndarray], masks: Sequence[np.ndarray], thr: float) -> np.ndarray:
    out = []
    for p, m in zip(prob_full, masks):
        pred = p > thr
        den = pred.sum() + m.sum()
        out.append(1.0 if den == 0 else 2.0 * (pred & m).sum() / den)
    return np.asarray(out)


def _full_res(head: nn.Linear, tokens: Tensor, patch: int, masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        logits = _logits(head, tokens, patch)
    return [torch.sigmoid(F.interpolate(logits[i : i + 1], size=m.shape, mode="bilinear", align_corners=False))[0, 0]
            .numpy() for i, m in enumerate(masks)]


def linear_probe_segmentation(
    train_tokens: Tensor, train_masks: Tensor, val_tokens: Tensor, val_masks: Sequence[np.ndarray],
    test_tokens: Tensor, test_masks: Sequence[np.ndarray], *, patch: int, steps: int = 400, lr: float = 1e-2,
    seed: int = 0,
) -> ProbeResult:
    """Train the per-token linear head on frozen tokens and score it.

    Args:
        train_tokens: ``[N, gh, gw, D]``; train_masks: ``[N, 1, gh * p, gw * p]`` 0/1 at model size.
        val_masks, test_masks: bool masks at their original resolution (one per image).
        steps: full-batch AdamW steps (the train set is a few dozen images).
    """
    torch.manual_seed(seed)
    d = train_tokens.shape[-1]
    # Standardise tokens with train statistics (a BatchNorm without affine, as MAE's linear probe).
    mu = train_tokens.reshape(-1, d).mean(0)
    sd = train_tokens.reshape(-1, d).std(0).clamp_min(1e-6)
    tr, va, te = ((t - mu) / sd for t in (train_tokens, val_tokens, test_tokens))
    head = nn.Linear(d, patch * patch)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    target = train_masks.float()
    pos = float(target.mean())
    pos_weight = torch.tensor((1 - pos) / max(pos, 1e-6)).sqrt()  # soften the class imbalance
    for _ in range(steps):
        logits = _logits(head, tr, patch)
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
        p = torch.sigmoid(logits)
        soft_dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
        loss = bce + soft_dice
        opt.zero_grad()
        loss.backward()
        opt.step()
    val_prob = _full_res(head, va, patch, val_masks)
    scores = {thr: float(_dice_per_image(val_prob, val_masks, thr).mean()) for thr in THRESHOLDS}
    thr = max(scores, key=scores.get)
    test = _dice_per_image(_full_res(head, te, patch, test_masks), test_masks, thr)
    return ProbeResult(test_dice=float(test.mean()), val_dice=scores[thr], threshold=thr, per_image=test.tolist())


__all__ = ["ProbeResult", "frozen_tokens", "linear_probe_segmentation"]
