"""Ingest throughput: decode + contrast selection (+ PNG writing) of 512x512 8-bit JPEG
Lossless XA frames, frames/s in one process, next to a plain pydicom loop.

    PYTHONPATH=src python benchmarks/bench_ingest.py --runs 4 --frames 30 --rounds 5

Makes synthetic multi-frame JPEG Lossless SV1 files in a temp folder and times, in one
process with one torch thread: pydicom ``iter_pixels`` alone per decoder plugin (gdcm,
pylibjpeg, and priormim's imagecodecs plugin); priormim's reader (decode + LUT to grey);
+ contrast curve and frame selection; the whole ``ingest`` (+ dedup, content-hash PNG writing,
journal, manifest). The steps run in turn, ``--rounds`` times (a shared, noisy machine slows
all of them alike within a round); the table gives the median and the range over the rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4, help="cine runs (files)")
    ap.add_argument("--frames", type=int, default=30, help="frames per run")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import imagecodecs
    import pydicom
    from pydicom.pixels import iter_pixels

    from priormim.data.synth_cine import synthesize_cine, write_cine_dicom
    from priormim.ingest.run import ingest
    from priormim.ingest.select import contrast_curve, parse_frame_rule, select_frames
    from priormim.io_dicom import read_dicom_sequence
    from priormim.io_dicom_imagecodecs import register

    register()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    paths = []
    for i in range(args.runs):
        cine = synthesize_cine(size=args.size, frames=args.frames, seed=i)
        paths.append(write_cine_dicom(tmp / "in" / f"run{i}.dcm", cine.frames, syntax="jpeg-lossless"))
    n = args.runs * args.frames
    steps = {}

    for plugin in ("gdcm", "pylibjpeg", "imagecodecs"):
        def plain(ps, plugin=plugin):
            for p in ps:
                for _ in iter_pixels(pydicom.dcmread(p), decoding_plugin=plugin):
                    pass
        steps[f"pydicom `iter_pixels`, {plugin} plugin"] = plain

    steps["priormim reader (decode + Modality/VOI LUT to grey)"] = lambda ps: [read_dicom_sequence(p) for p in ps]

    def select(ps):
        for p in ps:
            frames, _ = read_dicom_sequence(p)
            select_frames(contrast_curve(frames), parse_frame_rule("peak"))
    steps["reader + contrast curve (vesselness at 128 px) + peak selection"] = select
    count = [0]

    def full(ps):
        count[0] += 1
        ingest(ps, tmp / f"out{count[0]}", progress=False)
    steps["whole `ingest`, 1 process (+ dedup, content-hash PNG, journal, manifest)"] = full

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in steps.values():
            fn(paths[:1])  # warm-up: imports, plugin discovery
        fps: dict[str, list[float]] = {label: [] for label in steps}
        for _ in range(args.rounds):
            for label, fn in steps.items():
                t = time.perf_counter()
                fn(paths)
                fps[label].append(n / (time.perf_counter() - t))
    print(f"{args.runs} runs x {args.frames} frames of {args.size}x{args.size} 8-bit JPEG Lossless SV1, 1 process, "
          f"1 torch thread, median of {args.rounds} rounds")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"pydicom {pydicom.__version__}, imagecodecs {imagecodecs.__version__} ({imagecodecs.jpeg8_version()})")
    print("| step | frames/s (median) | min-max |\n|---|---:|---:|")
    for label, values in fps.items():
        print(f"| {label} | {statistics.median(values):.0f} | {min(values):.0f}-{max(values):.0f} |")


if __name__ == "__main__":
    main()
