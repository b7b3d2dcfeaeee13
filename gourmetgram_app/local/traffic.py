"""Client traffic for the local stack: one request, a batch of them, or steady background load."""

from __future__ import annotations

import base64
import threading
import time
from typing import Sequence

import httpx

from gourmetgram.constants import MODEL_NAME


def v1_body(image: bytes) -> dict:
    """The KServe v1 request for one image (the prediction API's contract)."""
    return {"instances": [{"image": {"b64": base64.b64encode(image).decode()}}]}


def predict(client: httpx.Client, url: str, image: bytes, model: str = MODEL_NAME) -> httpx.Response:
    return client.post(f"{url}/v1/models/{model}:predict", json=v1_body(image))


class BackgroundTraffic:
    """Users sending images round-robin until stopped (what production would see).

    ``pause_s``: each user waits this long between requests (steady, modest load).
    ``answers``: ``(monotonic time answered, status)`` per request, in answer order;
    ``served_ids``: the ``X-Inference-Id`` of every 200 (what the loop must capture)."""

    def __init__(self, url: str, images: Sequence[bytes], workers: int = 3, model: str = MODEL_NAME,
                 pause_s: float = 0.0) -> None:
        self.url, self.images, self.model, self.pause_s = url, list(images), model, pause_s
        self.stop_event = threading.Event()
        self.codes: list[int] = []  # HTTP status per request; -1 for a connection failure
        self.answers: list[tuple[float, int]] = []
        self.served_ids: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _run(self, offset: int) -> None:
        with httpx.Client(timeout=60) as client:
            n = offset
            while not self.stop_event.is_set():
                served = None
                try:
                    r = predict(client, self.url, self.images[n % len(self.images)], self.model)
                    code, served = r.status_code, r.headers.get("x-inference-id")
                except httpx.HTTPError:
                    code = -1
                with self._lock:
                    self.codes.append(code)
                    self.answers.append((time.monotonic(), code))
                    if code == 200 and served:
                        self.served_ids.append(served)
                n += 1
                if self.pause_s:
                    self.stop_event.wait(self.pause_s)

    def __enter__(self) -> "BackgroundTraffic":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop the users and wait for their last answers (safe to call twice)."""
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def __exit__(self, *exc) -> None:
        self.stop()
