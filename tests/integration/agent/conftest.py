import sys
from pathlib import Path

# Shared agent fakes live in tests/agent_fakes.py and the whole-product helpers in
# tests/integration/stack_helpers.py; neither directory is a package.
for _dir in (Path(__file__).resolve().parents[2], Path(__file__).resolve().parents[1]):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))
