import sys
from pathlib import Path

# Lets tests import their shared helpers (reference.py) by name.
sys.path.insert(0, str(Path(__file__).parent))
