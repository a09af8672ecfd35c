import sys
from pathlib import Path

# The tables import their shared builders and runner from harness.py beside them.
sys.path.insert(0, str(Path(__file__).parent))
