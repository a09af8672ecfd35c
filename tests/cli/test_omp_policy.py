"""The CLI makes idle OpenMP threads sleep unless the user set a policy (before torch loads)."""

import os
import subprocess
import sys


def _policy(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env_extra
    code = ("import sys; import priormim.cli; import os; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()


def test_cli_defaults_to_passive_and_keeps_the_users_choice():
    assert _policy({}) == ["PASSIVE", "False"]  # set before torch is imported
    assert _policy({"OMP_WAIT_POLICY": "ACTIVE"})[0] == "ACTIVE"
