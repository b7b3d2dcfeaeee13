"""The classifier: a torchvision MobileNetV2 with an 11-way (or N-way) head.

Checkpoints are a state_dict plus :class:`ModelSpec`, never a pickled module, so they
load with ``torch.load(weights_only=True)`` and carry what serving needs (class names,
input size).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from gourmetgram.constants import ARCHITECTURES
from gourmetgram.errors import BadInput


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network and serve it."""

    class_names: tuple[str, ...]
    image_size: int = 224
    arch: str = "mobilenet_v2"
    width_mult: float = 1.0
    dropout: float = 0.2

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["class_names"] = tuple(d["class_names"])
        return cls(**d)


class Classifier(nn.Module):
    """MobileNetV2 backbone + dropout + linear head; ``embed`` gives the pooled features."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.arch not in ARCHITECTURES:
            raise BadInput(f"unknown architecture {spec.arch!r}; choose one of {ARCHITECTURES}")
        self.spec = spec
        net = models.mobilenet_v2(weights=None, width_mult=spec.width_mult)
        self.features = net.features
        self.feature_dim = net.last_channel
        self.classifier = nn.Sequential(
            nn.Dropout(spec.dropout), nn.Linear(self.feature_dim, spec.num_classes)
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class FeatureExtractor(nn.Module):
    """The classifier's embedding alone: what the drift detector compares."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.embed(x)


def build_model(spec: ModelSpec, pretrained_weights: str | Path | None = None) -> Classifier:
    """Build the network; optionally start the backbone from a local weights file.

    ``pretrained_weights`` is a torchvision MobileNetV2 state_dict on disk (for example
    ImageNet weights copied into the cluster's object store); nothing is downloaded.
    """
    model = Classifier(spec)
    if pretrained_weights:
        path = Path(pretrained_weights)
        if not path.is_file():
            raise BadInput(f"pretrained weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        backbone = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        if not backbone:
            raise BadInput(f"{path} holds no MobileNetV2 'features.*' weights")
        missing, unexpected = model.features.load_state_dict(backbone, strict=False)
        if unexpected or len(missing) == len(model.features.state_dict()):
            raise BadInput(
                f"{path} does not match a MobileNetV2 with width_mult={spec.width_mult}"
            )
    return model


def save_checkpoint(model: Classifier, path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"spec": model.spec.to_dict(), "state_dict": model.state_dict(), "extra": extra or {}},
        path,
    )
    return path


def load_checkpoint(path: str | Path) -> Classifier:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"model checkpoint {path} does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = Classifier(ModelSpec.from_dict(blob["spec"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def pick_device(requested: str = "auto") -> torch.device:
    """CPU by default, CUDA when present (``auto``) or when asked for."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise BadInput("device 'cuda' was requested but no CUDA device is available")
    return torch.device(requested)


def predict_logits(model: nn.Module, batch, device: torch.device | None = None) -> torch.Tensor:
    """Logits for a (N, 3, H, W) float array/tensor, without gradients."""
    device = device or next(model.parameters()).device
    x = torch.as_tensor(batch, dtype=torch.float32, device=device)
    with torch.inference_mode():
        return model(x).cpu()
