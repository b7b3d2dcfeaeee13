"""The web app's pages and their error paths, in process.

The platform's public API is an in-process ASGI app speaking the contract (predict with
``X-Inference-Id``, ``POST /v1/feedback``) so each fault can be produced on demand; the
end-to-end tests (test_webapp_e2e.py) drive the same pages in Chromium against the real stack.
"""

from __future__ import annotations

import html
import io
import re

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gourmetgram.errors import BadInput
from gourmetgram_webapp.app import VISITOR_COOKIE, create_app
from gourmetgram_webapp.config import StageSource, WebConfig, read_class_names

CLASSES = ("Bread", "Dessert", "Soup", "Rice")
API = "http://api.test"


def photo(fmt: str = "JPEG", size=(80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buf, format=fmt)
    return buf.getvalue()


class FakePlatform:
    """The public API as the contract defines it, with switches for each fault."""

    def __init__(self) -> None:
        self.model_down = False
        self.in_distribution = True  # what the model's answer says about the photo
        self.feedback_mode = "ok"  # ok | down | missing_route
        self.feedback: list[dict] = []
        self.feedback_clients: list[str | None] = []  # the X-Client-Id of each feedback
        self.ids: list[str] = []
        self.rollout = {"inferenceservice": "food11", "namespace": "gourmetgram-production", "model": "food11",
                        "configuration": "food11-transformer", "canary_traffic_percent": None,
                        "latest_rolledout_revision": "food11-transformer-00001",
                        "latest_revision": "food11-transformer-00001",
                        "revisions": [{"name": "food11-transformer-00001", "percent": 100, "tag": None,
                                       "version": "3"}]}

    def app(self) -> Starlette:
        async def predict(request: Request):
            if self.model_down:
                return JSONResponse({"error": "predictor is not reachable"}, status_code=503)
            body = await request.json()
            assert body["instances"][0]["image"]["b64"]
            inference_id = f"id-{len(self.ids)}"
            self.ids.append(inference_id)
            top = [{"label": "Soup", "class_index": 2, "confidence": 0.81},
                   {"label": "Rice", "class_index": 3, "confidence": 0.12},
                   {"label": "Bread", "class_index": 0, "confidence": 0.05},
                   {"label": "Dessert", "class_index": 1, "confidence": 0.02}]
            ood = {"ood_score": -4.2 if self.in_distribution else -1.3, "in_distribution": self.in_distribution}
            return JSONResponse({"predictions": [{**top[0], "top_k": top, **ood}]},
                                headers={"X-Inference-Id": inference_id,
                                         "X-Gourmetgram-Revision": "food11-transformer-00001"})

        async def feedback(request: Request):
            if self.feedback_mode == "down":
                return JSONResponse({"error": "feedback store unavailable"}, status_code=503)
            if self.feedback_mode == "missing_route":
                return PlainTextResponse("Not Found", status_code=404)
            if self.feedback_mode == "capped":
                return JSONResponse({"error": "this client has sent 100 correction(s) today"}, status_code=429)
            if request.headers.get("content-type") != "application/json":  # as the real API: JSON only
                return JSONResponse({"error": "feedback must be sent as JSON"}, status_code=415)
            body = await request.json()
            if body["inference_id"] not in self.ids:
                return JSONResponse({"error": f"unknown inference id {body['inference_id']}"}, status_code=404)
            if body.get("correct_class") and body["correct_class"] not in CLASSES:
                return JSONResponse({"error": f"unknown class; valid: {CLASSES}"}, status_code=400)
            self.feedback.append(body)
            self.feedback_clients.append(request.headers.get("x-client-id"))
            pending = "pending_review" if body.get("correct_class") else "none"  # the tag's 0.81: confident
            return JSONResponse({**body, "stored": True, "label_status": pending})

        async def rollout(_request: Request):
            return JSONResponse(self.rollout)

        async def status(_request: Request):
            return JSONResponse({"t": 40, "test_stat": 0.031, "threshold": 0.049, "is_drift": False,
                                 "processed": 40, "backlog": 0, "label_drift": {"statistic": 0.12, "window": 40}})

        return Starlette(routes=[
            Route("/v1/models/food11:predict", predict, methods=["POST"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/_gourmetgram/rollout", rollout, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
        ])


@pytest.fixture()
def platform() -> FakePlatform:
    return FakePlatform()


@pytest.fixture()
def client(platform):
    config = WebConfig(api_url=API, class_names=CLASSES, registry=False, max_upload_bytes=200_000,
                       stages=(StageSource("production", f"local:{API}", API),))
    app = create_app(config, transport=httpx.ASGITransport(app=platform.app()))
    with TestClient(app, follow_redirects=True) as c:
        yield c


def alert(page: str) -> str:
    m = re.search(r'role="alert" id="error">([^<]*)<', page)
    return html.unescape(m.group(1)) if m else ""


def upload(client, data: bytes, name: str = "dish.jpg", field: str = "photo", mime: str = "image/jpeg"):
    return client.post("/predict", files={field: (name, data, mime)})


def test_upload_shows_class_confidence_top3_and_recent(client, platform):
    r = upload(client, photo())
    assert r.status_code == 200
    assert re.search(r'id="predicted-class">Soup<', r.text)
    assert "81.0%" in r.text
    top = re.findall(r'class="top-label">([^<]+)<', r.text)
    assert top == ["Soup", "Rice", "Bread"]
    assert "/thumb.jpg" in r.text and r.url.path.startswith("/uploads/")
    thumb = client.get(r.url.path + "/thumb.jpg")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size[0] <= 160
    upload(client, photo("PNG"), "second.png", "camera", "image/png")  # the phone camera's field
    home = client.get("/")
    assert len(re.findall(r'class="recent-label">Soup<', home.text)) == 2
    # another visitor (no cookie) sees none of them, and cannot open them
    other = TestClient(client.app)
    assert "recent-label" not in other.get("/").text
    assert other.get(r.url.path).status_code == 404


def test_an_out_of_distribution_photo_is_said_to_maybe_not_be_food(client, platform):
    assert 'id="not-food-warning"' not in upload(client, photo()).text
    platform.in_distribution = False
    r = upload(client, photo())
    assert r.status_code == 200 and re.search(r'id="predicted-class">Soup<', r.text)
    assert re.search(r'id="not-food-warning"[^>]*>This may not be food', r.text)
    assert 'id="say-not-food"' in r.text  # and the user can say so


@pytest.mark.parametrize("data, name, status, words", [
    (b"%PDF-1.4 not a photo", "menu.pdf", 400, "is not a photo we can read"),
    (b"", "empty.jpg", 400, "No photo was uploaded"),
    (photo("JPEG")[:200], "cut.jpg", 400, "is not a photo we can read"),
    (photo("GIF"), "anim.gif", 400, "send JPEG or PNG"),
    (b"\xff\xd8" + b"x" * 300_000, "huge.jpg", 413, "photos up to 0.2 MB are accepted"),
])
def test_bad_uploads_say_what_is_wrong(client, platform, data, name, status, words):
    r = upload(client, data, name)
    assert r.status_code == status
    assert words in alert(r.text)
    assert "Traceback" not in r.text and platform.ids == []  # the model was never asked


def test_a_request_that_is_not_a_form_is_a_400_in_words(client):
    r = client.post("/predict", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and alert(r.text)
    r = client.post("/predict", data={"note": "no file"})
    assert r.status_code == 400 and "No photo was uploaded" in alert(r.text)


def test_model_down_and_api_unreachable_are_503_in_words(platform):
    platform.model_down = True
    config = WebConfig(api_url=API, class_names=CLASSES, registry=False)
    with TestClient(create_app(config, transport=httpx.ASGITransport(app=platform.app()))) as c:
        r = upload(c, photo())
        assert r.status_code == 503 and "not available right now (503)" in alert(r.text)
    # nothing listens at all
    config = WebConfig(api_url="http://127.0.0.1:9", class_names=CLASSES, registry=False)
    with TestClient(create_app(config)) as c:
        r = upload(c, photo())
        assert r.status_code == 503 and "cannot be reached" in alert(r.text)


def _result(client) -> str:
    return upload(client, photo()).url.path


def test_feedback_right_wrong_and_not_food_reach_the_api(client, platform):
    path = _result(client)
    r = client.post(path + "/feedback", data={"verdict": "right"})
    assert r.status_code == 200 and 'id="saved"' in r.text
    r = client.post(path + "/feedback", data={"verdict": "wrong", "correct_class": "Rice"})
    assert r.status_code == 200 and "it is Rice" in r.text
    r = client.post(path + "/feedback", data={"verdict": "wrong", "flag": "not_food"})
    assert r.status_code == 200
    assert platform.feedback == [
        {"inference_id": "id-0", "correct": True},
        {"inference_id": "id-0", "correct": False, "correct_class": "Rice"},
        {"inference_id": "id-0", "correct": False, "flag": "not_food"},
    ]
    assert "you said: not food" in client.get("/").text
    # every answer names this visitor (the cap counts per visitor), by a hash, never the cookie
    cookie = client.cookies["gg_visitor"]
    assert len(set(platform.feedback_clients)) == 1 and re.fullmatch(r"[0-9a-f]{32}", platform.feedback_clients[0])
    assert cookie not in platform.feedback_clients[0]


def test_a_correction_waiting_for_review_and_the_daily_cap_are_said_in_words(client, platform):
    path = _result(client)
    r = client.post(path + "/feedback", data={"verdict": "wrong", "correct_class": "Rice"})
    assert r.status_code == 200 and "a person will check your correction" in r.text
    platform.feedback_mode = "capped"
    r = client.post(path + "/feedback", data={"verdict": "wrong", "correct_class": "Bread"})
    assert r.status_code == 429 and "as many corrections today as one person can" in alert(r.text)


@pytest.mark.parametrize("form, words", [
    ({"verdict": "wrong"}, "Pick the right class"),
    ({"verdict": "wrong", "correct_class": "Pizza"}, "'Pizza' is not one of the classes"),
    ({"verdict": "maybe"}, "right or wrong"),
])
def test_feedback_form_mistakes_are_400_and_nothing_is_sent(client, platform, form, words):
    path = _result(client)
    r = client.post(path + "/feedback", data=form)
    assert r.status_code == 400 and words in alert(r.text)
    assert platform.feedback == []


@pytest.mark.parametrize("mode, status, words", [
    ("down", 503, "feedback store is not available right now (503)"),
    ("missing_route", 503, "no feedback service"),
])
def test_feedback_store_faults_are_said_in_words(client, platform, mode, status, words):
    path = _result(client)
    platform.feedback_mode = mode
    r = client.post(path + "/feedback", data={"verdict": "right"})
    assert r.status_code == status and words in alert(r.text)
    assert 'id="predicted-class">Soup<' in r.text  # the result stays on screen


def test_unknown_inference_id_is_said_in_words(client, platform):
    path = _result(client)
    platform.ids.clear()
    r = client.post(path + "/feedback", data={"verdict": "right"})
    assert r.status_code == 404 and "no longer known" in alert(r.text)


def test_operator_page_shows_canary_and_drift_and_says_what_is_missing(client, platform):
    r = client.get("/operator")
    assert r.status_code == 200
    assert re.search(r'id="canary-percent-production">none<', r.text)
    platform.rollout.update(canary_traffic_percent=25, latest_revision="food11-transformer-00002")
    platform.rollout["revisions"] = [
        {"name": "food11-transformer-00001", "percent": 75, "tag": "prev", "version": "3"},
        {"name": "food11-transformer-00002", "percent": 25, "tag": "latest", "version": "4"}]
    r = client.get("/operator")
    assert re.search(r'id="canary-percent-production">25%<', r.text)
    assert "food11-transformer-00002" in r.text
    assert re.search(r'id="drift-state-production"[^>]*>no drift<', r.text)
    assert "0.031 / 0.049" in r.text
    assert "Not available: the feedback store" in r.text
    assert "Not available: the model registry is not configured" in r.text
    data = client.get("/operator.json").json()
    assert data["stages"][0]["served"]["data"]["canary_percent"] == 25


SINK = "http://capture-sink.test"


@pytest.fixture()
def sink(tmp_path):
    """The real capture sink (its app, its SQLite store) in process; the web app reads only its
    ``GET /summary``, as on the cluster, where the database is not the web app's to open."""
    from capture_sink.server import CaptureService
    from capture_sink.server import create_app as sink_app
    from gourmetgram.loop.settings import FeedbackSettings, LoopSettings, PolicySettings
    from gourmetgram.loop.store import Store
    from gourmetgram.objectstore import ObjectStore

    store = Store(f"sqlite:///{tmp_path / 'loop.db'}")
    objects = ObjectStore((tmp_path / "objects").as_uri())
    settings = LoopSettings(feedback=FeedbackSettings(wait_for_capture_s=0.0),
                            policy=PolicySettings(low_confidence=0.6, random_share=0.0))
    service = CaptureService(store, objects, settings, CLASSES)
    yield service, sink_app(service)
    store.dispose()


def _sink_sample(service, i: int, version: str, confidence: float, label: str = "Soup") -> str:
    key, sha = service.objects.put_image(photo("PNG", (8 + i, 8)), "image/png")
    service.store.upsert_sample(f"id-{i}", inference_id=f"id-{i}", instance=0, object_key=key,
                                content_sha256=sha, content_type="image/png", label=label,
                                confidence=confidence, model_version=version)
    return f"id-{i}"


def _operator_with(app, url: str = SINK + "/summary"):
    """The operator page with the summary at ``url``, served by ``app`` (None: the network)."""
    config = WebConfig(api_url=API, registry=False, feedback_summary_url=url)
    transport = httpx.ASGITransport(app=app) if app is not None else None
    with TestClient(create_app(config, transport=transport)) as c:
        return c.get("/operator")


def test_feedback_panel_shows_accuracy_by_version_and_backlog_from_the_capture_sink(sink):
    from gourmetgram.loop.feedback import record_feedback
    from gourmetgram.loop.models import ANNOTATOR, Label
    from gourmetgram.loop.policy import queue_samples
    from gourmetgram.loop.settings import PolicySettings
    from gourmetgram.loop.store import utcnow

    service, app = sink
    r = _operator_with(app)
    assert "no feedback yet" in r.text and re.search(r'id="backlog">0<', r.text)
    # ids[1]'s tag (0.7) is not sure enough for its correction to wait for an annotator
    ids = [_sink_sample(service, i, "3", c) for i, c in enumerate((0.9, 0.7, 0.3))]
    _sink_sample(service, 3, "10", 0.95)
    _sink_sample(service, 4, "3", 0.2)
    record_feedback(service.store, {"inference_id": ids[0], "correct": True, "correct_class": None, "flag": None})
    record_feedback(service.store, {"inference_id": ids[1], "correct": False, "correct_class": "Rice", "flag": None})
    record_feedback(service.store, {"inference_id": "id-3", "correct": True, "correct_class": None, "flag": None})
    # `loop queue` with room for two: the sample marked wrong first, then the least sure; one
    # unsure sample waits. The corrected one already has a (user) label: not in the backlog.
    assert queue_samples(service.store, PolicySettings(random_share=0.0, daily_budget=2)) == [
        (ids[1], "wrong"), (ids[2], "low_confidence")]
    r = _operator_with(app)
    assert r.status_code == 200
    # version 3: 2 answers, half marked right; 1 labelled (the user's correction), which says wrong
    assert '<tr id="accuracy-v3"><td>3</td><td class="answers">2</td><td class="marked-right">0.500</td>' \
           '<td class="labelled">1 (0.000)</td></tr>' in r.text

    assert '<tr id="accuracy-v10"><td>10</td><td class="answers">1</td><td class="marked-right">1.000</td>' \
           '<td class="labelled">0</td></tr>' in r.text
    assert r.text.index("accuracy-v3") < r.text.index("accuracy-v10")  # versions in number order
    assert "version 3: correct 1, corrected 1, wrong 1; version 10: correct 1." in r.text
    assert re.search(r'id="backlog">2<', r.text)
    assert re.search(r'id="backlog-to-queue">1 \(low confidence 1\)<', r.text)
    assert re.search(r'id="backlog-queued">1 \(0 in Label Studio\)<', r.text)
    # an annotator labels the queued one: it leaves the backlog
    with service.store.write() as s:
        s.add(Label(sample_id=ids[2], label_source=ANNOTATOR, label="Rice", labelled_at=utcnow()))
    r = _operator_with(app)
    assert re.search(r'id="backlog">1<', r.text) and re.search(r'id="backlog-queued">0 ', r.text)
    data = TestClient(create_app(WebConfig(api_url=API, registry=False, feedback_summary_url=SINK + "/summary"),
                                 transport=httpx.ASGITransport(app=app))).get("/operator.json").json()
    assert data["feedback"]["data"]["backlog"]["total"] == 1


def test_feedback_store_down_or_wrong_is_said_in_words(sink, platform):
    from gourmetgram.loop.models import Base

    service, app = sink
    Base.metadata.drop_all(service.store.engine)  # the sink is up, its database is not usable
    r = _operator_with(app)
    assert r.status_code == 200
    assert ("Not available: the feedback store answered 503: the feedback store&#39;s database cannot be "
            "read (OperationalError)") in r.text
    # nothing listens at the summary's address
    r = _operator_with(None, "http://127.0.0.1:9/summary")
    assert "Not available: the feedback store at http://127.0.0.1:9/summary cannot be reached" in r.text
    # something answers, but not the summary
    r = _operator_with(platform.app(), API + "/_gourmetgram/rollout")
    assert "Not available: the feedback store&#39;s summary is not in the expected form" in r.text
    assert "Traceback" not in r.text and 'id="canary-percent' not in r.text


def _prometheus_answer(series: list[tuple[dict, float]]) -> dict:
    """Prometheus's /api/v1/query answer (instant vector) for these series."""
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [1733300000.0, str(value)]} for labels, value in series]}}


def _estimate_series(revision: str, version: str, pod: str, method: str, value: float, lower: float,
                     upper: float, n: int) -> list[tuple[dict, float]]:
    labels = {"model_name": "food11", "revision": revision, "model_version": version, "stage": "production",
              "method": method, "pod": pod}
    return [({**labels, "__name__": "gourmetgram_estimated_accuracy" + suffix}, v)
            for suffix, v in (("", value), ("_lower", lower), ("_upper", upper), ("_samples", n))]


def test_operator_page_shows_the_label_free_estimate_next_to_the_measured_accuracy_and_what_changed(sink):
    """The estimates from Prometheus (two replicas of one revision, weighted by their windows), the
    measured accuracy and the ECE from the capture sink, the drift detector's "what changed" and
    the most atypical photos, their thumbnails read from the capture sink's object store."""
    from gourmetgram.loop.models import ANNOTATOR, Label, LabelTask
    from gourmetgram.loop.store import utcnow

    service, sink_app = sink
    ids = [_sink_sample(service, i, "3", 0.9) for i in range(4)]
    now = utcnow()
    with service.store.write() as s:
        for i, sample_id in enumerate(ids):
            s.add(LabelTask(sample_id=sample_id, reason="random", queued_at=now, queue_day=now.date()))
            s.add(Label(sample_id=sample_id, label_source=ANNOTATOR, label="Soup" if i < 3 else "Rice",
                        labelled_at=now))
    series = (_estimate_series("food11-predictor-00003", "3", "a", "atc_prior", 0.60, 0.55, 0.66, 300)
              + _estimate_series("food11-predictor-00003", "3", "b", "atc_prior", 0.80, 0.72, 0.87, 100)
              + _estimate_series("food11-predictor-00003", "3", "a", "atc", 0.93, 0.90, 0.95, 300))
    status = {"t": 90, "test_stat": 0.2, "threshold": 0.05, "is_drift": True, "processed": 90, "backlog": 0,
              "label_drift": {"statistic": 0.6, "window": 90},
              "profile": {"window": 90, "moved": {"properties": ["brightness down 2.1 sd (KS 0.81)"],
                                                  "classes": ["Soup: 80% of answers (prior 25%), brightness down 2.4 sd"]},
                          "atypical": [{"sample_id": ids[1], "atypicality": 3.0, "property": "brightness",
                                        "shift_sd": -3.0, "predicted": "Soup"},
                                       {"sample_id": "never-captured", "atypicality": 2.5, "property": "contrast",
                                        "shift_sd": -2.5, "predicted": "Soup"}]}}

    async def query(request: Request):
        assert "gourmetgram_estimated_accuracy" in request.query_params["query"]
        return JSONResponse(_prometheus_answer(series))

    async def detector_status(_request: Request):
        return JSONResponse(status)

    sources = Starlette(routes=[Route("/api/v1/query", query), Route("/status", detector_status)])

    async def app(scope, receive, send):  # Prometheus and the detector, else the capture sink
        target = sources if scope.get("path") in ("/api/v1/query", "/status") else sink_app
        await target(scope, receive, send)

    config = WebConfig(api_url=API, registry=False, feedback_summary_url=SINK + "/summary",
                       prometheus_url="http://prometheus.test",
                       stages=(StageSource("production", "", "http://detector.test"),))
    with TestClient(create_app(config, transport=httpx.ASGITransport(app=app))) as c:
        r = c.get("/operator")
        assert r.status_code == 200
        row = re.search(r'<tr id="estimate-food11-predictor-00003">(.*?)</tr>', r.text, re.S).group(1)
        # (0.60 x 300 + 0.80 x 100) / 400 = 0.65, the widest interval of the two replicas
        assert '<td class="est-atc_prior">0.650 [0.550, 0.870]</td>' in row
        assert '<td class="est-atc">0.930 [0.900, 0.950]</td>' in row
        assert '<td class="est-confidence">–</td>' in row
        assert '<td class="measured-random">0.750 (4)</td>' in row  # 3 of the 4 random-share labels agree
        assert "biased low" in r.text
        assert re.search(r'<td class="ece">0\.150</td><td>4 \(random share\)</td>', r.text)  # conf 0.9, acc 0.75
        assert re.search(r'id="moved-production">brightness down 2\.1 sd \(KS 0\.81\)<', r.text)
        assert "Soup: 80% of answers" in r.text
        thumbs = re.findall(r'<img src="(/operator/thumbnails/[^"]+)"', r.text)
        assert len(thumbs) == 2
        image = c.get(thumbs[0])
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(image.content)).size == (9, 8)  # the captured photo, small already
        assert c.get(thumbs[1]).status_code == 404  # the detector saw it; the sink never kept it
        data = c.get("/operator.json").json()
        assert data["estimates"]["data"][0]["methods"]["atc_prior"]["n"] == 400
    # without Prometheus the panel says why; the rest of the page stays
    config = WebConfig(api_url=API, registry=False)
    with TestClient(create_app(config)) as c:
        r = c.get("/operator")
    assert "Not available: Prometheus is not configured for this page" in r.text
    assert c.get("/operator/thumbnails/x").status_code == 404
def test_retrain_panel_shows_the_receivers_runs_trigger_steps_and_outcome(tmp_path):
    """The operator page reads the real receiver app's GET /runs (the run history it keeps)."""
    from gourmetgram.retrain.settings import load_retrain_settings
    from gourmetgram_app.local.retrain import build_trigger
    from gourmetgram_app.local.retrain import create_app as receiver_app

    trigger, _ = build_trigger(load_retrain_settings(), f"sqlite:///{tmp_path / 'loop.db'}", state_dir=tmp_path)
    receiver = receiver_app(trigger)
    config = WebConfig(api_url=API, registry=False, retrain_url="http://receiver.test")

    def page() -> str:
        with TestClient(create_app(config, transport=httpx.ASGITransport(app=receiver))) as c:
            return c.get("/operator").text

    assert "no retrain on record yet" in page()
    h = trigger.history
    h.append({"event": "started", "run_id": "retrain-1", "reasons": ["drift"], "started_at": "2026-12-01T10:00:00+00:00",
              "source": "alertmanager:GourmetGramDriftDetected"})
    h.step("retrain-1", "gate", passed=True, sets={"original": {"v1": 0.87, "v2": 0.9, "n": 368}})
    h.step("retrain-1", "canary", percent=10)
    text = page()
    assert re.search(r'class="trigger">alertmanager:GourmetGramDriftDetected \(drift\)<', text)
    assert re.search(r'class="outcome"><strong>running</strong>', text)
    assert "passed (original 0.870 -&gt; 0.900)" in text and "<td>canary</td><td>10%</td>" in text
    h.step("retrain-1", "canary", percent=50)
    h.append({"event": "finished", "run_id": "retrain-1", "status": "promoted", "version": 4})
    text = page()
    assert re.search(r'class="outcome"><strong>promoted</strong> \(version 4\)', text)
    assert "<td>canary</td><td>50%</td>" in text
    # a receiver that is down, or not configured, is said in words
    with TestClient(create_app(WebConfig(api_url=API, registry=False, retrain_url="http://127.0.0.1:9"))) as c:
        assert "the retrain receiver at http://127.0.0.1:9 cannot be reached" in c.get("/operator").text
    with TestClient(create_app(WebConfig(api_url=API, registry=False))) as c:
        assert "the retrain receiver is not configured" in c.get("/operator").text


def test_operator_page_with_every_source_down_still_renders():
    config = WebConfig(api_url="http://127.0.0.1:9", registry=False, feedback_summary_url="http://127.0.0.1:9/s",
                       stages=(StageSource("staging", "local:http://127.0.0.1:9", "http://127.0.0.1:9"),
                               StageSource("production")))
    with TestClient(create_app(config)) as c:
        r = c.get("/operator")
    assert r.status_code == 200
    reasons = re.findall(r'class="na">Not available: ([^<]+)<', r.text)
    assert any("serving status cannot be reached" in x for x in reasons)
    assert any("drift detector cannot be reached" in x for x in reasons)
    assert any("feedback store at http://127.0.0.1:9/s cannot be reached" in x for x in reasons)
    assert any("no serving status source is configured" in x for x in reasons)


def test_unknown_pages_and_methods_are_pages_not_tracebacks(client):
    r = client.get("/no/such/page")
    assert r.status_code == 404 and "There is no page here" in alert(r.text)
    r = client.get("/predict")
    assert r.status_code == 405 and alert(r.text)
    r = client.get("/uploads/nope")
    assert r.status_code == 404 and "Upload the photo again" in alert(r.text)


def test_pages_are_labelled_and_phone_ready(client):
    page = client.get("/").text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    for input_id in ("photo", "camera"):
        assert f'<label for="{input_id}">' in page
    assert re.search(r'id="camera"[^>]*accept="image/\*"[^>]*capture', page)
    result = client.get(_result(client)).text
    assert '<label for="correct-class">' in result
    assert VISITOR_COOKIE in client.cookies


def test_stage_flag_and_class_names_parse_or_say_why(tmp_path):
    s = StageSource.parse("production:served=kube:gourmetgram-production/food11,detector=http://d.svc/")
    assert (s.served_kind, s.served_target, s.detector) == ("kube", "gourmetgram-production/food11", "http://d.svc")
    for bad in ("prod:served=local:http://x", "staging:served=ftp:x", "staging:served=kube:food11",
                "staging:color=red"):
        with pytest.raises(BadInput):
            StageSource.parse(bad)
    spec = tmp_path / "model_spec.json"
    spec.write_text('{"class_names": ["a", "b"]}')
    assert read_class_names(str(spec), None) == ("a", "b")
    assert read_class_names(None, "x, y") == ("x", "y")
    assert len(read_class_names(None, None)) == 11
    with pytest.raises(BadInput, match="cannot read class names"):
        read_class_names(str(tmp_path / "missing.json"), None)


def test_serve_with_the_loop_gives_the_web_app_the_capture_sinks_summary(monkeypatch, tmp_path):
    """`serve --loop` wires the operator page to the capture sink it starts (the URL the web app
    gets as --feedback-summary); without --loop there is none, and the page says so."""
    import gourmetgram_app.local.stack as stack_module
    from gourmetgram.constants import LOOP_SUMMARY_PATH
    from gourmetgram_app.cli.main import build_parser

    seen: list[dict] = []

    class Stop(Exception):
        pass

    def recorder(**kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(stack_module, "LocalStack", recorder)
    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path / "home"))  # the receiver's token file goes there
    for extra in (["--loop", "--model-version", "3", "--no-prometheus"], ["--no-prometheus"], ["--loop"]):
        args = build_parser().parse_args(["serve", "--stage", "production", "--bundle", str(tmp_path),
                                          "--free-ports", "--no-detector", *extra])
        with pytest.raises(Stop):
            args.func(args)
    with_loop, without, with_alerting = seen
    assert with_loop["feedback_summary_url"] == with_loop["feedback_url"] + LOOP_SUMMARY_PATH
    assert with_loop["feedback_url"].startswith("http://127.0.0.1:") and with_loop["webapp"] is True
    assert "feedback_summary_url" not in without
    # no Prometheus: nothing evaluates the alerts, so no receiver or Alertmanager either
    assert with_loop["alertmanager_url"] is None and not with_loop["retrain_url"]
    # with it: Alertmanager and the receiver join the supervised processes; Prometheus sends to the
    # one and scrapes the other; the operator page reads the receiver's runs
    names = [service.name for service, _role in with_alerting["extra_services"]]
    assert names == ["capture-sink", "broker", "retrain-receiver", "alertmanager"]
    receiver = with_alerting["scrape_targets"]["retrain-receiver"]
    assert with_alerting["retrain_url"] == receiver and with_alerting["alertmanager_url"].startswith("http://127.0.0.1:")
    argv = with_alerting["extra_services"][2][0].argv
    assert argv[argv.index("--gateway") + 1] == f"http://127.0.0.1:{with_alerting['ports'].gateway}"
    assert argv[argv.index("--prometheus") + 1] == f"http://127.0.0.1:{with_alerting['ports'].prometheus}"
