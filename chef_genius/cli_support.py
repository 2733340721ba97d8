"""What every command-line tool shares: a one-line-error argument parser and the log format."""

from __future__ import annotations

import argparse
import logging
import sys

from chef_genius.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (exit 2), not usage plus a message."""

    def error(self, message):  # noqa: D401 - argparse API
        raise UserError(f"{message} (see --help)")


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
