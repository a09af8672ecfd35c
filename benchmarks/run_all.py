"""Run every benchmark in this folder, one after another, on this machine (not part of CI).

    python benchmarks/run_all.py            # or: make bench
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ["bench_vesselness.py", "bench_masking.py", "bench_pretrain_step.py"]

if __name__ == "__main__":
    failed = 0
    for name in SCRIPTS:
        print(f"\n## {name}\n", flush=True)
        failed += subprocess.call([sys.executable, str(HERE / name)]) != 0
    sys.exit(1 if failed else 0)
