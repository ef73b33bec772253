import sys
from pathlib import Path

# Test helpers (engine_script) import by name from this folder.
sys.path.insert(0, str(Path(__file__).parent))
