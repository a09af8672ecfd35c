"""Simulated chest X-ray readings against the statistics they are built to (issue 16).

The statistics are recomputed here with plain numpy (the reference) and compared with
``priormim.data.synth_cxr_gaze.GAZE_STATS``; ``synth_cxr_stats.check_reading_stats`` must agree.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from priormim.data.synth_cxr import LESION_TYPES, synthesize_cxr
from priormim.data.synth_cxr_gaze import GAZE_STATS, READINGS_PER_IMAGE
from priormim.data.synth_cxr_stats import check_reading_stats, reading_stats

N_IMAGES = 40  # 40 images, ~46 readings, ~1300 fixations: the medians settle within a few %


@pytest.fixture(scope="module")
def samples():
    # Every fourth image is normal; the rest cycle through the lesion types.
    return [synthesize_cxr(size=64, seed=(123, i), lesion=(None, *LESION_TYPES)[i % 4]) for i in range(N_IMAGES)]


def reference_stats(samples) -> dict[str, float]:
    """The four basic statistics, straight from the fixations (no library code)."""
    readings = [f for s in samples for f in s.fixations]
    dur_ms = np.concatenate([1000 * f.duration for f in readings])
    amp = np.concatenate([np.hypot(np.diff(f.x), np.diff(f.y)) / f.sigma_x[1:] for f in readings])
    return {
        "readings per image": float(np.mean([len(s.fixations) for s in samples])),
        "fixations per reading": float(np.median([len(f.x) for f in readings])),
        "fixation duration (ms)": float(np.median(dur_ms)),
        "saccade amplitude (deg)": float(np.median(amp)),
    }


def within(name: str, value: float) -> bool:
    st = GAZE_STATS[name]
    return abs(value - st.target) <= st.rel_tol * st.target


def test_every_statistic_has_a_source_and_the_published_ones_say_where():
    assert GAZE_STATS["readings per image"].target == pytest.approx(3032 / 2616)  # REFLACX abstract
    for name, st in GAZE_STATS.items():
        assert st.target > 0 and 0 < st.rel_tol < 1, name
        assert st.source, name
        if st.published != "-":  # a published figure names its paper and place
            assert "Sci. Data" in st.source or "IPMI" in st.source, name
        else:
            assert st.source.startswith("not published"), name


def test_simulated_medians_match_the_targets(samples):
    ref = reference_stats(samples)
    for name, value in ref.items():
        assert within(name, value), f"{name}: simulated {value:.3g}, target {GAZE_STATS[name].target:.3g}"
    checks = check_reading_stats(samples)
    assert checks.keys() == GAZE_STATS.keys()
    for name, value in ref.items():  # the library measures what the reference measures
        assert checks[name].value == pytest.approx(value)
    for name, c in checks.items():  # matched targets are met, the one flagged unmatched is not
        assert c.ok == GAZE_STATS[name].matched, f"{name}: {c}"


def test_two_readers_at_reflacx_rate():
    n = np.array([len(synthesize_cxr(size=32, seed=(5, i)).fixations) for i in range(300)])
    assert set(np.unique(n)) <= {1, 2}
    assert abs(n.mean() - READINGS_PER_IMAGE) < 0.07  # binomial sd at p = 0.16, n = 300: 0.021


def test_halved_durations_fail_the_check(samples):
    """The tolerance is tight enough to catch a simulator whose fixations are half as long."""
    halved = [
        dataclasses.replace(s, fixations=[dataclasses.replace(f, duration=f.duration / 2) for f in s.fixations])
        for s in samples
    ]
    assert not within("fixation duration (ms)", reference_stats(halved)["fixation duration (ms)"])
    assert not check_reading_stats(halved)["fixation duration (ms)"].ok
    assert check_reading_stats(halved)["fixations per reading"].ok  # the rest does not move


def test_dwell_and_density_on_abnormal_images_only(samples):
    stats = reading_stats(samples)
    n_abnormal = sum(s.label for s in samples)
    assert len(stats["gaze density, lesion / elsewhere"]) == n_abnormal
    assert len(stats["dwell share near lesion (%)"]) == sum(len(s.fixations) for s in samples if s.label)
    # Reference for one image: heat inside the mask over heat outside, from the fixation heatmap.
    from priormim.priors.gaze import gaze_heatmap

    s = next(s for s in samples if s.label)
    heat = gaze_heatmap(s.fixations, out_size=s.lesion_mask.shape)
    ratio = heat[s.lesion_mask].mean() / heat[~s.lesion_mask].mean()
    assert stats["gaze density, lesion / elsewhere"][0] == pytest.approx(ratio, rel=1e-5)
    assert ratio > 1  # readers look at the lesion more than elsewhere
