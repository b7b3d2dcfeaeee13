"""The web app in a real browser against the real local stack.

Debian's headless chromium (through its chromedriver, via Selenium; no browser download)
opens the pages the web app serves in front of the real production stack as ``serve --loop``
runs it (PyTriton, kserve transformer, gateway with its inference logger, the drift detector,
the loop's broker and capture sink on SQLite), with versions in the MLflow registry. One
ordered scenario, like the rollout tests: upload -> prediction -> recent uploads; bad files;
feedback -> the feedback row in the loop store; a canary step and the production accuracy and
labelling backlog seen on the operator page; the capture sink and then the model going down
last. Screenshots of both pages go to a temporary folder, or to ``$GOURMETGRAM_SCREENSHOT_DIR``
(how docs/screenshots/ was made).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import httpx
import pytest
import torch

from gourmetgram.config import ExportConfig
from gourmetgram.constants import PRODUCTION
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.data.layout import list_images
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model
from gourmetgram_app.local.ports import Ports
from gourmetgram_app.local.stack import TRITON, LocalStack
from gourmetgram_app.local.supervisor import SIDE

pytestmark = pytest.mark.slow
SPEC = ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PHONE = (390, 844)
WAIT_S = 60


@pytest.fixture(scope="module")
def bundles(session_home, demo_pipeline_run):
    """Two exports in the model store (the only place the gateway starts canaries from): the
    demo pipeline's bundle as the stable one, its drift detector built by the pipeline (so the
    screenshots show the product working), and an untrained model as the canary."""
    from gourmetgram.control import model_store

    assert demo_pipeline_run.bundle is not None, demo_pipeline_run.out[-3000:]
    torch.manual_seed(0)
    canary = model_store() / "webapp-canary"
    export_bundle(build_model(SPEC).eval(), canary, ExportConfig(max_batch_size=8, preferred_batch_sizes=(4,)))
    return {"stable": demo_pipeline_run.bundle, "canary": canary}


@pytest.fixture(scope="module")
def registered(session_home, bundles):
    """Two registry versions: 1 in production, 2 the canary (what the operator page lists)."""
    from gourmetgram import registry
    from gourmetgram.tracking import configure_mlflow

    mlflow = configure_mlflow()
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(build_model(SPEC).eval(), name="model",
                                        serialization_format="pickle", pip_requirements=["torch"])
    versions = {}
    for name, alias in (("stable", PRODUCTION), ("canary", "canary")):
        tags = registry.version_tags(evaluation_passed=True, accuracy=0.9, dataset_fingerprint="t",
                                     bundle_uri=str(bundles[name]))
        versions[name] = registry.register_model(info.model_uri, tags, alias=alias)
    return versions


@pytest.fixture(scope="module")
def loop_db(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('webapp-loop') / 'loop.db'}"


@pytest.fixture(scope="module")
def stack(bundles, registered, loop_db, tmp_path_factory):
    """What `serve --stage production --loop` starts: the logger goes to the broker, which fans
    out to the stack's drift detector and the capture sink; feedback is routed to the capture
    sink, and the web app reads the loop's summary from it. Every process supervised."""
    from gourmetgram_app.local.loop import LoopServices

    ports, log_dir = Ports.free(), tmp_path_factory.mktemp("webapp-stack")
    loop = LoopServices(bundles["stable"], log_dir, detector_url=f"http://127.0.0.1:{ports.detector}/",
                        db_url=loop_db, objects_url=(log_dir / "objects").as_uri())
    with LocalStack(bundles["stable"], PRODUCTION, ports, log_dir=log_dir, webapp=True, detector=True,
                    prometheus=True, logger_url=loop.broker_url + "/", feedback_url=loop.capture_url,
                    feedback_summary_url=loop.summary_url, model_version=registered["stable"],
                    extra_services=[(loop.capture, SIDE), (loop.broker, SIDE)]) as running:
        yield running


@pytest.fixture(scope="module")
def loop_store(loop_db):
    """The loop's metadata store, read through its own API (as `loop status` does)."""
    from gourmetgram.loop.store import Store

    store = Store(loop_db)
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium; a missing browser fails the run (scripts/setup.sh installs it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: install Debian's chromium and chromium-driver (scripts/setup.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={PHONE[0]},{PHONE[1]}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("GOURMETGRAM_SCREENSHOT_DIR")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def photos(demo_dataset, tmp_path_factory) -> list[Path]:
    """A few evaluation photos (JPEG), upscaled like a phone's and written as files to upload."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    out = []
    for i, (path, _label) in enumerate(list_images(demo_dataset / "evaluation")[::40][:3]):
        target = folder / f"dinner-{i}.jpg"
        Image.open(path).convert("RGB").resize((480, 480)).save(target, quality=90)
        out.append(target)
    return out


def screenshot(driver, folder: Path, name: str) -> Path:
    """The whole page at phone width, as a small palette PNG."""
    from PIL import Image

    for _ in range(2):  # the page reflows once the window is taller
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(PHONE[0], max(PHONE[1], min(int(height) + 140, 2600)))
    png = driver.get_screenshot_as_png()
    driver.set_window_size(*PHONE)
    path = folder / f"{name}.png"
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64).save(path, optimize=True)
    return path


def wait_for(driver, css: str, timeout: float = WAIT_S):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def text(driver, css: str) -> str:
    return wait_for(driver, css).text


def upload(driver, stack, path: Path, field: str = "photo") -> None:
    from selenium.webdriver.common.by import By

    driver.get(stack.webapp_url + "/")
    driver.find_element(By.ID, field).send_keys(str(path))
    driver.find_element(By.ID, "tag-photo").click()


# -- the scenario ------------------------------------------------------------------------

def test_upload_shows_the_prediction_and_recent_uploads(stack, browser, photos, shots):
    from selenium.webdriver.common.by import By

    upload(browser, stack, photos[0])
    label = text(browser, "#predicted-class")
    assert label in DEMO_CLASSES
    confidence = float(text(browser, "#confidence").rstrip("%"))
    assert 0 < confidence <= 100
    top = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#top .top-label")]
    assert len(top) == 3 and top[0] == label and all(t in DEMO_CLASSES for t in top)
    # the same photo straight through the gateway gets the same answer: the page adds nothing
    import base64

    body = {"instances": [{"image": {"b64": base64.b64encode(photos[0].read_bytes()).decode()}}]}
    direct = httpx.post(f"{stack.gateway_url}/v1/models/food11:predict", json=body, timeout=60).json()
    assert direct["predictions"][0]["label"] == label
    # a second one from the phone-camera input; both are listed as recent uploads
    upload(browser, stack, photos[1], field="camera")
    wait_for(browser, "#predicted-class")
    browser.get(stack.webapp_url + "/")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#recent li")) == 2
    upload(browser, stack, photos[2])
    wait_for(browser, "#predicted-class")
    screenshot(browser, shots, "user-page")


def test_keyboard_alone_uploads_a_photo(stack, browser, photos):
    """Tab from the top of the page to the file input, then to the button, Enter."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.get(stack.webapp_url + "/")

    def tab_to(element_id: str) -> None:
        for _ in range(12):
            ActionChains(browser).send_keys(Keys.TAB).perform()  # real key presses, page-wide
            if browser.switch_to.active_element.get_attribute("id") == element_id:
                return
        raise AssertionError(f"#{element_id} cannot be reached with the Tab key")

    tab_to("photo")
    browser.switch_to.active_element.send_keys(str(photos[0]))  # what the file dialog would do
    tab_to("tag-photo")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert text(browser, "#predicted-class") in DEMO_CLASSES
    tab_to("say-right")  # the feedback buttons are reachable too


def test_a_file_that_is_not_a_photo_is_said_so(stack, browser, tmp_path):
    bad = tmp_path / "recipe.pdf"
    bad.write_bytes(b"%PDF-1.4 this is a recipe, not a photo")
    upload(browser, stack, bad)
    assert "recipe.pdf is not a photo we can read" in text(browser, "#error")


def test_an_oversized_photo_is_said_so_by_the_page_and_by_the_server(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By

    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(11 * 1024 * 1024))
    browser.get(stack.webapp_url + "/")
    browser.find_element(By.ID, "photo").send_keys(str(big))
    assert "photos up to 10.0 MB are accepted" in text(browser, "#client-error")
    # without the page's own check (an old browser, no JavaScript) the server says the same
    browser.execute_script("document.getElementById('photo').removeAttribute('data-max-bytes');"
                           "document.getElementById('upload-form').submit();")
    assert "photos up to 10.0 MB are accepted" in text(browser, "#error")


def until(check, what: str, timeout: float = WAIT_S):
    """``check()``'s first truthy value, polled until ``timeout`` (a condition, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


VERDICTS = ("wrong", "right", "not_food")  # the three feedback buttons, one photo each


@pytest.fixture(scope="module")
def answered(stack, browser, photos, loop_store, registered) -> list[dict]:
    """Three photos uploaded in the browser, each answered with one of the feedback buttons.

    Before a button is pressed, the photo's capture has reached the loop store (gateway logger ->
    broker -> capture sink): a person needs seconds to answer, the test none."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out = []
    for photo, verdict in zip(photos, VERDICTS):
        upload(browser, stack, photo)
        label = text(browser, "#predicted-class")
        inference_id = text(browser, "#inference-id")
        sample = until(lambda i=inference_id: (s := loop_store.get_sample(i)) is not None and s.complete and s,
                       f"the capture of {inference_id} in the loop store")
        assert (sample.label, sample.stage, sample.model_version) == (label, PRODUCTION, str(registered["stable"]))
        other = None
        if verdict == "wrong":
            other = next(c for c in DEMO_CLASSES if c != label)
            Select(browser.find_element(By.ID, "correct-class")).select_by_visible_text(other)
            browser.find_element(By.ID, "say-wrong").click()
        elif verdict == "right":
            browser.find_element(By.ID, "say-right").click()
        else:
            browser.find_element(By.ID, "say-not-food").click()
        assert "feedback was saved" in text(browser, "#saved")
        out.append({"inference_id": inference_id, "label": label, "verdict": verdict, "other": other,
                    "given": text(browser, "#feedback-given")})
    return out


def test_feedback_buttons_store_feedback_in_the_loop_store(answered, loop_store):
    """Each button's answer is the feedback row of that inference id, with its kind and class.

    The page says "saved" only after the platform's 200, which the capture sink sends after
    its commit: the row is there when the page says so."""
    from gourmetgram.loop.models import Feedback, Label
    from gourmetgram.loop.quality import feedback_kinds

    expected = {"wrong": ["wrong", "corrected"], "right": ["correct"], "not_food": ["wrong", "not_food"]}
    for a in answered:
        with loop_store.session() as s:
            row = s.get(Feedback, a["inference_id"])
            labels = [(lb.label, lb.label_source) for lb in s.query(Label).filter_by(sample_id=a["inference_id"])]
        assert row is not None, f"no feedback row for {a['inference_id']} ({a['verdict']})"
        assert feedback_kinds(row) == expected[a["verdict"]]
        assert row.correct is (a["verdict"] == "right")
        assert row.correct_class == a["other"]
        assert row.flag == ("not_food" if a["verdict"] == "not_food" else None)
        # a correction is also a (user) label for that sample
        assert labels == ([(a["other"], "user")] if a["verdict"] == "wrong" else [])
    given = [a["given"] for a in answered]
    assert f"it is {answered[0]['other']}" in given[0] and "right" in given[1] and "not food" in given[2]


def test_operator_page_shows_the_live_canary_percentage(stack, browser, bundles, registered, answered, shots,
                                                        loop_store):
    browser.get(stack.webapp_url + "/operator")
    assert text(browser, "#canary-percent-production") == "none"
    assert text(browser, "#drift-state-production") in ("no drift", "DRIFT")
    rollout = stack.rollout()
    rollout.canary(str(bundles["canary"]), 25, version=registered["canary"])
    browser.get(stack.webapp_url + "/operator")
    assert text(browser, "#canary-percent-production") == "25%"
    rollout.set_percent(50)
    browser.refresh()
    assert text(browser, "#canary-percent-production") == "50%"
    canary = rollout.raw_status()["latest_revision"]
    assert canary in text(browser, "#canary-production")  # the canary revision by name
    registry = text(browser, "#registry-panel")
    assert "production" in registry and "canary" in registry
    # the photos uploaded above reached the detector through the gateway's logger
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        status = httpx.get(f"{stack.detector_url}/status", timeout=5).json()
        if status["processed"] >= 3:
            break
        time.sleep(1)
    browser.refresh()
    assert "/" in text(browser, "#drift-stat-production")
    # production accuracy from the three answers above (one right) and the labelling backlog,
    # read from the capture sink's summary
    version = str(registered["stable"])
    assert text(browser, f"#accuracy-v{version} .answers") == "3"
    assert text(browser, f"#accuracy-v{version} .marked-right") == "0.333"
    # the correction is a user label at once, unless the model was at least feedback.confirm_confidence
    # sure of its tag (training numerics differ between CPUs: either may happen): then it waits
    # for an annotator, queued first with a reason of its own
    from gourmetgram.loop.models import PENDING, USER, Label

    with loop_store.session() as s:
        waiting = s.query(Label).filter_by(label_source=USER, review=PENDING).count()
    to_queue = text(browser, "#backlog-to-queue")
    if waiting:
        assert text(browser, f"#accuracy-v{version} .labelled") == "0"
        assert "confirm 1" in to_queue and "wrong 1" in to_queue, to_queue
    else:
        assert text(browser, f"#accuracy-v{version} .labelled") == "1 (0.000)"
        assert "wrong 2" in to_queue  # marked wrong or not food: queued first
    assert int(text(browser, "#backlog")) >= 2
    assert text(browser, "#backlog-queued") == "0 (0 in Label Studio)"  # nobody ran `loop queue`
    # the stable revision's label-free estimate: the transformer's metric, scraped by the stack's
    # Prometheus, read by the page through Prometheus's query API
    from selenium.webdriver.common.by import By

    stable = rollout.raw_status()["latest_rolledout_revision"]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not browser.find_elements(By.ID, f"estimate-{stable}"):
        time.sleep(2)
        browser.refresh()
    row = text(browser, f"#estimate-{stable}")
    assert row.startswith(f"{version} production {stable}") and "[" in row, row
    screenshot(browser, shots, "operator-page")


def test_feedback_store_down_is_said_in_words_and_predictions_go_on(stack, browser, photos):
    """The capture sink stopped for good: the operator page says its panel is not available,
    the rest of the page still shows, predictions still work, feedback says it was not saved."""
    from selenium.webdriver.common.by import By

    stack.stop_service("capture-sink")
    browser.get(stack.webapp_url + "/operator")
    panel = text(browser, "#feedback-panel")
    assert "Not available: the feedback store at http://127.0.0.1:" in panel and "cannot be reached" in panel
    assert text(browser, "#canary-percent-production")  # the other panels still show
    upload(browser, stack, photos[0])
    assert text(browser, "#predicted-class") in DEMO_CLASSES
    browser.find_element(By.ID, "say-right").click()
    message = text(browser, "#error")
    assert "not available right now (503)" in message and "not saved" in message
    assert "Traceback" not in browser.page_source


def test_model_down_is_a_503_in_words(stack, browser, photos):
    """Last: all traffic back to the stable revision, then its Triton stops."""
    stack.rollout().rollback()
    stack.stop_service(TRITON)
    upload(browser, stack, photos[0])
    message = text(browser, "#error")
    assert "not available right now (503)" in message
    assert "Traceback" not in browser.page_source


def test_screenshots_are_small_pngs(shots):
    for name in ("user-page", "operator-page"):
        path = shots / f"{name}.png"
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size < 200_000
