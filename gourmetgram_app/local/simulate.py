"""Simulated users: uploads through the public API, and feedback on what they were told.

What they do (the defaults of :class:`Behaviour`; every draw comes from one seeded RNG, so a
run is reproducible for the same answers from the server):

* **uploads**: each user uploads a photo (``POST /v1/models/<m>:predict``, KServe v1) and
  reads the tag (label) in the answer and the ``X-Inference-Id`` header;
* **who answers**: a user whose tag is right sends feedback with probability
  ``feedback_rate`` (0.3); one whose tag is wrong with ``feedback_rate_when_wrong`` (0.6):
  people answer more when something is wrong, which is why feedback accuracy is biased low
  and the unbiased estimate is the labelling queue's random share;
* **what they say** (``POST /v1/feedback``): ``correct: true|false`` as they see it, except
  ``mistaken_rate`` (0.02) of them, who press the other button;
* **corrections**: a user who marks a tag wrong also picks the right class with probability
  ``correction_rate`` (0.7) (``correct_class``: a label for the loop's export);
* **who they are**: each upload comes from one of ``users`` (50) people, drawn at random; its
  feedback names that person in ``X-Client-Id`` (``simulated-user-<n>``), as the web app names
  its visitors, so the loop's per-client daily cap on corrections holds per person, not for
  the whole simulation at once;
* **drift**: after ``drift_onset`` uploads, a share ``drifted_share`` of uploads come from a
  drifted sub-population, a new kind of photo: by default :func:`night_shot` (photos taken in
  the dark, a new style the v1 model has not seen); before it, none.

Users know the true class of their photo (the simulation knows it from the dataset). A
``judge`` replaces the users' honesty with a script (``(served) -> True | False | None``):
tests construct the feedback they need with it, whatever the models actually answer.
The users run against any gateway, staging or production; the answers' ``X-Gourmetgram-
Revision`` header says which revision served each one, and the report counts per revision and
sub-population.
"""

from __future__ import annotations

import dataclasses
import io
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import httpx

from gourmetgram.constants import CLIENT_ID_HEADER, MODEL_NAME
from gourmetgram_app.local.traffic import predict

REGULAR, DRIFTED = "regular", "drifted"
REVISION_HEADER = "x-gourmetgram-revision"


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """How the simulated users act (see the module docstring)."""

    feedback_rate: float = 0.3
    feedback_rate_when_wrong: float = 0.6
    correction_rate: float = 0.7
    mistaken_rate: float = 0.02
    drifted_share: float = 0.0
    drift_onset: int = 0  # uploads before the drifted sub-population appears
    users: int = 50  # distinct people (X-Client-Id) the uploads come from

    def __post_init__(self) -> None:
        for name in ("feedback_rate", "feedback_rate_when_wrong", "correction_rate", "mistaken_rate",
                     "drifted_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        if self.drift_onset < 0:
            raise ValueError(f"drift_onset must be >= 0, got {self.drift_onset}")
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")


@dataclasses.dataclass(frozen=True)
class Photo:
    image: bytes
    label: str  # the true class name
    group: str = REGULAR


def night_shot(blob: bytes, brightness: float = 0.3) -> bytes:
    """A photo taken in the dark: much darker, with the blue cast of a phone's night mode."""
    from PIL import Image, ImageEnhance

    img = ImageEnhance.Brightness(Image.open(io.BytesIO(blob)).convert("RGB")).enhance(brightness)
    r, g, b = img.split()
    img = Image.merge("RGB", (r.point(lambda v: v * 0.8), g, b.point(lambda v: min(255, v * 1.3 + 20))))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def reencode(blob: bytes) -> bytes:
    """A photo as a user sends it again: re-encoded, so new bytes (a new content hash)."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(blob)).convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


@dataclasses.dataclass
class Population:
    """The photos users upload: the regular ones and the drifted sub-population."""

    regular: list[Photo]
    drifted: list[Photo] = dataclasses.field(default_factory=list)

    @classmethod
    def from_split(cls, folder: Path, class_names: Sequence[str], photos: int,
                   drift: Callable[[bytes], bytes] | None = night_shot) -> "Population":
        """``photos`` images spread evenly over a dataset split (``<root>/training``: what the
        cycle's users upload), each as a regular photo and, with ``drift``, transformed."""
        from gourmetgram.data.layout import list_images

        items = list_images(folder)
        return cls.from_images(items[:: max(1, len(items) // photos)][:photos], class_names, drift)

    @classmethod
    def from_images(cls, items: Sequence[tuple[Path, int]], class_names: Sequence[str],
                    drift: Callable[[bytes], bytes] | None = night_shot) -> "Population":
        """Each image once as a regular photo (re-encoded) and, with ``drift``, once transformed."""
        regular, drifted = [], []
        for path, index in items:
            blob = path.read_bytes()
            regular.append(Photo(reencode(blob), class_names[index], REGULAR))
            if drift is not None:
                drifted.append(Photo(drift(blob), class_names[index], DRIFTED))
        return cls(regular, drifted)


@dataclasses.dataclass
class Served:
    """One upload and what came of it."""

    group: str
    label: str  # truth
    status: int  # HTTP status of the prediction (-1: no answer)
    inference_id: str | None = None
    revision: str | None = None
    predicted: str | None = None
    confidence: float | None = None
    said: bool | None = None  # the feedback sent: correct true/false, None = none
    corrected: bool = False
    feedback_status: int | None = None

    @property
    def right(self) -> bool:
        return self.predicted == self.label


Judge = Callable[[Served], "bool | None"]


@dataclasses.dataclass
class Report:
    served: list[Served] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[tuple[str, str], Counter]:
        """``{(revision, group): Counter(served, right, answers, marked_wrong, corrected, failed)}``."""
        out: dict[tuple[str, str], Counter] = {}
        for s in self.served:
            c = out.setdefault((s.revision or "-", s.group), Counter())
            c["served"] += 1
            c["right"] += int(s.status == 200 and s.right)
            c["failed"] += int(s.status != 200)
            if s.said is not None and s.feedback_status == 200:
                c["answers"] += 1
                c["marked_wrong"] += int(s.said is False)
                c["corrected"] += int(s.corrected)
        return out

    def format(self) -> str:
        lines = [f"  {'revision':<30} {'photos':<8} {'served':>6} {'true acc':>8} {'feedback':>8} "
                 f"{'marked wrong':>12} {'corrected':>9}"]
        for (rev, group), c in sorted(self.counts().items()):
            acc = c["right"] / c["served"] if c["served"] else 0.0
            lines.append(f"  {rev:<30} {group:<8} {c['served']:>6} {acc:>8.3f} {c['answers']:>8} "
                         f"{c['marked_wrong']:>12} {c['corrected']:>9}")
        return "\n".join(lines)


class SimulatedUsers:
    """Users uploading photos to ``gateway_url`` and answering about the tags, as described above.

    ``run(n)`` sends ``n`` uploads and returns the :class:`Report`; as a context manager the
    users go on in ``workers`` threads until the block ends (``report`` fills as they go)."""

    def __init__(self, gateway_url: str, population: Population, behaviour: Behaviour = Behaviour(),
                 seed: int = 0, judge: Judge | None = None, model: str = MODEL_NAME, workers: int = 2,
                 pause_s: float = 0.0) -> None:
        if not population.regular:
            raise ValueError("the population has no photos")
        if behaviour.drifted_share > 0 and not population.drifted:
            raise ValueError("drifted_share > 0 needs a drifted sub-population")
        self.url, self.population, self.behaviour = gateway_url.rstrip("/"), population, behaviour
        self.judge, self.model, self.pause_s = judge, model, pause_s
        self.rng = random.Random(seed)
        self.report = Report()
        self.uploads = 0
        self.drift_started_at: float | None = None  # monotonic time of the first drifted upload
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(workers)]

    # -- one user's turn -------------------------------------------------------------------------
    def draw(self) -> tuple[Photo, dict[str, float]]:
        """The next photo and this user's dice (drawn under the lock: one RNG, reproducible)."""
        b = self.behaviour
        with self._lock:
            n = self.uploads
            self.uploads += 1
            drifted = n >= b.drift_onset and self.rng.random() < b.drifted_share
            pool = self.population.drifted if drifted else self.population.regular
            photo = pool[self.rng.randrange(len(pool))]
            if drifted and self.drift_started_at is None:
                self.drift_started_at = time.monotonic()
            dice = {k: self.rng.random() for k in ("answer", "mistake", "correct")}
            dice["user"] = self.rng.randrange(b.users)
        return photo, dice

    def _say(self, served: Served, dice: dict[str, float]) -> bool | None:
        if self.judge is not None:
            return self.judge(served)
        b = self.behaviour
        rate = b.feedback_rate if served.right else b.feedback_rate_when_wrong
        if dice["answer"] >= rate:
            return None
        honest = served.right
        return (not honest) if dice["mistake"] < b.mistaken_rate else honest

    def feedback_for(self, served: Served, dice: dict[str, float]) -> dict | None:
        """The feedback this user sends about an answered upload (the ``POST /v1/feedback``
        body, with ``correct_class`` when they correct the tag), or None; ``served`` records it."""
        said = self._say(served, dice)
        if said is None or not served.inference_id:
            return None
        body: dict = {"inference_id": served.inference_id, "correct": said}
        if not said and served.predicted != served.label and dice["correct"] < self.behaviour.correction_rate:
            body["correct_class"] = served.label
            served.corrected = True
        served.said = said
        return body

    def upload(self, client: httpx.Client) -> Served:
        photo, dice = self.draw()
        served = Served(photo.group, photo.label, -1)
        try:
            r = predict(client, self.url, photo.image, self.model)
        except httpx.HTTPError:
            self._record(served)
            return served
        served.status = r.status_code
        if r.status_code == 200:
            prediction = r.json()["predictions"][0]
            served.predicted, served.confidence = prediction.get("label"), prediction.get("confidence")
            served.inference_id = r.headers.get("x-inference-id")
            served.revision = r.headers.get(REVISION_HEADER)
            body = self.feedback_for(served, dice)
            if body is not None:
                try:
                    served.feedback_status = client.post(
                        f"{self.url}/v1/feedback", json=body,
                        headers={CLIENT_ID_HEADER: f"simulated-user-{int(dice['user'])}"}).status_code
                except httpx.HTTPError:
                    served.feedback_status = -1
        self._record(served)
        return served

    def _record(self, served: Served) -> None:
        with self._lock:
            self.report.served.append(served)

    # -- runs ------------------------------------------------------------------------------------
    def run(self, n: int) -> Report:
        with httpx.Client(timeout=60) as client:
            for _ in range(n):
                self.upload(client)
                if self.pause_s:
                    time.sleep(self.pause_s)
        return self.report

    def _loop(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                self.upload(client)
                if self.pause_s:
                    self._stop.wait(self.pause_s)

    def __enter__(self) -> "SimulatedUsers":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
