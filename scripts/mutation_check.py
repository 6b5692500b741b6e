"""Mutation testing (mutmut 3) of the code that decides the figures we publish.

Slow (minutes per small module on a 2-core CPU, much longer for the predictor and the
trainer): run it by hand, not in CI. Each surviving mutant is either killed by a new test or
explained as equivalent in docs/mutation.md.

mutmut finds code only under ``./``, ``src/`` or ``source/`` and names modules by their path
from there, so this script stages the package folder ``DKUXNetSegment/`` as ``src/`` in
``build/mutation/`` (ignored by git) together with ``Testing/``, writes a ``pyproject.toml``
there from the repository's ``[tool.pytest.ini_options]`` and ``[tool.mutmut]`` plus the
module to mutate and the tests that check it, and runs ``mutmut run`` there. Tests that start
a child process (``dkuxnet train`` in a subprocess) would run the unmutated code, so the
selections below are in-process tests only.

Usage (Python 3.11 or newer, for ``tomllib``)::

    .venv/bin/pip install -e '.[test,mutation]'
    .venv/bin/python scripts/mutation_check.py losses schedules
    .venv/bin/python scripts/mutation_check.py --all --workers 4
    .venv/bin/python scripts/mutation_check.py --list

Afterwards ``cd build/mutation/<target> && mutmut show <mutant>`` shows a mutant's diff.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    """One module to mutate (a path in the staged tree) and the tests that check it.

    Attributes:
        path: the module under ``src/``.
        tests: pytest arguments selecting its tests (paths under ``Testing/`` or node ids).
        functions: mutate only these functions (``name`` or ``Class.method``); all if empty.
    """

    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return self.path.removeprefix("src/").removesuffix(".py").replace("/", ".")

    def mutant_patterns(self) -> list[str]:
        """mutmut's names for the chosen functions' mutants (``fnmatch`` patterns)."""
        patterns = []
        for name in self.functions:
            if "." in name:
                cls, method = name.split(".")
                patterns.append(f"{self.module}.x\u01c1{cls}\u01c1{method}__mutmut_*")
            else:
                patterns.append(f"{self.module}.x_{name}__mutmut_*")
        return patterns


def _deselect(path: str, *tests: str) -> tuple[str, ...]:
    """pytest arguments that leave out ``tests`` of the file ``path``."""
    return tuple(arg for test in tests for arg in ("--deselect", f"{path}::{test}"))


TARGETS: dict[str, Target] = {
    "losses": Target(
        "src/dkuxnet/losses.py", ("Testing/test_numerics.py", "Testing/test_losses.py")
    ),
    "schedules": Target("src/dkuxnet/training/schedules.py", ("Testing/test_numerics.py",)),
    "plan": Target("src/dkuxnet/plan.py", ("Testing/test_plan.py",)),
    # the sliding window and the post-processing, not the I/O and resampling around them;
    # the uncertainty measures' oracle test, not the real-model and checkpoint-loading tests
    # (seconds each on every mutant, and they check loading, not the window's values)
    "predictor": Target(
        "src/dkuxnet/inference/predictor.py",
        (
            "Testing/test_sliding_window.py",
            "Testing/test_predictor.py",
            "Testing/test_uncertainty.py::test_measures_on_known_networks",
            *_deselect(
                "Testing/test_predictor.py",
                "test_real_tiny_model_on_odd_sizes",
                "test_from_checkpoint_file_and_run_folder",
                "test_foreign_checkpoint",
                "test_newer_checkpoint_format",
                "test_weights_that_do_not_fit_their_config",
            ),
        ),
        functions=(
            "keep_largest_component",
            "Predictor._sliding_window",
            "Predictor._predict_windows",
            "Predictor.label_from_probabilities",
        ),
    ),
    # the window count (moved out of the predictor, so the Slicer process needs no torch)
    "grid": Target(
        "src/dkuxnet/grid.py", ("Testing/test_predictor.py", "Testing/test_bad_inputs.py")
    ),
    # which checkpoint becomes best.pt, what a checkpoint holds and what a resume restores
    "trainer": Target(
        "src/dkuxnet/training/trainer.py",
        ("Testing/test_selection.py",),
        functions=("_improves", "_restore", "Trainer._save"),
    ),
    "data_folder": Target(
        "src/DKUXNetSegmentWeb/data_folder.py", ("Testing/test_web_data_folder.py",)
    ),
}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(name: str, table: dict[str, object]) -> str:
    lines = [f"[{name}]"] + [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def stage(target: Target, work: Path, timeout_multiplier: float | None = None) -> None:
    """A fresh ``work`` folder: ``src/`` (the package folder), ``Testing/``, ``pyproject.toml``.

    ``timeout_multiplier`` replaces mutmut's (15): a mutant's tests may run that many times
    their clean duration, plus one second, in wall-clock time, before it counts as a timeout.
    """
    if work.exists():
        shutil.rmtree(work)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pt")
    shutil.copytree(ROOT / "DKUXNetSegment", work / "src", ignore=ignore)
    shutil.copytree(ROOT / "Testing", work / "Testing", ignore=ignore)
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    mutmut = dict(settings["mutmut"])
    mutmut["only_mutate"] = [target.path]
    mutmut["pytest_add_cli_args_test_selection"] = list(target.tests)
    if timeout_multiplier is not None:
        mutmut["timeout_multiplier"] = timeout_multiplier
    text = _toml_table("tool.pytest.ini_options", settings["pytest"]["ini_options"])
    text += "\n" + _toml_table("tool.mutmut", mutmut)
    (work / "pyproject.toml").write_text(text, encoding="utf-8")


def run(
    name: str, target: Target, work: Path, workers: int, timeout_multiplier: float | None = None
) -> int:
    stage(target, work, timeout_multiplier)
    mutmut = Path(sys.executable).with_name("mutmut")
    command = [str(mutmut), "run", "--max-children", str(workers), *target.mutant_patterns()]
    print(f"== {name}: {target.path} against {' '.join(target.tests)}", flush=True)
    # one thread per worker: torch's thread pool does not survive a fork, and the CPU is
    # shared with the other workers
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.call(command, cwd=work, env=env)
    if code == 0:
        # every mutant that was tested and not killed, with its diff ("not checked": the
        # mutants of functions outside the target's, which mutmut lists too)
        results = subprocess.run(
            [str(mutmut), "results"], cwd=work, capture_output=True, text=True, check=False
        )
        survivors = [
            line.split(":")[0].strip()
            for line in results.stdout.splitlines()
            if line.strip() and not line.rstrip().endswith("not checked")
        ]
        for mutant in survivors:
            subprocess.call([str(mutmut), "show", mutant], cwd=work)
        print(f"== {name}: {len(survivors)} not killed", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", choices=[*TARGETS, []], metavar="TARGET")
    parser.add_argument("--all", action="store_true", help="every target")
    parser.add_argument("--list", action="store_true", help="print the targets and stop")
    parser.add_argument("--workers", type=int, default=1, help="mutants tested at once")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument(
        "--functions",
        nargs="+",
        metavar="NAME",
        help="mutate only these of the target's functions (name or Class.method)",
    )
    parser.add_argument(
        "--timeout-multiplier",
        type=float,
        help="mutmut's timeout_multiplier (default 15); raise it on a busy machine, where a "
        "mutant of fast tests otherwise times out waiting for the CPU",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, target in TARGETS.items():
            only = f" ({', '.join(target.functions)})" if target.functions else ""
            print(f"{name:12} {target.path}{only}\n{'':12} tests: {' '.join(target.tests)}")
        return 0
    names = list(TARGETS) if args.all else args.targets
    if not names:
        parser.error("name targets (see --list) or give --all")
    targets = {name: TARGETS[name] for name in names}
    if args.functions:
        targets = {name: replace(t, functions=tuple(args.functions)) for name, t in targets.items()}
    codes = [
        run(name, target, args.work / name, args.workers, args.timeout_multiplier)
        for name, target in targets.items()
    ]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
