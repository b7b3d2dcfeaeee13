"""Image embeddings from the served model's own feature extractor (ONNX Runtime).

The detector compares what the model *sees*: the pooled backbone features of the same
network Triton serves, computed from the same preprocessing as training and serving
(:func:`gourmetgram.preprocessing.preprocess_batch`). No PyTorch at serving time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from gourmetgram.bundle import Bundle
from gourmetgram.constants import FEATURES_NAME, INPUT_NAME
from gourmetgram.errors import BadInput
from gourmetgram.preprocessing import InvalidImageError, preprocess_bytes


def read_image_size(bundle_dir: str | Path) -> int:
    """The model's input size, from ``<bundle>/model_spec.json`` (contract 1)."""
    return Bundle(Path(bundle_dir)).image_size()


class Embedder:
    """Bytes -> (N, D) float32 features, one ONNX Runtime call per batch."""

    def __init__(self, bundle_dir: str | Path, threads: int = 0, max_batch: int = 64):
        import onnxruntime as ort

        bundle_dir = Path(bundle_dir)
        model_path = Bundle(bundle_dir).feature_extractor_path
        if not model_path.is_file():
            raise BadInput(f"{model_path} does not exist; export the model bundle first")
        self.image_size = read_image_size(bundle_dir)
        self.max_batch = max_batch
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in names or FEATURES_NAME not in outputs:
            raise BadInput(
                f"{model_path} must have input {INPUT_NAME!r} and output {FEATURES_NAME!r}; "
                f"it has inputs {sorted(names)} and outputs {sorted(outputs)}"
            )
        self.dim = int(self.session.get_outputs()[0].shape[-1]) if isinstance(
            self.session.get_outputs()[0].shape[-1], int) else None

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed (N, 3, H, W) float32 -> (N, D) features, in chunks of ``max_batch``."""
        if len(batch) == 0:
            return np.zeros((0, self.dim or 0), np.float32)
        parts = [
            self.session.run([FEATURES_NAME], {INPUT_NAME: np.ascontiguousarray(batch[i:i + self.max_batch],
                                                                                 dtype=np.float32)})[0]
            for i in range(0, len(batch), self.max_batch)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def preprocess(self, images: Sequence[bytes]) -> tuple[np.ndarray, list[int]]:
        """Decode what decodes; return the batch and the indices of the images kept.

        One bad image in a logged request must not drop its neighbours, so decoding
        errors are skipped here (and counted by the caller) rather than raised.
        """
        arrays, kept = [], []
        for i, data in enumerate(images):
            try:
                arrays.append(preprocess_bytes(data, self.image_size))
                kept.append(i)
            except InvalidImageError:
                continue
        if not arrays:
            return np.zeros((0, 3, self.image_size, self.image_size), np.float32), kept
        return np.stack(arrays), kept

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> features; raises :class:`InvalidImageError` on a bad image."""
        from gourmetgram.preprocessing import preprocess_batch

        return self.embed_arrays(preprocess_batch(list(images), self.image_size))
