"""Train the bundled left-atrium model on the 2018 LA challenge scans (resumable).

    python scripts/train_default_model.py --la-data "DTC/data/2018LA_Seg_Training Set" \
        --work /somewhere/outside/the/repo [--iterations 1500] [--device auto]

Steps (each skipped when its output exists, so the script resumes after any interruption):
1. ``import_la``: the standard 80/20 split, all 80 train-list scans labeled.
2. Train at ``--spacing`` mm (1.25 by default: 8x fewer voxels than the 0.625 mm originals,
   what makes CPU training and whole-scan prediction affordable). The trainer resamples the
   scans once into the run folder; the predictor resamples inputs the same way and maps
   predictions back to the input grid.
3. Train with the held-out last ``val_fraction`` of the train list for checkpoint selection
   (``--resume`` of an existing run folder is automatic).
4. Export ``best.pt`` as a model-only file (``--export``).

The test list is never used here; ``dkuxnet evaluate`` measures it afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.data import import_la, load_dataset
from dkuxnet.training import Trainer
from dkuxnet.training.checkpoint import export_model, load_checkpoint

log = logging.getLogger("train_default_model")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--la-data", required=True, type=Path)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--spacing", type=float, default=1.25)
    p.add_argument("--mode", default="supervised", choices=("supervised", "dual"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", type=Path, help="write the model-only file here when done")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    imported = args.work / "imported"
    if not (imported / "datalist.json").exists():
        if imported.exists():
            shutil.rmtree(imported)
        import_la(args.la_data, imported, labeled=80)

    base = TrainConfig.preset("lite")
    config = TrainConfig(
        model=ModelConfig.preset("lite"),
        data=base.data.replace(
            patch_size=(32, 64, 80),
            labeled_batch=2,
            unlabeled_batch=2,
            target_spacing=(args.spacing,) * 3,
        ),
        training=base.training.replace(
            mode=args.mode,
            iterations=args.iterations,
            val_every=100,
            checkpoint_every=20,
            val_fraction=0.1,
            seed=args.seed,
            lr=1e-3,
        ),
        inference=base.inference,
    )
    run = args.work / f"run_{args.mode}"
    data = load_dataset(imported)  # the trainer resamples to data.target_spacing (cached in run/)
    resume = (run / "last.pt").exists()
    Trainer(config, data, run, device=args.device, resume=resume).run()
    if args.export:
        record = load_checkpoint(run / "best.pt")
        export_model(
            record,
            args.export,
            training_note=json.dumps(
                {"data": "2018 LA challenge, 80 train-list scans", "spacing_mm": args.spacing}
            ),
        )
        log.info("exported %s", args.export)


if __name__ == "__main__":
    main()
