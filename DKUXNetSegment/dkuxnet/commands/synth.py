"""``dkuxnet synth OUT [N]``: write synthetic left-atrium phantoms in the decathlon layout."""

from __future__ import annotations

import argparse
import time

from dkuxnet.errors import InputError

HELP = "write synthetic left-atrium MR phantoms with labels (decathlon layout) for demos and tests"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (imagesTr/, labelsTr/, imagesTs/, labelsTs/)")
    parser.add_argument(
        "n",
        nargs="?",
        type=int,
        default=None,
        help="total number of cases; the unlabeled count becomes N - labeled - test "
        "(default: use --unlabeled)",
    )
    parser.add_argument("--labeled", type=int, default=4, help="labeled training cases (4)")
    parser.add_argument("--unlabeled", type=int, default=16, help="unlabeled training cases (16)")
    parser.add_argument("--test", type=int, default=6, help="test cases with labels (6)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=(48, 96, 96),
        help="array size of each volume (48 96 96)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--format", choices=("nii.gz", "nrrd"), default="nii.gz", help="file format (nii.gz)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")


def run(args: argparse.Namespace) -> int:
    from dkuxnet.synthetic import write_synthetic_dataset

    unlabeled = args.unlabeled
    if args.n is not None:
        unlabeled = args.n - args.labeled - args.test
        if unlabeled < 0:
            raise InputError(
                f"N={args.n} is smaller than --labeled {args.labeled} + --test {args.test}"
            )
    if args.labeled < 1 or args.test < 0 or unlabeled < 0 or min(args.shape) < 8:
        raise InputError("need --labeled >= 1, --test >= 0, --unlabeled >= 0, shape >= 8")
    start = time.perf_counter()
    split = write_synthetic_dataset(
        args.out,
        n_labeled=args.labeled,
        n_unlabeled=unlabeled,
        n_test=args.test,
        shape=tuple(args.shape),
        seed=args.seed,
        overwrite=args.overwrite,
        image_format="." + args.format,
    )
    print(f"{args.out}: {split.summary()} ({time.perf_counter() - start:.1f} s)")
    return 0
