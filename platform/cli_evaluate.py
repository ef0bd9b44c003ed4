"""`celltune evaluate`: score CTC result folders (SEG, DET, TRA, OP_CSB, OP_CTB) with py-ctcmetrics.

The handler only parses arguments and calls :func:`celltune.platform.evaluate.evaluate_results`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_LAYOUT = """\
layouts:
  one sequence:  --res DS/01_RES --gt DS/01_GT   (or --gt DS)
  a dataset:     --res DIR_WITH_NN_RES --gt DIR_WITH_NN_GT  (every NN_RES is scored against NN_GT)
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate", help="score CTC result folders against the ground truth (SEG, DET, TRA, OP_CSB, OP_CTB)",
        epilog=_LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--res", type=Path, required=True, help="a NN_RES folder or a folder of NN_RES folders")
    parser.add_argument("--gt", type=Path, required=True, help="a NN_GT folder or a folder of NN_GT folders")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the scores to OUT")
    parser.add_argument("--no-seg", action="store_true", help="skip SEG (and OP_CSB, OP_CTB)")
    parser.add_argument("--threads", type=int, default=0,
                        help="processes for py-ctcmetrics' mask matching (default 0: one per CPU)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from celltune.data_prep.errors import UserInputError
    from celltune.platform.evaluate import evaluate_results

    if args.threads < 0:
        raise UserInputError(f"--threads {args.threads}: must be >= 0")
    table = evaluate_results(args.res, args.gt, seg=False if args.no_seg else None, threads=args.threads,
                             show_progress=not args.no_progress)
    print(table.format())
    if args.json is not None:
        table.write_json(args.json)
        print(f"wrote {args.json}")
    return 0
