"""Locust users for the GourmetGram prediction API (KServe v1 protocol).

    locust -f loadtests/locustfile.py,loadtests/shapes/ramp.py --host http://127.0.0.1:8090
    locust -f loadtests/locustfile.py --headless -u 4 -r 2 -t 60s --host URL --images DIR

Each user posts one evaluation image per request, chosen at random; a share of requests
(--bad-request-share) are deliberately bad (invalid base64, not an image, empty instances)
and must come back 400: they are reported under names starting with "bad request" so the
SLO gate can leave them out of the error rate. Images are read from disk once, at start.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

from locust import HttpUser, between, events, task

from gourmetgram.constants import MODEL_NAME

BAD_REQUEST_PREFIX = "bad request"
IMAGES: list[str] = []  # base64 payloads, shared by all users
BAD_BODIES = {
    "invalid base64": {"instances": [{"image": {"b64": "!!not base64!!"}}]},
    "not an image": {"instances": [{"image": {"b64": base64.b64encode(b"plain text, no pixels").decode()}}]},
    "empty instances": {"instances": []},
}


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--images", env_var="GOURMETGRAM_LOADTEST_IMAGES", default="",
                        help="folder of JPEG/PNG images to send (searched recursively)")
    parser.add_argument("--model-name", env_var="GOURMETGRAM_MODEL_NAME", default=MODEL_NAME,
                        help="model name in the predict URL")
    parser.add_argument("--bad-request-share", type=float, env_var="GOURMETGRAM_BAD_SHARE", default=0.05,
                        help="share of requests that are deliberately bad (expect 400)")
    parser.add_argument("--max-images", type=int, env_var="GOURMETGRAM_MAX_IMAGES", default=500,
                        help="read at most this many images")


@events.init.add_listener
def _load_images(environment, **_kwargs) -> None:
    options = environment.parsed_options
    folder = Path(getattr(options, "images", "") or "")
    if not folder.is_dir():
        raise SystemExit(f"--images {folder!s} is not a folder of images (set --images or GOURMETGRAM_LOADTEST_IMAGES)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise SystemExit(f"no .jpg/.jpeg/.png images under {folder}")
    random.Random(0).shuffle(paths)
    IMAGES[:] = [base64.b64encode(p.read_bytes()).decode() for p in paths[: options.max_images]]


class FoodPhotoUser(HttpUser):
    """A GourmetGram client: uploads a photo, waits a little, uploads another."""

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.predict_path = f"/v1/models/{options.model_name}:predict"
        self.bad_share = options.bad_request_share

    @task
    def predict(self) -> None:
        if random.random() < self.bad_share:
            kind = random.choice(sorted(BAD_BODIES))
            with self.client.post(self.predict_path, data=json.dumps(BAD_BODIES[kind]),
                                  headers={"Content-Type": "application/json"},
                                  name=f"{BAD_REQUEST_PREFIX}: {kind}", catch_response=True) as response:
                if response.status_code == 400:
                    response.success()
                else:
                    response.failure(f"expected 400 for {kind}, got {response.status_code}")
            return
        body = {"instances": [{"image": {"b64": random.choice(IMAGES)}}]}
        with self.client.post(self.predict_path, json=body, name="predict", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                prediction = response.json()["predictions"][0]
                prediction["label"], prediction["confidence"]
            except (ValueError, KeyError, IndexError, TypeError):
                response.failure(f"malformed prediction: {response.text[:200]}")
