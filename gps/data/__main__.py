"""Command line: ``python -m gps.data verify ...`` and ``python -m gps.data list``.

Exit status of ``verify``: 0 when no problems were found, 1 when there are problems, 2 for an
invalid command line (including an unknown dataset name).
"""

from __future__ import annotations

import argparse
import sys

from gps.data.registry import BENCHMARKS, list_tasks
from gps.data.verify import PROTOCOLS, verify_task


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gps.data", description="Check and list the datasets GPS trains on."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    verify = commands.add_parser(
        "verify", help="check a task's split files and images and print a report"
    )
    verify.add_argument(
        "--dataset",
        required=True,
        help="task name, e.g. vtab/cifar100, fgvc/cars, demo/digits, custom",
    )
    verify.add_argument(
        "--data-dir",
        required=True,
        help="benchmark root containing the task folder, or the task folder",
    )
    verify.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="final",
        help="final: train on train+val, evaluate on test; tune: train on train, evaluate on val",
    )
    verify.add_argument(
        "--decode", action="store_true", help="also decode every image (slow for large sets)"
    )
    verify.add_argument(
        "--num-classes", type=int, default=None, help="expected number of classes (custom data)"
    )

    listing = commands.add_parser("list", help="list the registered tasks")
    listing.add_argument("--benchmark", choices=BENCHMARKS, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for spec in list_tasks(args.benchmark):
            group = spec.group or "-"
            print(
                f"{spec.name:28s} {spec.num_classes:4d} classes  folder {spec.folder or '-':22s} {group}"
            )
        return 0

    try:
        report = verify_task(
            args.dataset, args.data_dir, args.protocol, args.num_classes, args.decode
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
