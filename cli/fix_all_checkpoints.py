"""Verify and repair every checkpoint of a run folder. See --help, or CHECKPOINT_FIX_GUIDE.md."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chef_genius.doctor.cli import fix_all_entry  # noqa: E402

if __name__ == "__main__":
    fix_all_entry()
