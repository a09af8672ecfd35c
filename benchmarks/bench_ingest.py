"""Ingest throughput: decode + contrast selection (+ PNG writing) of 512x512 8-bit JPEG
Lossless XA frames, frames/s in one process, next to a plain pydicom loop.

    PYTHONPATH=src python benchmarks/bench_ingest.py --runs 4 --frames 30

Makes synthetic multi-frame JPEG Lossless SV1 files (needs imagecodecs) in a temp folder and
times, per decoder plugin: pydicom ``pixel_array`` alone; priormim's reader (decode + LUT to
grey); + contrast curve and frame selection; the whole ``ingest`` of one process (+ dedup,
content-hash PNG writing, journal, manifest).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import pydicom
    from pydicom.pixels import iter_pixels

    from priormim.data.synth_cine import synthesize_cine, write_cine_dicom
    from priormim.ingest.run import ingest
    from priormim.ingest.select import contrast_curve, parse_frame_rule, select_frames
    from priormim.io_dicom import read_dicom_sequence

    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    paths = []
    for i in range(args.runs):
        cine = synthesize_cine(size=args.size, frames=args.frames, seed=i)
        paths.append(write_cine_dicom(tmp / "in" / f"run{i}.dcm", cine.frames, syntax="jpeg-lossless"))
    n = args.runs * args.frames
    rows = []

    def timed(label: str, fn) -> None:
        fn(paths[:1])  # warm-up (imports, plugin discovery)
        t = time.perf_counter()
        fn(paths)
        rows.append((label, n / (time.perf_counter() - t)))

    for plugin in ("gdcm", "pylibjpeg"):
        def plain(ps, plugin=plugin):
            for p in ps:
                for _ in iter_pixels(pydicom.dcmread(p), decoding_plugin=plugin):
                    pass
        timed(f"pydicom iter_pixels, {plugin}", plain)

    timed("priormim reader (decode + LUT to grey)", lambda ps: [read_dicom_sequence(p) for p in ps])

    def select(ps):
        for p in ps:
            frames, _ = read_dicom_sequence(p)
            select_frames(contrast_curve(frames), parse_frame_rule("peak"))
    timed("reader + contrast curve + peak selection", select)
    k = [0]

    def full(ps):
        k[0] += 1
        ingest(ps, tmp / f"out{k[0]}", progress=False)
    timed("whole ingest, 1 process (+ dedup, PNG, manifest)", full)
    print(f"{args.runs} runs x {args.frames} frames of {args.size}x{args.size} 8-bit JPEG Lossless SV1, 1 torch thread")
    print("| step | frames/s |\n|---|---:|")
    for label, fps in rows:
        print(f"| {label} | {fps:.0f} |")


if __name__ == "__main__":
    main()
