"""``dkuxnet la-import SRC OUT``: the 2018 LA challenge data in our layout, standard split."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = (
    "import the 2018 left-atrium challenge data (case folders with mri_norm2.h5, or "
    "lgemri.nrrd + laendo.nrrd) with the standard 80/20 split and N labeled cases"
)


def _read_list(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="folder containing the case folders (searched 4 levels deep)")
    parser.add_argument("out", help="output folder (decathlon layout + datalist.json)")
    parser.add_argument(
        "--labeled",
        type=int,
        default=8,
        help="first N cases of the train list keep their labels (8 = 10 %%, 16 = 20 %%)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the crop margins of raw data")
    parser.add_argument(
        "--format", choices=("nii.gz", "nrrd"), default="nii.gz", help="file format (nii.gz)"
    )
    parser.add_argument("--train-list", help="own train list (default: the standard one)")
    parser.add_argument("--test-list", help="own test list (default: the standard one)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dkuxnet.data import import_la

    bar = tqdm(desc="cases", unit="case", disable=None, file=sys.stderr)

    def progress(done: int, total: int, case: str) -> None:
        bar.total = total
        bar.set_postfix_str(case, refresh=False)
        bar.update(done - bar.n)

    start = time.perf_counter()
    with bar:
        split = import_la(
            args.src,
            args.out,
            labeled=args.labeled,
            seed=args.seed,
            overwrite=args.overwrite,
            image_format="." + args.format,
            train_cases=_read_list(args.train_list) if args.train_list else None,
            test_cases=_read_list(args.test_list) if args.test_list else None,
            progress=progress,
        )
    print(f"{args.out}: {split.summary()} ({time.perf_counter() - start:.0f} s)")
    print("labels of the unlabeled cases are kept aside in labelsTr_hidden/ (never trained on)")
    return 0
