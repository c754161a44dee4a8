"""The ``hemaflow`` command: ``hemaflow status`` says where a workflow run stands;
``hemaflow features compact`` merges the Inception feature store's shards (``size``: what it
holds)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
    features = commands.add_parser(
        "features", help="the Inception feature store in the state folder (merge, size)"
    )
    actions = features.add_subparsers(dest="action", required=True)
    for action, text in (
        ("compact", "merge each namespace's shards into one (run when no job is running)"),
        ("size", "shards, features and bytes of each namespace"),
    ):
        parser_of = actions.add_parser(action, help=text, description=text)
        parser_of.add_argument(
            "folder",
            nargs="?",
            help="the feature store ($HEMAFLOW_STATE_DIR/features, else .hemaflow-state/features)",
        )
    return parser


def default_feature_folder() -> Path:
    """Where workflow jobs keep features: ``features`` in the state folder."""
    from hemaflow.jobs import state_root

    return state_root() / "features"


def features_command(action: str, folder: str | None) -> int:
    """``hemaflow features compact|size``: one line per namespace; 1 without a store."""
    from hemaflow.metrics.feature_store import FeatureStore, namespaces

    root = Path(folder) if folder is not None else default_feature_folder()
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such folder"
        print(f"hemaflow features {action}: no feature store at {root} ({what})", file=sys.stderr)
        return 1
    try:
        names = namespaces(root)
        if not names:
            print(f"{root}: no namespaces")
        for name in names:
            store = FeatureStore(root, name)
            print(store.compact() if action == "compact" else store.size(), flush=True)
    except OSError as error:  # a folder not writable, a full disk
        print(f"hemaflow features {action}: {error}", file=sys.stderr)
        return 1
    return 0


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
    elif args.command == "features":
        return features_command(args.action, args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
