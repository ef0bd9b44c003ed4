"""Build what ``benchmarks/gpu_check.sh`` needs on the accelerator machine, which has no network and lacks
zarr, pydantic and friends: their Python 3.12 wheels, and a real-data subset as celltune stores.

The subset is each shared CTC dataset's first ``--frames`` frames of every sequence (GT and ST linked, not
copied; man_track.txt cut there), prepared by ``celltune data prep``. The bundle goes to ``gpu_bundle/`` (git
ignores it; name it in the device run's ``carry``). Nothing of the data is committed.

    .venv/bin/python benchmarks/make_gpu_bundle.py --data ../shared/data/ctc [--frames 16] [--out gpu_bundle]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DATASETS = ("DIC-C2DH-HeLa", "Fluo-N2DH-GOWT1", "Fluo-N2DH-SIM+")
# What celltune's Ray-free, MLflow-free path imports beyond the machine's torch, numpy, scipy, scikit-image,
# tifffile, safetensors and pyarrow, pinned to the versions tested here.
WHEELS = ("zarr", "numcodecs", "google-crc32c", "donfig", "pydantic", "pydantic-core", "annotated-types",
          "typing-inspection", "typing-extensions", "pyyaml", "tqdm", "packaging")
LIMIT_MB = 56  # the device tool carries 64 MiB with the code


def pinned(names: tuple[str, ...]) -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in names]


def download_wheels(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                    "--dest", str(folder), *pinned(WHEELS)], check=True)


def head_of_dataset(source: Path, target: Path, frames: int) -> Path:
    """The first ``frames`` frames of every sequence of ``source`` (raw, GT and ST), linked under ``target``."""
    folder = target / source.name
    for sequence in sorted(p.name for p in source.iterdir() if p.is_dir() and p.name.isdigit()):
        (folder / sequence).mkdir(parents=True)
        for path in (source / sequence).glob("t*.tif"):
            if int(path.stem[1:]) < frames:
                (folder / sequence / path.name).symlink_to(path.resolve())
        for kind, sub, prefix in (("GT", "SEG", "man_seg"), ("GT", "TRA", "man_track"), ("ST", "SEG", "man_seg")):
            src = source / f"{sequence}_{kind}" / sub
            if not src.is_dir():
                continue
            (folder / f"{sequence}_{kind}" / sub).mkdir(parents=True)
            for path in src.glob(f"{prefix}*.tif"):
                digits = path.stem.removeprefix(prefix).lstrip("_").split("_")[0]
                if digits.isdigit() and int(digits) < frames:
                    (folder / f"{sequence}_{kind}" / sub / path.name).symlink_to(path.resolve())
            if sub == "TRA":
                rows = []
                for line in (src / "man_track.txt").read_text().splitlines():
                    if line.strip():
                        label, begin, end, parent = map(int, line.split())
                        if begin < frames:
                            rows.append(f"{label} {begin} {min(end, frames - 1)} {parent if parent else 0}")
                (folder / f"{sequence}_{kind}" / sub / "man_track.txt").write_text("\n".join(rows) + "\n")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared CTC datasets")
    parser.add_argument("--frames", type=int, default=16, help="frames per sequence (default 16: about 51 MiB)")
    parser.add_argument("--out", type=Path, default=Path("gpu_bundle"))
    parser.add_argument("--no-wheels", action="store_true", help="only the stores")
    args = parser.parse_args()
    missing = [name for name in DATASETS if not (args.data / name).is_dir()]
    if missing:
        parser.error(f"--data {args.data}: missing {', '.join(missing)}")
    shutil.rmtree(args.out, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="celltune-gpu-bundle-") as scratch:
        for name in DATASETS:
            head_of_dataset(args.data / name, Path(scratch) / "ctc", args.frames)
        subprocess.run([sys.executable, "-m", "celltune.platform", "data", "prep", str(Path(scratch) / "ctc"),
                        "--out", str(args.out / "stores")], check=True)
    if not args.no_wheels:
        download_wheels(args.out / "wheels")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**20
    print(f"{args.out}: {size:.1f} MiB" + (f" (over the {LIMIT_MB} MiB this tool aims for)" if size > LIMIT_MB else ""))
    return 0 if size <= LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
