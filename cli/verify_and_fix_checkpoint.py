"""Verify a checkpoint and optionally repair it. See --help, or CHECKPOINT_FIX_GUIDE.md."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chef_genius.doctor.cli import verify_entry  # noqa: E402

if __name__ == "__main__":
    verify_entry()
