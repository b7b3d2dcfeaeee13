"""kserve's ModelServer, bound to one address, REST only, with a per-request size limit.

kserve 0.20's ``RESTServer`` hard-codes ``host="0.0.0.0"`` and ``ModelServer`` opens a gRPC
port (on ``[::]``) by default, which the transformer does not use: KServe routes it HTTP.
This subclass starts the same REST server (same app, routes, handlers and middlewares) with
uvicorn's host set to ``host`` (127.0.0.1 locally, 0.0.0.0 in the container), refuses gRPC
unless it may bind every address anyway, and puts :class:`gourmetgram.bodylimit.BodyLimit`
in front of the app so a body over ``max_body_bytes`` is a 413 before kserve reads it. Its
data plane (:class:`TransformerDataPlane`) reads v2 binary requests with our own decoder.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, INFERENCE_CONTENT_LENGTH_HEADER
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.server import RESTServer
from starlette.responses import JSONResponse
from uvicorn.importer import import_from_string

from food_transformer import v2binary
from food_transformer.validation import RAW_IMAGE_TYPE
from gourmetgram.bodylimit import BodyLimit
from gourmetgram.errors import BadInput

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # the gateway's limit too
ALL_ADDRESSES = ("0.0.0.0", "::", "")


class RawImageBody:
    """Lets a raw image posted to a v1 ``:predict`` path reach the transformer.

    kserve 0.20 lists ``application/octet-stream`` among the JSON types
    (``kserve.protocol.dataplane.JSON_HEADERS``), so such a body would be parsed as JSON and
    refused before the model sees it. On ``:predict`` paths only, this relabels it
    :data:`~food_transformer.validation.RAW_IMAGE_TYPE`, which kserve hands over as bytes;
    v2 ``/infer`` (binary tensor extension, same Content-Type) is left alone.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith(":predict"):
            headers = scope["headers"]
            for i, (name, value) in enumerate(headers):
                if name == b"content-type" and value.split(b";")[0].strip().lower() == b"application/octet-stream":
                    scope = {**scope, "headers": [*headers[:i], (name, RAW_IMAGE_TYPE.encode()), *headers[i + 1:]]}
                    break
        await self.app(scope, receive, send)


class TransformerDataPlane(DataPlane):
    """kserve's DataPlane, except that a v2 REST body that is not JSON-typed (the binary tensor
    extension) is read by :func:`food_transformer.v2binary.decode_request`: BYTES elements stay
    bytes, so a raw JPEG/PNG is served like base64 text, and a malformed header length, size
    or element is a 400 that says what is wrong (kserve's decoder answers 500 to those)."""

    def decode_inference_request(self, body: Any, headers: Any, model_name: str) -> InferRequest:
        if isinstance(body, (bytes, bytearray)):
            length = next((v for k, v in (headers or {}).items()
                           if k.lower() == INFERENCE_CONTENT_LENGTH_HEADER), None)
            return v2binary.decode_request(bytes(body), length, model_name)
        return super().decode_inference_request(body, headers, model_name)


def use_transformer_dataplane(server: ModelServer) -> None:
    """Give ``server`` a :class:`TransformerDataPlane` (call before its REST app is built)."""
    server.dataplane = TransformerDataPlane(model_registry=server.registered_models)


V2_EXAMPLE = ('{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", '
              '"data": ["<base64 JPEG or PNG>"]}]}')


async def request_validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
    """A body FastAPI cannot read as the route's model (an empty or malformed v2 request) is a
    400 in the transformer's own error shape with what to send, not FastAPI's 422 details."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                         for e in exc.errors()[:3])
    hint = (f"; send JSON like {V2_EXAMPLE} (Content-Type: application/json), or the v2 binary "
            "tensor extension with Inference-Header-Content-Length") if request.url.path.endswith("/infer") else ""
    return JSONResponse({"error": f"request body is not a valid request for {request.url.path} "
                                  f"({problems}){hint}"}, status_code=400)


def add_middlewares(app: Any, max_body_bytes: int) -> None:
    """What the transformer adds to kserve's app: raw image bodies, then the size limit
    (outermost), and a 400 for bodies FastAPI cannot validate."""
    app.add_middleware(RawImageBody)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, request_validation_error)


class BoundModelServer(ModelServer):
    """A single-process ModelServer listening on ``host`` only."""

    def __init__(self, host: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        use_transformer_dataplane(self)
        if self.workers != 1:
            raise BadInput("--workers: the food transformer runs one uvicorn worker (its model "
                            "talks to one predictor); scale with replicas instead")
        if self.enable_grpc and host not in ALL_ADDRESSES:
            raise BadInput(f"--enable_grpc: kserve's gRPC server binds every address, not {host}; "
                            "the transformer is served over HTTP only (drop --enable_grpc)")
        if max_body_bytes < 1:
            raise BadInput("--max_body_bytes must be positive")
        self.host, self.max_body_bytes = host, max_body_bytes

    def start(self, models: list[Any]) -> None:
        """:meth:`kserve.ModelServer.start` for one worker, with the bind address and limit."""
        import asyncio

        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
            self.http_port, access_log_format=self.access_log_format, workers=1,
            grace_period=self.grace_period, event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive)
        # uvicorn.Server keeps this Config object and reads .host when it binds.
        self._rest_server.config.host = self.host
        add_middlewares(import_from_string(FASTAPI_APP_IMPORT_STRING), self.max_body_bytes)
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            from kserve.model_server import args as kserve_args
            from kserve.protocol.grpc.server import GRPCServer

            self._grpc_server = GRPCServer(self.grpc_port, self.dataplane, self.model_repository_extension,
                                           kwargs=vars(kserve_args), grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
