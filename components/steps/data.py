"""Ingest + validate: the dataset artifact every later step reads."""

from __future__ import annotations

import shutil
from pathlib import Path

from components.steps.outcomes import IngestOutcome
from components.steps.runtime import link_or_copy
from gourmetgram.constants import SPLITS
from gourmetgram.errors import DatasetError


def ingest_step(dataset_uri: str, out_dir: str | Path, production_dataset_uri: str = "") -> IngestOutcome:
    """Bring ``dataset_uri`` (folder, archive, URL) into ``out_dir``, validate it, describe it.

    The dataset *is* the artifact, so every later step (another pod on the cluster) gets it
    from the artifact store; locally the copy is hard links. ``production_dataset_uri``: a
    labelled production dataset from ``gourmetgram loop export``, merged in (its provenance in
    ``provenance.json``, logged to MLflow by the training step).
    """
    from gourmetgram.data.ingest import ingest
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.data.merge import merge_production

    if not dataset_uri or not dataset_uri.strip():
        raise DatasetError("dataset_uri is empty; pass a dataset folder, archive or http(s) URL")
    out = Path(out_dir)
    work = out.parent / f".{out.name}.ingest"
    try:
        root = ingest(dataset_uri.strip(), work)
        if out.exists():
            shutil.rmtree(out)
        if Path(root).resolve().is_relative_to(work.resolve()):
            shutil.move(str(root), str(out))  # extracted/downloaded: ours to move
        else:
            shutil.copytree(root, out, copy_function=link_or_copy, symlinks=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    provenance = None
    if production_dataset_uri and production_dataset_uri.strip():
        base_fp = validate_dataset(out, check_images=False, progress=False).fingerprint
        try:
            prod_root = ingest(production_dataset_uri.strip(), work)
            provenance = merge_production(out, prod_root, production_dataset_uri.strip(), dataset_uri, base_fp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        p = provenance["production"]
        print(f"production data {production_dataset_uri}: {p['images']} labelled image(s) {p['per_split']}, "
              f"label sources {p['label_sources']}, sha256 {p['fingerprint'][:12]}", flush=True)
    report = validate_dataset(out, check_images=True, progress=False)
    print(f"dataset {dataset_uri}: {report.summary()}", flush=True)
    return IngestOutcome(
        source=dataset_uri, fingerprint=report.fingerprint, class_names=list(report.class_names),
        counts={split: list(report.counts[split]) for split in SPLITS},
        images={split: report.total(split) for split in SPLITS}, summary=report.summary(),
        production=None if provenance is None else {k: v for k, v in provenance["production"].items()
                                                    if k != "sample_ids"})

