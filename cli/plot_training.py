"""Plot a training run (losses, learning rate, throughput). See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chef_genius.monitoring.plot_cli import entry  # noqa: E402

if __name__ == "__main__":
    entry()
