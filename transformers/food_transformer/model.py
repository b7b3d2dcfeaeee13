"""The KServe transformer: images in, Food-11 labels out, Triton (v2) in between.

preprocess: validate the request (JSON v1/v2 with base64, v2 binary BYTES, or the raw image
as ``application/octet-stream``), decode every image with the SAME functions training uses
(:func:`gourmetgram.preprocessing.preprocess_bytes`); concurrent requests are decoded together
in one executor call (:mod:`food_transformer.batching`).
predict: the decoded images of concurrent requests go to Triton as ONE v2 request (input
``input`` FP32 [N, 3, H, W], binary tensor extension in and out, :mod:`food_transformer.v2binary`)
while the next ones are decoded; with ``--protocol grpc-v2`` kserve's gRPC client sends each
request's batch. Transport failures and an unavailable predictor become HTTP 503.
postprocess: the bundle's calibration (:mod:`gourmetgram.calibration`: softmax of the logits
divided by the fitted temperature, the energy score and the OOD flag), class names, top-k; the
v1 API answers ``{"predictions": [...]}`` with ``ood_score`` and ``in_distribution`` next to
label, class index, confidence and top-k; the v2 API a v2 response with ``label``/``class_index``/
``confidence``/``ood_score``/``in_distribution`` outputs. Each prediction also enters the
revision's rolling label-free accuracy estimate (:mod:`gourmetgram.estimation`, exported by
:mod:`food_transformer.metrics`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Dict, Sequence

import aiohttp
import grpc
import httpx
import numpy as np
from kserve import Model
from kserve.errors import InferenceError, InvalidInput, ServerNotReady
from kserve.predictor_config import PredictorConfig
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from food_transformer import metrics, v2binary
from food_transformer.batching import Coalescer
from food_transformer.spec import PartialSpec, ServingSpec, fill_from_metadata
from food_transformer.validation import (
    DEFAULT_MAX_BATCH,
    is_raw_image_request,
    parse_raw_body,
    parse_v1_body,
    parse_v2_request,
)
from gourmetgram.calibration import Calibration, Scored
from gourmetgram.constants import INPUT_NAME, OUTPUT_NAME
from gourmetgram.errors import BadInput
from gourmetgram.estimation import RollingEstimate
from gourmetgram.jsonlog import inference_id_of, log_json
from gourmetgram.preprocessing import InvalidImageError, preprocess_bytes

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 3
# Most images in one coalesced predictor call: Triton's max_batch_size in the demo config; a
# single request larger than this is still sent whole (as before coalescing).
DEFAULT_COALESCE_IMAGES = 32
# Recent predictions behind the label-free accuracy estimate (at most an hour old): about a
# 2-point interval half-width at 95% accuracy, 4 points at 80%.
DEFAULT_ESTIMATE_WINDOW = 500
METADATA_TIMEOUT_S = 5.0
# Predictor HTTP answers that mean "not available right now" rather than "bad request".
_UNAVAILABLE_STATUS = {404, 429, 502, 503, 504}
# What a call to the predictor fails with when it is not there: refused, reset, cut short, timed out.
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
_UNAVAILABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                     grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}


class PredictorUnavailable(ServerNotReady):
    """The predictor is down, refusing connections or not serving the model: HTTP 503.

    A ServerNotReady subclass, so kserve's own registered handler answers 503 (no patching).
    """

    def __init__(self, detail: str):
        super().__init__(detail)
        self.error_msg = f"predictor unavailable: {detail}"


@dataclass(frozen=True)
class _RequestInfo:
    """Per-request facts preprocess hands to postprocess (same asyncio task)."""

    protocol: str  # "v1" or "v2"
    request_id: str | None
    count: int


_REQUEST: ContextVar[_RequestInfo | None] = ContextVar("food_transformer_request", default=None)


@dataclass
class DecodedImages:
    """What preprocess hands predict: one request's preprocessed images, not yet serialised."""

    arrays: list[np.ndarray]  # (3, H, W) float32 each
    request_id: str | None

    def to_infer_request(self, model_name: str) -> InferRequest:
        batch = np.stack(self.arrays)
        tensor = InferInput(name=INPUT_NAME, shape=list(batch.shape), datatype="FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        return InferRequest(model_name=model_name, infer_inputs=[tensor], request_id=self.request_id)


def decode_each(blobs: Sequence[bytes], image_size: int) -> list[np.ndarray | InvalidImageError]:
    """Decode + shared preprocessing per image; a bad image is returned as its error, so
    one client's bad photo never fails another client's request decoded in the same call."""
    out: list[np.ndarray | InvalidImageError] = []
    for blob in blobs:
        try:
            out.append(preprocess_bytes(blob, image_size))
        except InvalidImageError as exc:
            out.append(exc)
    return out


def rank(probs: np.ndarray, class_names: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """Per row of probabilities: top-1 label/index/confidence plus the top-k list."""
    k = max(1, min(top_k, probs.shape[1]))
    predictions = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        top = [
            {"label": class_names[i], "class_index": int(i), "confidence": float(row[i])}
            for i in order
        ]
        predictions.append({**top[0], "top_k": top})
    return predictions


def answer(scored: Scored, class_names: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """The v1 predictions: :func:`rank` of the calibrated probabilities plus, per image, the
    energy score (``ood_score``) and whether it passes the bundle's threshold (``in_distribution``)."""
    predictions = rank(scored.probabilities, class_names, top_k)
    for prediction, energy, inside in zip(predictions, scored.energy, scored.in_distribution):
        prediction["ood_score"] = float(energy)
        prediction["in_distribution"] = bool(inside)
    return predictions


class FoodTransformer(Model):
    """kserve.Model subclass: the transformer in front of Triton."""

    def __init__(
        self,
        name: str,
        predictor_config: PredictorConfig,
        spec: PartialSpec,
        top_k: int = DEFAULT_TOP_K,
        max_batch: int = DEFAULT_MAX_BATCH,
        revision: str = metrics.DEFAULT_REVISION,
        coalesce_images: int = DEFAULT_COALESCE_IMAGES,
        calibration: Calibration | None = None,
        model_version: str = "",
        stage: str = "",
        estimate_window: int = DEFAULT_ESTIMATE_WINDOW,
    ):
        super().__init__(name)
        if predictor_config.predictor_protocol not in ("v2", "grpc-v2"):
            raise BadInput("the predictor (Triton) speaks only v2: use --protocol v2 or grpc-v2")
        if top_k < 1 or max_batch < 1 or coalesce_images < 1:
            raise BadInput("--top_k, --max_batch and --coalesce_images must be at least 1")
        self._predictor = predictor_config
        self.partial = spec
        self.spec: ServingSpec | None = spec.complete()
        self.top_k = top_k
        self.max_batch = max_batch
        self.revision = revision
        # Identity (T = 1, no OOD threshold) for a bundle exported before calibration existed.
        self.calibration = calibration or Calibration.identity()
        self.estimate = RollingEstimate(self.calibration, window=estimate_window)
        metrics.ESTIMATES.track(name, revision, model_version or "unknown", stage or "unknown", self.estimate)
        self._http: aiohttp.ClientSession | None = None  # created on the serving event loop
        # Two decodes in flight (both cores when Triton is busy elsewhere); four Triton calls, so
        # each of its two instances has the next call queued when one returns instead of idling
        # through the round trip (INT8, 2 cores: +6-9% served img/s at c>=32 vs two in flight).
        self._decoder: Coalescer[bytes, np.ndarray | InvalidImageError] = Coalescer(
            self._decode, 64, max_inflight=2)
        self._infer: Coalescer[np.ndarray, np.ndarray] = Coalescer(
            self._infer_rest, coalesce_images, max_inflight=4)

    # Our own config, not kserve's process-wide context var: the handlers may run in
    # another thread or context (tests, multiple servers) and must still find it.
    @property
    def predictor_config(self) -> PredictorConfig:
        return self._predictor

    def _metadata_url(self) -> str:
        return f"{self._predictor.predictor_base_url}/v2/models/{self.name}"

    def load(self) -> bool:
        """Ready without the predictor; if it is up, take missing facts from its metadata
        and check the given ones against it (a mismatch stops start-up: ConfigError)."""
        if self._predictor.predictor_protocol == "v2":
            try:
                response = httpx.get(self._metadata_url(), timeout=METADATA_TIMEOUT_S)
                response.raise_for_status()
                self.spec = fill_from_metadata(self.partial, response.json())
                logger.info("model %s: image size %d, %d classes (checked against the predictor)",
                            self.name, self.spec.image_size, self.spec.num_classes)
            except (httpx.HTTPError, ValueError) as exc:
                logger.warning("predictor metadata not available yet (%s); %s", exc,
                               "using the given spec" if self.spec else "will ask on the first request")
        elif self.spec is None:
            raise BadInput("with --protocol grpc-v2 pass --image_size and --labels_file "
                            "(or --model_spec): they are not read over gRPC")
        self.ready = True
        return self.ready

    async def _serving_spec(self) -> ServingSpec:
        if self.spec is not None:
            return self.spec
        try:
            async with self._client().get(self._metadata_url(),
                                          timeout=aiohttp.ClientTimeout(total=METADATA_TIMEOUT_S)) as response:
                status, body = response.status, await response.read()
        except _TRANSPORT_ERRORS as exc:
            raise PredictorUnavailable(
                f"cannot read model metadata from {self._metadata_url()} ({type(exc).__name__}: {exc}); "
                f"is the predictor up? (or start the transformer with --image_size and --labels_file)"
            ) from exc
        if status != 200:
            raise PredictorUnavailable(
                f"{self._metadata_url()} answered {status}: model {self.name!r} "
                f"is not served there yet"
            )
        try:
            self.spec = fill_from_metadata(self.partial, json.loads(body))
        except ValueError as exc:
            raise PredictorUnavailable(f"{self._metadata_url()} answered unreadable metadata ({exc})") from exc
        except BadInput as exc:
            raise InferenceError(f"transformer misconfigured: {exc}") from exc
        return self.spec

    def get_input_types(self) -> list[Dict]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[Dict]:
        return [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
            {"name": "confidence", "datatype": "FP32", "shape": [-1]},
            {"name": "ood_score", "datatype": "FP32", "shape": [-1]},
            {"name": "in_distribution", "datatype": "BOOL", "shape": [-1]},
        ]

    def validate(self, payload: Any) -> Any:
        return payload if isinstance(payload, DecodedImages) else super().validate(payload)

    async def preprocess(self, payload: Any, headers: Dict[str, str] | None = None) -> DecodedImages:
        if isinstance(payload, InferRequest):
            blobs = parse_v2_request(payload, self.max_batch)
            names = [f"image {i}" for i in range(len(blobs))]
            info = _RequestInfo("v2", payload.id, len(blobs))
        else:
            if isinstance(payload, (bytes, bytearray)) and is_raw_image_request(headers):
                blobs, names = parse_raw_body(payload), ["body"]
            else:
                blobs = parse_v1_body(payload, self.max_batch)
                names = [f"instances[{i}]" for i in range(len(blobs))]
            info = _RequestInfo("v1", None, len(blobs))
        _REQUEST.set(info)
        log_json("transformer", "preprocess", inference_id_of(headers), model=self.name,
                 revision=self.revision, protocol=info.protocol, instances=len(blobs))
        await self._serving_spec()
        decoded = await self._decoder.submit(blobs)
        for item, name in zip(decoded, names):
            if isinstance(item, InvalidImageError):
                raise InvalidInput(f"{name}: {item}") from item
        return DecodedImages(decoded, info.request_id)  # type: ignore[arg-type]  # errors raised above

    async def _decode(self, blobs: list[bytes]) -> list[np.ndarray | InvalidImageError]:
        """One executor call for every image queued meanwhile (Pillow and NumPy release the
        GIL): the event loop keeps serving while it runs."""
        assert self.spec is not None  # preprocess awaited _serving_spec first
        return await asyncio.get_running_loop().run_in_executor(None, decode_each, blobs, self.spec.image_size)

    async def predict(
        self,
        payload: Any,
        headers: Dict[str, str] | None = None,
        response_headers: Dict[str, str] | None = None,
    ) -> InferResponse | np.ndarray:
        where = f"{self._predictor.predictor_host} ({self._predictor.predictor_protocol})"
        try:
            if self._predictor.predictor_protocol == "grpc-v2":
                request = payload.to_infer_request(self.name) if isinstance(payload, DecodedImages) else payload
                return await super().predict(request, headers, response_headers)
            if isinstance(payload, DecodedImages):
                return np.stack(await self._infer.submit(payload.arrays))
            return await self._infer_request(payload)
        except v2binary.PredictorStatusError as exc:
            if exc.status in _UNAVAILABLE_STATUS:
                raise PredictorUnavailable(f"{where}: {exc}") from exc
            raise InferenceError(f"predictor {where} failed: {exc}") from exc
        except _TRANSPORT_ERRORS as exc:
            raise PredictorUnavailable(
                f"cannot reach {where}: {type(exc).__name__}: {exc or 'connection failed'}"
            ) from exc
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in _UNAVAILABLE_GRPC:
                raise PredictorUnavailable(f"{where}: {code}: {exc.details()}") from exc
            raise InferenceError(f"predictor {where} failed: {code}") from exc

    def _client(self) -> aiohttp.ClientSession:
        # aiohttp, not httpx, on this per-request path: about a tenth of the CPU per call.
        if self._http is None:  # created on the serving event loop, kept for its connections
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._predictor.predictor_request_timeout_seconds),
                connector=aiohttp.TCPConnector(limit=0))
        return self._http

    async def aclose(self) -> None:
        """Close the predictor connections (on the serving event loop)."""
        session, self._http = self._http, None
        if session is not None and not session.closed:
            await session.close()

    def stop(self) -> None:
        super().stop()
        try:
            asyncio.get_running_loop().create_task(self.aclose())
        except RuntimeError:
            pass  # no event loop left: the process ends and its sockets with it

    async def _infer_rest(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One binary v2 call to Triton for the images of every request queued meanwhile."""
        logits = await v2binary.infer(self._client(), self._predictor.predictor_base_url, self.name,
                                      images, INPUT_NAME, OUTPUT_NAME,
                                      connect_retries=self._predictor.predictor_request_retries)
        return list(logits)

    async def _infer_request(self, request: InferRequest) -> np.ndarray:
        """A ready-made InferRequest (a subclass's preprocess): its FP32 input, sent alone."""
        tensor = request.inputs[0].as_numpy()
        return np.stack(await self._infer.submit(list(tensor)))

    async def postprocess(
        self,
        result: Any,
        headers: Dict[str, str] | None = None,
        response_headers: Dict[str, str] | None = None,
    ) -> Dict | InferResponse:
        spec = self.spec
        info = _REQUEST.get() or _RequestInfo("v1", None, -1)
        logits = _logits_of(result)
        if spec is None or logits.ndim != 2 or logits.shape[1] != spec.num_classes:
            raise InferenceError(
                f"predictor returned logits of shape {list(logits.shape)}, expected "
                f"[N, {spec.num_classes if spec else '?'}]: is --model_name/--labels_file the "
                f"model the predictor serves?"
            )
        scored = self.calibration.score(logits)
        predictions = answer(scored, spec.class_names, self.top_k)
        metrics.record_predictions(self.name, self.revision, predictions)
        self._record_estimate(scored)
        if info.protocol == "v1":
            return {"predictions": predictions}
        n = len(predictions)
        outputs = [
            InferOutput("label", [n], "BYTES", np.array([p["label"] for p in predictions], dtype=np.object_)),
            InferOutput("class_index", [n], "INT64", np.array([p["class_index"] for p in predictions], dtype=np.int64)),
            InferOutput("confidence", [n], "FP32", np.array([p["confidence"] for p in predictions], dtype=np.float32)),
            InferOutput("ood_score", [n], "FP32", np.array([p["ood_score"] for p in predictions], dtype=np.float32)),
            InferOutput("in_distribution", [n], "BOOL", np.array([p["in_distribution"] for p in predictions],
                                                                  dtype=np.bool_)),
        ]
        response_id = info.request_id or getattr(result, "id", None) or ""
        return InferResponse(response_id=response_id, model_name=self.name, infer_outputs=outputs)


    def _record_estimate(self, scored: Scored) -> None:
        try:
            self.estimate.record(scored)
        except Exception:  # noqa: BLE001 - a side path never fails a prediction
            logger.exception("recording the accuracy estimate failed; the prediction is still served")


def _logits_of(result: Any) -> np.ndarray:
    """The ``logits`` output of a v2 response (the first output if named otherwise)."""
    if isinstance(result, np.ndarray):
        return result
    if isinstance(result, InferResponse):
        output = result.get_output_by_name(OUTPUT_NAME) or (result.outputs[0] if result.outputs else None)
        if output is None:
            raise InferenceError("predictor response has no outputs")
        return np.asarray(output.as_numpy(), dtype=np.float32)
    raise InferenceError(f"unexpected predictor response type {type(result).__name__}")
