import sys
from pathlib import Path

# Shared agent fakes and helpers live in tests/agent_fakes.py; tests/ is not a package.
_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
