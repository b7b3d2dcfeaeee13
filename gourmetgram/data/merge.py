"""Merge a labelled production dataset (``gourmetgram loop export``) into a base dataset.

The export is in the same Food-11 layout, its files named ``prod_<content hash>.<ext>`` and
described by its ``lineage.json`` (sample, label, label source, the model that served it).
Every production image keeps the split the export gave it (by content hash: never in two
splits), so the merged evaluation split holds the base's images *and* a held-out production
evaluation set. A file the base already has at the same path (an export made with ``--base``)
is skipped when its bytes are equal and refused when they differ.

The provenance (what was merged, how many per split and label source, both fingerprints)
is written to ``provenance.json`` at the dataset root, where the training step logs it to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from gourmetgram.constants import CLASS_NAMES_FILE, SPLITS
from gourmetgram.errors import DatasetError

PROVENANCE_FILE = "provenance.json"
EXPORT_LINEAGE = "lineage.json"  # gourmetgram.loop.export.LINEAGE_FILE (the core data package stays below loop)
MERGED_LINEAGE = "production_lineage.json"  # gourmetgram.evaluation.differential.LINEAGE_FILE


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_fingerprint(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path.relative_to(root)).encode() + b"\0" + _sha(path).encode())
    return h.hexdigest()


def _class_names(root: Path) -> list[str] | None:
    path = root / CLASS_NAMES_FILE
    return [n.strip() for n in path.read_text().splitlines() if n.strip()] if path.is_file() else None


def merge_production(base: str | Path, production: str | Path, source: str = "",
                     base_source: str = "", base_fingerprint: str = "") -> dict:
    """Copy ``production``'s images into ``base`` (in place); returns (and writes) the provenance."""
    base, production = Path(base), Path(production)
    names_b, names_p = _class_names(base), _class_names(production)
    if names_b is not None and names_p is not None and names_b != names_p:
        raise DatasetError(f"the production dataset's classes {names_p} differ from the base dataset's {names_b}")
    lineage_path = production / EXPORT_LINEAGE
    if not lineage_path.is_file():
        raise DatasetError(f"{production} has no {EXPORT_LINEAGE}: pass a folder written by `gourmetgram loop export`")
    try:
        lineage = json.loads(lineage_path.read_text())
        samples = list(lineage["samples"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{lineage_path} is not an export lineage: {exc}") from None
    files = [production / s["file"] for s in samples if (production / s["file"]).is_file()]
    missing = len(samples) - len(files)
    if missing:
        raise DatasetError(f"{missing} file(s) named in {lineage_path} are missing from {production}")
    added: Counter[str] = Counter()
    skipped = 0
    for src in files:
        rel = src.relative_to(production)
        if rel.parts[0] not in SPLITS:
            raise DatasetError(f"{rel} is not under {', '.join(SPLITS)}")
        dst = base / rel
        if dst.exists():
            if _sha(dst) != _sha(src):
                raise DatasetError(f"{rel} exists in the base dataset with other content")
            skipped += 1
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        added[rel.parts[0]] += 1
    shutil.copy2(lineage_path, base / MERGED_LINEAGE)
    provenance = {
        "base": {"source": base_source, "fingerprint": base_fingerprint},
        "production": {
            "source": source or str(production), "fingerprint": files_fingerprint(production, files),
            "images": len(files), "added": dict(added), "already_in_base": skipped,
            "per_split": dict(Counter(s.get("split") for s in samples)),
            "label_sources": dict(Counter(s.get("label_source") for s in samples)),
            "model_versions": dict(Counter(str(s.get("model_version")) for s in samples)),
            "sample_ids": [s.get("sample_id") for s in samples],
            "export_created_at": lineage.get("created_at"),
        },
    }
    (base / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1))
    return provenance
