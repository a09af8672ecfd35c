"""Per-sample random seeds: the randomness of one sample in one epoch, independent of the rank.

The data sets seed each sample's augmentation from :func:`sample_seed`, so a sample is
augmented the same whatever the number of processes or loader workers and after a resume;
:class:`priormim.training.distributed.PerSampleMasking` draws each sample's mask from the same
function with :data:`MASK_STREAM`. Pure functions of integers: no torch.distributed here.
"""

from __future__ import annotations

import numpy as np

AUGMENT_STREAM = 0
MASK_STREAM = 1


def sample_seed(seed: int, epoch: int, index: int, stream: int = AUGMENT_STREAM) -> int:
    """A 63-bit seed for one sample's randomness in one epoch (``stream`` tells uses apart)."""
    ss = np.random.SeedSequence([int(seed) % 2**32, int(seed) // 2**32, int(epoch), int(index), int(stream)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
