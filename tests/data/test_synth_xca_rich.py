"""The rich synthetic anatomy (ribs, diaphragm edge, motion blur) changes the image, not the labels."""

import numpy as np

from priormim.data.synth_xca import synthesize_angiogram


def test_rich_anatomy_keeps_the_mask_and_changes_the_background():
    plain = synthesize_angiogram(size=96, seed=np.random.default_rng([0, 3]))
    rich = synthesize_angiogram(size=96, seed=np.random.default_rng([0, 3]), rich=True)
    again = synthesize_angiogram(size=96, seed=np.random.default_rng([0, 3]), rich=True)
    assert np.array_equal(plain.mask, rich.mask)
    assert np.array_equal(rich.image, again.image)  # deterministic
    diff = np.abs(plain.image.astype(int) - rich.image.astype(int))
    assert diff[~rich.mask].mean() > 2  # the anatomy behind the vessels moved by more than noise
