"""`ssckit` with the tiny test model and the engine commands registered (run as a script by the DDP tests;
Lightning's DDP launcher re-runs this same script for the other processes)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_helpers import register_commands, register_tiny  # noqa: E402

from ssckit.cli import main  # noqa: E402

if __name__ == "__main__":
    register_tiny()
    register_commands()
    sys.exit(main())
