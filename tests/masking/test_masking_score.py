"""HPM/AMT-style score-guided masking: the hardest patches plus uniform ones."""

from __future__ import annotations

import pytest
import torch

from priormim.masking import num_masked, score_guided_mask


def test_full_share_masks_exactly_the_top_scores():
    g = torch.Generator().manual_seed(0)
    B, L, ratio = 8, 49, 0.75
    scores = torch.randn(B, L, generator=g) - 3.0  # negative scores are fine
    m = score_guided_mask(scores, ratio, hard_share=1.0, generator=g)
    ref = torch.zeros_like(m).scatter_(1, scores.topk(num_masked(L, ratio), dim=1).indices, True)
    assert torch.equal(m, ref)


def test_partial_share_top_then_uniform():
    g = torch.Generator().manual_seed(1)
    N, L, ratio, share = 6000, 10, 0.6, 0.5
    n = num_masked(L, ratio)  # 6
    n_hard = int(n * share)  # 3
    scores = torch.arange(L, dtype=torch.float32).expand(N, L)  # top 3 = patches 7, 8, 9
    m = score_guided_mask(scores, ratio, hard_share=share, generator=g)
    assert m.sum(1).eq(n).all()
    assert bool(m[:, L - n_hard :].all())
    freq = m[:, : L - n_hard].float().mean(0)
    p = (n - n_hard) / (L - n_hard)
    assert torch.allclose(freq, torch.full_like(freq, p), atol=5 * (p * (1 - p) / N) ** 0.5)


def test_score_errors():
    with pytest.raises(ValueError, match="finite"):
        score_guided_mask(torch.tensor([[1.0, float("inf")]]), 0.5, hard_share=0.5)
    with pytest.raises(ValueError, match="hard_share"):
        score_guided_mask(torch.ones(1, 4), 0.5, hard_share=2.0)
