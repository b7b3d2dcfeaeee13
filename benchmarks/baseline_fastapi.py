"""The seed-style baseline: a FastAPI app running the PyTorch model once per request.

This is the course's ``fastapi_pt/app.py`` (eval-online-chi) reduced to what affects
speed: ``POST /predict`` with ``{"image": "<base64>"}`` -> decode, preprocess, PyTorch
eager forward at batch 1, softmax, argmax -> ``{"prediction", "probability"}``. A
synchronous endpoint, so FastAPI runs requests on its thread pool, as the seed does.
Two deliberate differences: the project's own preprocessing (so the benchmark compares
serving architectures, not resize code), and bad input gets a 400 (the seed's handler
crashed on an undefined ``status`` and answered 500).

Run: ``python benchmarks/baseline_fastapi.py --checkpoint model.pt --port 8000``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from gourmetgram.constants import HOST
from gourmetgram.errors import BadInput
from gourmetgram.model import load_checkpoint
from gourmetgram.preprocessing import preprocess_bytes


class ImageRequest(BaseModel):
    image: str  # base64-encoded JPEG/PNG


class PredictionResponse(BaseModel):
    prediction: str
    probability: float


def create_app(checkpoint: str) -> FastAPI:
    """The app with the model loaded once at start-up, as the seed does."""
    model = load_checkpoint(checkpoint).eval()
    classes = list(model.spec.class_names)
    size = model.spec.image_size
    app = FastAPI(title="Food11 baseline (seed-style PyTorch per request)")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict", response_model=PredictionResponse)
    def predict(request: ImageRequest) -> PredictionResponse:
        try:
            data = base64.b64decode(request.image, validate=True)
            x = torch.from_numpy(preprocess_bytes(data, size)).unsqueeze(0)
        except (binascii.Error, ValueError) as exc:
            raise HTTPException(status_code=400, detail=f"image is not valid base64: {exc}") from None
        except BadInput as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        with torch.no_grad():
            probabilities = torch.softmax(model(x), dim=1)
            index = int(torch.argmax(probabilities, 1).item())
        return PredictionResponse(prediction=classes[index], probability=float(probabilities[0, index]))

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a gourmetgram checkpoint (.pt)")
    p.add_argument("--host", default=HOST)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch intra-op threads (0: PyTorch's default, every core); the benchmark "
                   "tunes this: with 1, concurrent requests use the cores side by side")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        app = create_app(args.checkpoint)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
