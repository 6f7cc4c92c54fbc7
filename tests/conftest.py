import sys
from pathlib import Path

# Test helpers (fixtures that build datasets and checkpoints) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
