"""Step 1: bring the dataset in (folder, archive or URL) and validate it."""

from typing import NamedTuple

from kfp.dsl import Dataset, Output

from components.base import component


@component
def ingest_and_validate(dataset_uri: str, source_version: str, dataset: Output[Dataset],
                        production_dataset_uri: str = ""
                        ) -> NamedTuple("IngestOutputs", [("fingerprint", str), ("num_classes", int)]):
    """Copy the dataset into the artifact and check its layout and every image.

    A bad dataset fails here with the DatasetError message, before any training.
    Metadata: source, fingerprint (sha256 of names and bytes), class names, counts.
    ``source_version`` (from the dataset_version step) is not read: it is part of the cache
    key, so the step is reused only while the source is unchanged.
    ``production_dataset_uri``: labelled production data (``loop export``) merged in, with its
    provenance (metadata ``production`` and ``provenance.json`` in the dataset).
    """
    from collections import namedtuple

    from components.steps import ingest_step, user_errors

    with user_errors():
        outcome = ingest_step(dataset_uri, dataset.path, production_dataset_uri)
    dataset.metadata.update(outcome.metadata(), source_version=source_version)
    outputs = namedtuple("IngestOutputs", ["fingerprint", "num_classes"])
    return outputs(outcome.fingerprint, outcome.num_classes)
