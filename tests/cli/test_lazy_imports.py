"""``priormim --help`` and ``--version`` must not import torch or scipy (1.7 s on a laptop)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import priormim

SRC = str(Path(priormim.__file__).resolve().parents[1])

PROBE = """
import sys
from priormim.cli import main
try:
    main([{arg!r}])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "scipy", "timm", "matplotlib", "skimage") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _probe(arg: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", PROBE.format(arg=arg)], capture_output=True, text=True,
                          env=env, timeout=120, check=True)


@pytest.mark.parametrize("arg", ["--help", "--version"])
def test_help_and_version_do_not_import_torch_or_scipy(arg):
    proc = _probe(arg)
    assert "HEAVY=\n" in proc.stdout, proc.stdout[-500:]


def test_version_prints_the_package_version():
    assert f"priormim {priormim.__version__}" in _probe("--version").stdout


def test_cli_keep_modes_match_the_library():
    from priormim.cli.prior import KEEP_MODES as cli_modes
    from priormim.priors.vessel import KEEP_MODES

    assert cli_modes == KEEP_MODES
    from priormim.cli.prior import PRESETS as cli_presets
    from priormim.priors.vessel import PRESETS

    assert cli_presets == PRESETS
