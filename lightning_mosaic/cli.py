"""The ``lightning-mosaic`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

TRACEBACK = "LIGHTNING_MOSAIC_TRACEBACK"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-mosaic``: an error is one line on stderr and exit status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="lightning-mosaic",
        description="Run multimodal models' modules side by side on one GPU under SM quotas.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "demo",
        help="train a small vision+audio+LLM model with strategy='mosaic' and print its graph and plan",
        add_help=False,
    )
    sub.add_parser(
        "show",
        help="show a profile: measured vs predicted time per module, pass, quota and batch, and the MAPE",
        add_help=False,
    )
    sub.add_parser(
        "plan",
        help="plan SM quotas, phases and micro-batches from a profile; write the plan and a timeline PNG",
        add_help=False,
    )
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    if args.command == "demo":
        from lightning_mosaic.demo import main as command
    elif args.command == "plan":
        from lightning_mosaic.plan_command import main as command
    elif args.command == "show":
        from lightning_mosaic.show import main as command
    else:
        parser.error(f"unknown command {argv[0]!r}")
    try:
        return command(argv[1:])
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # one line, exit 1; the traceback on request
        if os.environ.get(TRACEBACK):
            raise
        text = str(err).strip().splitlines()
        sys.stderr.write(
            f"lightning-mosaic {args.command}: error: {type(err).__name__}: {text[0] if text else ''}"
            f" ({TRACEBACK}=1 shows the traceback)\n"
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
