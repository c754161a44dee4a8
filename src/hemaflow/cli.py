"""The ``hemaflow`` command: ``hemaflow status`` says where a workflow run stands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hemaflow.status import ACTIVE_SECONDS, status_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hemaflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser(
        "status",
        help="what has run, what is left, and the last progress line of each running job",
    )
    status.add_argument(
        "workdir", nargs="?", default=".", help="the workflow's working directory (.)"
    )
    status.add_argument("--results", default="results", help="results folder (results)")
    status.add_argument("--logs", default="logs", help="job log folder (logs)")
    status.add_argument(
        "--active-seconds",
        type=float,
        default=ACTIVE_SECONDS,
        help=f"a log written this recently counts as running ({ACTIVE_SECONDS:.0f})",
    )
    status.add_argument(
        "--plan",
        action="store_true",
        help="also ask Snakemake (a dry-run) which jobs are left",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "status":
        text = status_report(
            args.workdir,
            args.results,
            args.logs,
            active_seconds=args.active_seconds,
            plan=args.plan,
        )
        try:
            print(text)
        except BrokenPipeError:  # `hemaflow status | head`
            sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
