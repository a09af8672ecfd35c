"""OpenMP wait policy on a busy CPU: one consistency-segmentor epoch, spinning vs sleeping threads.

Each setting runs in a fresh process (the policy is read when torch loads OpenMP):

    python benchmarks/bench_threads.py --data DIR   # DIR: images/ + priors/vessel/ (e.g. demo_out/data/xca_unlabelled)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import sys, time, torch
from pathlib import Path
torch.set_num_threads(int(sys.argv[2]))
from priormim.priors.cache import load_prior
from priormim.training.segmentor import SegmentorTrainConfig, train_segmentor
d = Path(sys.argv[1]); paths = sorted((d / 'images').glob('*.png')); pd = d / 'priors' / 'vessel'
t, c = time.perf_counter(), time.process_time()
train_segmentor(SegmentorTrainConfig(epochs=1, img_size=64, batch_size=16, arch='unext_s', progress=False),
                paths=paths, prior_loader=lambda p: load_prior(pd, p), out=sys.argv[3])
print(f'{time.perf_counter() - t:.1f} {time.process_time() - c:.1f}')
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="/tmp/bench_threads.safetensors")
    args = ap.parse_args()
    print("| threads | OMP_WAIT_POLICY | wall s | CPU s |\n|---|---|---|---|")
    for threads, policy in ((1, "ACTIVE"), (2, "ACTIVE"), (2, "PASSIVE")):
        env = dict(os.environ, OMP_WAIT_POLICY=policy)
        out = subprocess.run([sys.executable, "-c", CHILD, args.data, str(threads), args.out], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        print(f"| {threads} | {policy} | {out[-2]} | {out[-1]} |")


if __name__ == "__main__":
    main()
