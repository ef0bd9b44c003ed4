"""`celltune data ...`: synthesize, download, convert and inspect CTC datasets.

Each handler only parses arguments and calls a typed function from ``celltune.data_prep``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CTC_BASE_URL = "https://data.celltrackingchallenge.net/training-datasets"


def add_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="synthesize, download, convert and inspect CTC datasets")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    synth = sub.add_parser("synth", help="generate a synthetic dataset in the CTC training layout")
    synth.add_argument("out", type=Path, help="folder that receives <name>/01, 01_GT, 01_ST, ...")
    synth.add_argument("--name", default="Synth-2D", help="dataset folder name (default: Synth-2D)")
    synth.add_argument("--ndim", type=int, choices=(2, 3), default=2, help="2D or 3D frames (default 2)")
    synth.add_argument("--sequences", type=int, default=2, help="number of sequences 01, 02, ... (default 2)")
    synth.add_argument("--frames", type=int, default=12, help="frames per sequence (default 12)")
    synth.add_argument("--size", type=int, default=128, help="image height and width in pixels (default 128)")
    synth.add_argument("--depth", type=int, default=16, help="z slices for --ndim 3 (default 16)")
    synth.add_argument("--cells", type=int, default=8, help="cells in the first frame (default 8)")
    synth.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8", help="raw dtype (default uint8)")
    synth.add_argument("--gt-every", type=int, default=3, help="GT SEG on every k-th frame (default 3)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--gt-slices", action="store_true",
                       help="3D only: annotate one z-slice per GT frame (man_seg_TTT_ZZZ.tif) instead of volumes")
    synth.set_defaults(handler=_synth)

    prep = sub.add_parser("prep", help="convert CTC training data into zarr stores and a Parquet frame index")
    prep.add_argument("src", type=Path, help="folder holding CTC datasets (<DS>/01, <DS>/01_GT, ...)")
    prep.add_argument("--out", type=Path, required=True, help="output folder for <DS>.zarr and index.parquet")
    prep.add_argument("--datasets", default=None, help="comma-separated dataset names (default: all found)")
    prep.add_argument("--address", default=None, help="Ray cluster address (default: local Ray on 127.0.0.1)")
    prep.add_argument("--force", action="store_true", help="rebuild stores even when up to date")
    prep.add_argument("--seed", type=int, default=0, help="seed of the train/val splits (default 0)")
    prep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    prep.set_defaults(handler=_prep)

    info = sub.add_parser("info", help="print a table of what the stores in a folder hold")
    info.add_argument("dir", type=Path, help="folder written by `celltune data prep`")
    info.set_defaults(handler=_info)

    download = sub.add_parser("download", help="download an official CTC training dataset by name")
    download.add_argument("name", help="dataset name, e.g. DIC-C2DH-HeLa")
    download.add_argument("--out", type=Path, default=Path("data/ctc"), help="destination folder (default data/ctc)")
    download.add_argument("--base-url", default=DEFAULT_CTC_BASE_URL, help="archive base URL (default: CTC site)")
    download.add_argument("--sha256", default=None,
                          help="expected sha256 of the archive (default: none; member CRC-32s are always checked)")
    download.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    download.set_defaults(handler=_download)


def _synth(args: argparse.Namespace) -> int:
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    spec = SynthSpec(
        name=args.name, ndim=args.ndim, sequences=args.sequences, frames=args.frames, size=args.size,
        depth=args.depth, cells=args.cells, dtype=args.dtype, gt_every=args.gt_every, seed=args.seed,
        gt_slices=args.gt_slices,
    )
    path = generate_dataset(args.out, spec)
    print(f"wrote {path}")
    return 0


def _prep(args: argparse.Namespace) -> int:
    from celltune.data_prep.prep import prep_datasets

    names = [n.strip() for n in args.datasets.split(",") if n.strip()] if args.datasets else None
    report = prep_datasets(
        args.src, args.out, datasets=names, address=args.address, force=args.force, seed=args.seed,
        show_progress=not args.no_progress,
    )
    print(report.summary())
    return 0


def _info(args: argparse.Namespace) -> int:
    from celltune.data_prep.info import describe_stores

    print(describe_stores(args.dir))
    return 0


def _download(args: argparse.Namespace) -> int:
    from celltune.data_prep.download import download_dataset

    path = download_dataset(
        args.name, args.out, base_url=args.base_url, sha256=args.sha256, show_progress=not args.no_progress
    )
    print(f"wrote {path}")
    return 0
