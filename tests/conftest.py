import sys
from pathlib import Path

# Tests import the small helpers in tests/ (synthetic.py) as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "checks"))
