"""``gourmetgram demo``: the whole loop on this machine, from nothing, in one command.

The demo is a contract: a sequence of stages over one shared :class:`DemoContext`, each with
the outcome it promises (:class:`Stage`: ``expected``). A stage prints a heading and its
promise, does one thing, and either returns what it observed or raises
:class:`OutcomeMissing`; the demo stops at the first stage whose outcome did not happen and
exits 1 naming it. Add a stage by writing a ``(context) -> str`` function and appending a
:class:`Stage` to :data:`STAGES`.

The last stage drives nothing: simulated users and simulated annotators produce drift and
labels, and the system has to notice, retrain, stage, canary and promote by itself
(:func:`stage_self_driving`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gourmetgram.bundle import Bundle
from gourmetgram.constants import SPLITS
from gourmetgram.errors import CheckFailed
from gourmetgram.tracking import home

if TYPE_CHECKING:
    from gourmetgram_app.local.labelstudio import LabelStudioServer
    from gourmetgram_app.local.loop import ClosedLoop, LoopServices
    from gourmetgram_app.local.stack import LocalStack
    from gourmetgram_app.pipeline_runs import LocalRunResult

DEMO_CONFIG = "demo"
# Alertmanager's timings for the demo, over the chart's (30s / 5m / 4h): the first notification
# of the drift alert within seconds, and a repeat while it fires every 5-10 s, so the receiver
# looks again once enough labels are in (its guard rails hold the run back until then).
DEMO_ALERT_TIMINGS = {"groupWait": "2s", "groupInterval": "5s", "repeatInterval": "5s"}
LOOP_DEADLINE_S = 900.0  # stage 8: from the first drifted upload to v2 promoted
# Stage 8's labelling budget per day: minutes of the demo stand for days of a team's labelling,
# and stages 5-7 have already queued some of configs/loop.yaml's 200 with photos the simulated
# annotators cannot know (darkened, the bad canary's), so the corrections waiting for them
# (reason `confirm`) would wait for tomorrow. Not much more: at 2000 the policy queued ~2,000
# tasks in stage 8 and the annotators labelled 1,300 of them through Label Studio's API, CPU
# the retrain sharing the 2 cores went without; the run starts on 60 new labels.
DEMO_LABELLING_BUDGET = 300


class OutcomeMissing(CheckFailed):
    """A stage ran but its expected outcome did not happen (the message says what did)."""


@dataclasses.dataclass(frozen=True)
class Stage:
    title: str
    expected: str  # the outcome the stage promises, said before it runs
    run: Callable[["DemoContext"], str]  # what it observed; raises OutcomeMissing when the promise failed
    wanted: Callable[["DemoContext"], bool] = lambda ctx: True  # e.g. --no-serve skips the later ones


@dataclasses.dataclass
class DemoContext:
    """What the stages share: the arguments in, the results out."""

    args: argparse.Namespace
    home: Path
    dataset: Path | None = None
    run: LocalRunResult | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    cleanup: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)
    closed: ClosedLoop | None = None  # the production stack with the loop, once serving
    label_studio: LabelStudioServer | None = None  # starting in the background
    demo_dir: Path | None = None  # this run's loop store, object store and retrain history
    retrain_config: str = "retrain"  # what the receiver's runs train with (configs/retrain.yaml)
    # inference id -> true class of every photo the simulation sent (the simulated annotators' knowledge)
    truth: dict[str, str] = dataclasses.field(default_factory=dict)
    truth_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    # What a stage needs from an earlier one (a clear error if the order is ever wrong).
    @property
    def data(self) -> Path:
        return _needed(self.dataset, "the demo dataset (stage data)")

    @property
    def result(self) -> LocalRunResult:
        return _needed(self.run, "the pipeline run (stage pipeline)")

    @property
    def loop_stack(self) -> ClosedLoop:
        return _needed(self.closed, "the serving stack with the loop (stage serve)")

    @property
    def serving(self) -> LocalStack:
        return self.loop_stack.stack

    @property
    def loop_services(self) -> LoopServices:
        return self.loop_stack.loop

    @property
    def detector_url(self) -> str:
        return self.serving.detector_url

    @property
    def prometheus_url(self) -> str:
        return self.serving.prometheus_url

    @property
    def bundle(self) -> Path:
        return Path(self.result.outcome.bundle_uri)

    @property
    def retrain_dir(self) -> Path:
        return _needed(self.demo_dir, "the demo's state folder (stage data)") / "retrain"

    def know(self, inference_id: str | None, label: str) -> None:
        if inference_id:
            with self.truth_lock:
                self.truth[inference_id] = label


def _needed(value, what: str):
    if value is None:
        raise RuntimeError(f"demo stage order: {what} has not run yet")
    return value


def _heading(title: str, expected: str) -> None:
    print(f"\n{'#' * 78}\n# {title}\n#   expected outcome: {expected}\n{'#' * 78}", flush=True)


# -- stage 1: data ------------------------------------------------------------------------------

def _dataset_present(root: Path) -> bool:
    """The whole demo dataset: its splits and the evaluation sets the demo config's report reads
    (a dataset written without them, as a benchmark's photos once were, is rebuilt)."""
    from gourmetgram.evaluation.demo_sets import EVAL_SETS_DIR

    return ((root / "classes.txt").is_file() and all((root / s).is_dir() for s in SPLITS)
            and (root / EVAL_SETS_DIR).is_dir())


def stage_data(ctx: DemoContext) -> str:
    """Build the embedded demo dataset unless it is already there."""
    from gourmetgram.data.demo import build_demo_dataset

    root = ctx.home / "data" / "demo"
    if ctx.args.rebuild_data or not _dataset_present(root):
        print(f"building the demo dataset in {root} (scikit-learn's handwritten digits, no download)")
        build_demo_dataset(root)
    else:
        print(f"using the demo dataset in {root} (--rebuild-data to write it again)")
    if not _dataset_present(root):
        raise OutcomeMissing(f"{root} has no classes.txt or no {'/'.join(SPLITS)} folders")
    ctx.dataset = root
    return f"the demo dataset in {root}"


# -- stage 2: the training pipeline ------------------------------------------------------------

def stage_pipeline(ctx: DemoContext) -> str:
    """Run the KFP training pipeline locally with the demo config."""
    from gourmetgram_app.pipeline_runs import format_summary, run_local

    ctx.run = run_local(str(ctx.dataset), DEMO_CONFIG, epochs=ctx.args.epochs, stage=ctx.args.stage)
    if not ctx.result.registered:
        print(format_summary(ctx.result))
        raise OutcomeMissing("the evaluation gate rejected the model: "
                             + "; ".join(ctx.result.outcome.reasons or ctx.result.reasons))
    o = ctx.result.outcome
    return f"version {o.version} registered (alias {o.alias!r}), bundle {o.bundle_uri}"


# -- stage 3: report ----------------------------------------------------------------------------

def stage_report(ctx: DemoContext) -> str:
    """The evaluation report, the gate's verdict and where everything is."""
    from gourmetgram_app.pipeline_runs import format_summary

    print(format_summary(ctx.result))
    return (f"accuracy {ctx.result.evaluation.metrics['eval/accuracy']:.3f} on {ctx.result.evaluation.n_images} "
            "evaluation images")


# -- stage 4: serve --------------------------------------------------------------------------------

SERVE_SAMPLE = 100  # evaluation images sent through the stack


def _sample(ctx: DemoContext, n: int) -> list[tuple[Path, int]]:
    """``n`` evaluation images in a fixed random order: users do not send photos sorted by
    class (a class-sorted stream is a real shift of the class mix, and the detector says so)."""
    import random

    from gourmetgram.data.layout import list_images

    items = list_images(ctx.data / "evaluation")
    sample = items[:: max(1, len(items) // n)][:n]
    random.Random(0).shuffle(sample)
    return sample


def _isolate_loop_state(ctx: DemoContext) -> Path:
    """This run's loop store, object store and retrain history, in a fresh folder: the guard
    rails ("50 new labels since the last retrain", the cool-down) then count this run only, so
    a second demo behaves as the first. The variables are restored when the demo ends."""
    import os
    import shutil

    from gourmetgram.loop.settings import ENV_DB_URL, ENV_OBJECTS_URL

    root = ctx.home / "demo-run"
    shutil.rmtree(root, ignore_errors=True)
    (root / "loop").mkdir(parents=True)
    saved = {k: os.environ.get(k) for k in (ENV_DB_URL, ENV_OBJECTS_URL)}
    os.environ[ENV_DB_URL] = f"sqlite:///{root / 'loop' / 'loop.db'}"
    os.environ[ENV_OBJECTS_URL] = (root / "loop" / "objects").as_uri()

    def restore() -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    ctx.cleanup.callback(restore)
    ctx.demo_dir = root
    return root


def _stop_running_retrain(ctx: DemoContext) -> None:
    """At the demo's end: a retrain job still running (a missed deadline) is stopped with it."""
    import os
    import signal

    from gourmetgram.retrain.lock import RunLock

    holder = RunLock(ctx.retrain_dir / "lock.json").current()
    if holder is not None and holder.pid > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(holder.pid, signal.SIGTERM)  # its own session: the job and its steps


def stage_serve(ctx: DemoContext) -> str:
    """The production stack with the new model, and the loop around it as `serve --loop` runs it:
    drift detector, broker, capture sink, Prometheus with the chart's rules, Alertmanager with the
    chart's route, the retrain receiver; evaluation images through the gateway."""
    import httpx
    import numpy as np
    import onnxruntime as ort

    from gourmetgram import registry
    from gourmetgram.constants import MODEL_NAME, PRODUCTION
    from gourmetgram.export import load_model_spec
    from gourmetgram.preprocessing import preprocess_batch
    from gourmetgram_app.local.loop import closed_loop
    from gourmetgram_app.local.ports import Ports
    from gourmetgram_app.local.traffic import predict

    version = ctx.result.outcome.version
    registry.set_stage(PRODUCTION, version)
    print(f"registry: version {version} now also has alias {PRODUCTION!r}")
    ctx.label_studio = _start_label_studio(ctx)  # slow to come up: started first, awaited in stage 5
    demo_dir = _isolate_loop_state(ctx)
    print(f"this run's loop store and retrain history: {demo_dir}")
    if ctx.args.epochs != -1:  # --epochs N: the loop's retrain too, when it trains from scratch
        import yaml

        from gourmetgram.config import read_yaml, resolve_config_path

        retrain = read_yaml(resolve_config_path("retrain"))
        retrain.setdefault("run", {})["epochs"] = ctx.args.epochs
        (demo_dir / "retrain.yaml").write_text(yaml.safe_dump(retrain, sort_keys=False))
        ctx.retrain_config = str(demo_dir / "retrain.yaml")
    ctx.closed = closed_loop(ctx.bundle, PRODUCTION, Ports.free(), model_version=version,
                             log_dir=ctx.home / "logs" / "demo", fixed_ports=False, webapp=False,
                             alert_timings=DEMO_ALERT_TIMINGS, retrain_state_dir=ctx.retrain_dir,
                             retrain_config=ctx.retrain_config)
    for note in ctx.loop_stack.notes:
        print(f"note: {note}")
    ctx.serving.start()
    ctx.cleanup.callback(ctx.serving.stop)
    ctx.cleanup.callback(_stop_running_retrain, ctx)  # runs first: before the stack it stages on goes
    for name, url in ctx.loop_stack.endpoints().items():
        print(f"  {name:<24} {url}")
    alerting = ctx.loop_stack.alerting
    if alerting is not None:
        route = alerting.route()
        print(f"Alertmanager route (rendered from the chart's AlertmanagerConfig, demo timings "
              f"{DEMO_ALERT_TIMINGS}): {', '.join(route['matchers'])} -> {route['receiver']} at "
              f"{alerting.receiver_url}/alerts")

    sample = _sample(ctx, SERVE_SAMPLE)
    images = [path.read_bytes() for path, _ in sample]
    with httpx.Client(timeout=60) as client:
        answers = [predict(client, ctx.serving.gateway_url, blob) for blob in images]
    ok = [r for r in answers if r.status_code == 200]
    if len(ok) < len(answers):
        raise OutcomeMissing(f"{len(answers) - len(ok)} of {len(answers)} predictions failed "
                             f"(first: {next(r for r in answers if r.status_code != 200).text[:200]})")
    served = [r.json()["predictions"][0] for r in answers]
    session = ort.InferenceSession(str(Bundle(ctx.bundle, MODEL_NAME).onnx_path),
                                   providers=["CPUExecutionProvider"])
    size = load_model_spec(ctx.bundle).image_size
    # the in-process model: the served graph with the bundle's calibration (temperature, OOD threshold)
    local = Bundle(ctx.bundle).load_calibration().score(
        session.run(None, {session.get_inputs()[0].name: preprocess_batch(images, size)})[0])
    names = ctx.result.evaluation.class_names
    print(f"\n{'image':<28} {'true':<8} {'served':<8} confidence  ood_score  in distribution")
    for (path, label), pred in list(zip(sample, served))[:8]:
        print(f"{path.parent.name + '/' + path.name:<28} {names[label]:<8} {pred['label']:<8} {pred['confidence']:10.3f}"
              f"  {pred.get('ood_score', float('nan')):9.2f}  {pred.get('in_distribution')}")
    agree = np.mean([p["class_index"] == int(c) for p, c in zip(served, local.predicted)])
    confidence_gap = max(abs(p["confidence"] - c) for p, c in zip(served, local.confidence))
    accuracy = np.mean([p["class_index"] == label for p, (_, label) in zip(served, sample)])
    print(f"\nserved {len(served)} evaluation images: accuracy {accuracy:.3f} "
          f"(offline evaluation: {ctx.result.evaluation.metrics['eval/accuracy']:.3f} on all "
          f"{ctx.result.evaluation.n_images}); same class as the in-process model for {agree:.1%}, "
          f"calibrated confidence within {confidence_gap:.1e} of it")
    if alerting is None:
        raise OutcomeMissing("the loop cannot close by itself: " + "; ".join(ctx.loop_stack.notes))
    return (f"{len(served)}/{len(answers)} predictions answered through the gateway; the loop's services "
            "(broker, capture sink, detector, Prometheus, Alertmanager, retrain receiver) up")


# -- stage 5: closing the loop -----------------------------------------------------------------------

LOOP_PHOTOS = 60  # "new" user photos (evaluation images re-encoded: new bytes, new content hash)
LOOP_FEEDBACK = 30


def _label_studio_credentials(ctx: DemoContext) -> dict[str, str]:
    """LABEL_STUDIO_USERNAME/PASSWORD/API_KEY from the environment, else generated once for this
    machine and kept (mode 600) next to Label Studio's data, so its first user stays valid."""
    import json
    import secrets

    from gourmetgram.environment import environment
    from gourmetgram.loop.settings import ENV_LS_PASSWORD, ENV_LS_TOKEN, ENV_LS_USERNAME, loop_home

    path = loop_home() / "label-studio-credentials.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    env = environment()
    creds = {ENV_LS_USERNAME: env.label_studio_username or saved.get(ENV_LS_USERNAME) or "admin@gourmetgram.local",
             ENV_LS_PASSWORD: env.label_studio_password or saved.get(ENV_LS_PASSWORD) or secrets.token_urlsafe(12),
             ENV_LS_TOKEN: env.label_studio_api_key or saved.get(ENV_LS_TOKEN) or secrets.token_hex(20)}
    if creds != saved:
        path.write_text(json.dumps(creds))
        path.chmod(0o600)
    return creds


def _start_label_studio(ctx: DemoContext):
    """Label Studio in its own process (own venv); None (the loop stage says why) if not installed."""
    import os

    from gourmetgram.loop.labelstudio import LabelStudioUnavailable
    from gourmetgram.loop.settings import loop_home
    from gourmetgram.rollout.prometheus import free_port
    from gourmetgram_app.local.labelstudio import LabelStudioServer

    os.environ.update(_label_studio_credentials(ctx))
    try:
        server = LabelStudioServer(loop_home() / "label-studio", port=free_port(),
                                   log_path=ctx.home / "logs" / "demo" / "label-studio.log")
    except LabelStudioUnavailable as exc:
        print(f"(Label Studio: {exc})")
        return None
    server.service.start(cwd=ctx.home)
    ctx.cleanup.callback(server.stop)
    return server


def _reencode(blob: bytes) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(blob)).convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def _main(argv: list[str]) -> int:
    """Run ``gourmetgram ARGV`` in this process (``loop``, ``data``)."""
    from gourmetgram_app.cli.inprocess import run_command

    return run_command(argv[0], *argv[1:])


def stage_loop(ctx: DemoContext) -> str:
    """Captured predictions, simulated user feedback, the labelling queue into Label Studio,
    simulated annotators, annotations back, a labelled export, and the loop's status."""
    import random

    import httpx

    from gourmetgram.errors import BadInput
    from gourmetgram.loop.labelstudio import client
    from gourmetgram.loop.store import open_store
    from gourmetgram_app.local.traffic import predict

    store = open_store()

    def served_label(sample_id: str) -> str | None:
        row = store.get_sample(sample_id)
        return None if row is None else row.label

    rng = random.Random(0)
    names = ctx.result.evaluation.class_names
    sample = _sample(ctx, LOOP_PHOTOS + 40)[40:]  # others than the serve stage's first ones
    truth: dict[str, str] = {}
    with httpx.Client(timeout=60) as http:
        for path, class_index in sample:
            r = predict(http, ctx.serving.gateway_url, _reencode(path.read_bytes()))
            truth[r.headers["x-inference-id"]] = names[class_index]
            ctx.know(r.headers.get("x-inference-id"), names[class_index])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = http.get(f"{ctx.loop_services.capture_url}/status").json()
            if st["captured"] >= len(truth):
                break
            time.sleep(0.5)
        print(f"{len(truth)} new user photos served; the capture sink holds {st['captured']} predictions "
              f"(image in the object store, prediction + model version {ctx.result.outcome.version} in SQLite), "
              f"every response carried X-Inference-Id")
        print(f"\n[SIMULATED USERS] feedback on {LOOP_FEEDBACK} predictions through POST {ctx.serving.gateway_url}/v1/feedback")
        kinds = {"correct": 0, "wrong": 0, "corrected": 0, "flagged": 0}
        for i, (inference_id, label) in enumerate(list(truth.items())[:LOOP_FEEDBACK]):
            body: dict = {"inference_id": inference_id}
            served = served_label(inference_id)
            body["correct"] = served == label
            if not body["correct"] and rng.random() < 0.7:
                body["correct_class"] = label
                kinds["corrected"] += 1
            if i % 15 == 7:
                body["flag"] = "not_food"
                kinds["flagged"] += 1
            kinds["correct" if body["correct"] else "wrong"] += 1
            r = http.post(f"{ctx.serving.gateway_url}/v1/feedback", json=body)
            if r.status_code != 200:
                print(f"  feedback {r.status_code}: {r.text[:200]}")
        print("  " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    ls = ctx.label_studio
    if ls is None:
        raise OutcomeMissing("Label Studio is not installed (scripts/setup.sh installs it into .venv-labelstudio)")
    print(f"\nwaiting for Label Studio at {ls.url} (first start: database migrations, a minute or two)...", flush=True)
    try:
        ls.service.wait_ready(600)
    except BadInput as exc:
        raise OutcomeMissing(f"Label Studio did not come up: {exc}") from None
    ls_args = ["--labelstudio-url", ls.url, "--bundle", str(ctx.bundle)]
    _main(["loop", "queue", *ls_args])
    api = client(ls.url)
    project = next(p for p in api.projects.list() if p.title == "GourmetGram production samples")
    tasks = [t for t in api.tasks.list(project=project.id, fields="all")
             if not t.annotations and t.data.get("sample_id") in truth]
    print(f"\n[SIMULATED ANNOTATORS] labelling {len(tasks)} task(s) through Label Studio's API "
          "(a stand-in for people clicking in the UI; they know the true class of these demo photos)")
    for t in tasks:
        api.annotations.create(id=t.id, result=[{"from_name": "label", "to_name": "image", "type": "choices",
                                                 "value": {"choices": [truth[t.data["sample_id"]]]}}])
    _main(["loop", "sync", *ls_args])
    out = ctx.home / "data" / "production"
    code = _main(["loop", "export", "--bundle", str(ctx.bundle), "--base", str(ctx.dataset), "--output", str(out),
                 "--overwrite"])
    valid = code == 0 and _main(["data", "validate", str(out)]) == 0
    print()
    _main(["loop", "status", "--state-dir", str(ctx.retrain_dir)])
    print(f"\nLabel Studio: {ls.url} (user {ls.username}; password and token in "
          f"$GOURMETGRAM_HOME/loop/label-studio-credentials.json); it stops with the demo: "
          "`gourmetgram loop labelstudio` starts it again")
    from gourmetgram.loop import quality

    with store.session() as s:
        st = quality.status(s)
    if not st["labelled_by_annotator"]:
        raise OutcomeMissing("no annotation came back from Label Studio into the loop store")
    if not valid:
        raise OutcomeMissing(f"the labelled export {out} is not a valid dataset (see above)")
    return (f"{st['labelled_by_annotator']} label(s) back from Label Studio, {st['corrected_by_user']} user "
            f"correction(s); a valid labelled export in {out}")


# -- stage 6: canary rollout ---------------------------------------------------------------------

# `rollout auto` judges the demo's canaries as the loop judges its own on this local stack: the
# rollout config with the retrain config's release.canary fields over it (thin traffic: a short
# window, few requests, the 5xx margin a minute of it can show), its steps 10 -> 50 -> promote.
DEMO_AUTO_TIMEOUT_S = 240


def _int8_candidate(ctx: DemoContext) -> tuple[int, str]:
    """The good canary: version 1's network quantized to INT8 (ONNX Runtime static quantization,
    behind its accuracy gate against FP32), registered as a new version of the same logged model.
    A real release of another artifact: other weights' numerics, a quarter of the size."""
    from components.steps.registration import logged_model_uri
    from gourmetgram import registry
    from gourmetgram.config import load_config
    from gourmetgram.quantize import quantize_bundle

    v1 = ctx.result.outcome
    target = ctx.home / "models" / f"{Path(v1.bundle_uri).name}-int8"
    report = quantize_bundle(ctx.bundle, ctx.data, target, load_config(DEMO_CONFIG).export, overwrite=True)
    print(report.summary())
    if not report.passed:
        raise OutcomeMissing(f"the INT8 variant of version {v1.version} failed its accuracy gate: "
                             + "; ".join(report.problems))
    tags = registry.version_tags(evaluation_passed=True, accuracy=report.int8_accuracy,
                                 dataset_fingerprint=registry.get_version(v1.version).tags.get(registry.TAG_DATASET_FINGERPRINT, ""),
                                 bundle_uri=str(target), run_id=ctx.result.mlflow_run_id)
    tags.update({"precision": "int8", "derived_from_version": str(v1.version)})
    version = registry.register_model(logged_model_uri(ctx.result.mlflow_run_id), tags, alias=None)
    what = (f"version {version}: version {v1.version}'s network quantized to INT8 (accuracy "
            f"{report.fp32_accuracy:.3f} -> {report.int8_accuracy:.3f}, top-1 agreement {report.top1_agreement:.3f}, "
            f"{report.fp32_bytes / 1e6:.1f} -> {report.int8_bytes / 1e6:.1f} MB)")
    return version, what


def _bad_candidate(ctx: DemoContext) -> Path:
    """A deliberately bad model: the same network, its head answering one class for everything."""
    import torch

    from gourmetgram.config import load_config
    from gourmetgram.export import export_bundle, load_model_spec
    from gourmetgram.model import build_model

    model = build_model(load_model_spec(ctx.bundle)).eval()
    head = model.classifier[-1]
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[0] = 0.5
    target = ctx.home / "models" / "demo-bad-candidate"
    export_bundle(model, target, load_config(DEMO_CONFIG).export, overwrite=True)
    return target


def _rollout(*argv: str) -> int:
    """Run ``gourmetgram rollout ARGV`` in this process; errors propagate to the entry point
    (which maps them to exit codes), so the demo stops with the rollout's own message."""
    from gourmetgram_app.cli.inprocess import run_command

    return run_command("rollout", *argv)


SHADOW_REQUESTS = 30


def _shadow_first(gateway: str, source: list[str], images: list[bytes]) -> None:
    """The candidate in shadow before its canary: it answers a copy of every request, never a
    user, and the comparison on the same requests says whether it is ready for a canary."""
    import httpx

    from gourmetgram.errors import CheckFailed
    from gourmetgram.rollout.local import LocalRollout
    from gourmetgram_app.local.traffic import predict

    gw = ["--gateway", gateway]
    print("\n--- shadow first: the candidate answers a mirrored copy of every request, never a user")
    if _rollout("shadow", "start", "--percent", "100", *source, *gw) != 0:
        raise CheckFailed("could not start the shadow (see above)")
    sent = images[:SHADOW_REQUESTS]
    try:
        with httpx.Client(timeout=60) as client:
            for blob in sent:
                predict(client, gateway, blob)
        backend = LocalRollout(gateway)
        deadline = time.monotonic() + 60
        while backend.shadow_detail()["shadow"]["pairs"] < len(sent) and time.monotonic() < deadline:
            time.sleep(0.5)
        decision = _rollout("shadow", "analyze", "--min-pairs", str(max(1, len(sent) - 10)), *gw)
        print(f"shadow analysis exit {decision} ({'ready for a canary' if decision == 0 else 'not ready'})")
    finally:
        _rollout("shadow", "stop", *gw)


def stage_canary(ctx: DemoContext) -> str:
    """A good canary (another model than the one serving) promoted through the rollout config's
    steps and a bad one rolled back, by `rollout auto` against the stack's Prometheus."""
    from gourmetgram import registry
    from gourmetgram.constants import PRODUCTION
    from gourmetgram.retrain.settings import load_retrain_settings
    from gourmetgram.rollout.config import save_config
    from gourmetgram.rollout.local import LocalRollout
    from gourmetgram_app.local.traffic import BackgroundTraffic

    gateway = ctx.serving.gateway_url
    print(f"Prometheus at {ctx.prometheus_url} scraping the gateway, every revision and the detector")
    images = [path.read_bytes() for path, _ in _sample(ctx, 40)]
    gw = ["--gateway", gateway]
    prom = ["--prometheus", ctx.prometheus_url]
    config = load_retrain_settings(ctx.retrain_config).release.canary.rollout()
    auto = ["--config", str(save_config(config, ctx.home / "demo-run" / "rollout-local.yaml")),
            "--timeout", str(DEMO_AUTO_TIMEOUT_S)]
    steps = config.auto.steps
    first = steps[0] if steps else 30
    v1 = ctx.result.outcome.version
    good, good_what = _int8_candidate(ctx)
    print(f"good canary: {good_what}; it replaces version {v1} (FP32), serving now")
    candidates = [("good", f"version {good} (INT8 variant of version {v1})", ["--version", str(good)]),
                  ("bad", "a deliberately bad model (answers one class for everything)",
                   ["--bundle", str(_bad_candidate(ctx))])]
    _shadow_first(gateway, candidates[0][2], images)  # the new candidate, before its canary
    decisions: dict[str, int] = {}
    for kind, title, source in candidates:
        print(f"\n--- canary: {title} at {first}%, then {list(steps[1:]) or '-'} (configs/rollout.yaml auto.steps), "
              "then promote")
        if _rollout("canary", "--percent", str(first), *source, *gw) != 0:
            raise OutcomeMissing(f"could not start the {kind} canary (see above)")
        with BackgroundTraffic(gateway, images) as traffic:
            decisions[kind] = _rollout("auto", *gw, *prom, *auto)
        failed = sum(code != 200 for code in traffic.codes)
        print(f"rollout auto exit {decisions[kind]} ({'promoted' if decisions[kind] == 0 else 'rolled back / held'}); "
              f"{len(traffic.codes)} predictions served during the rollout, {failed} failed")
    _rollout("status", *gw)
    state = LocalRollout(gateway).state()
    if decisions["good"] != 0 or registry.version_for(PRODUCTION) != good:
        raise OutcomeMissing(f"the good canary (version {good}) was not promoted (rollout auto exit "
                             f"{decisions['good']}; production alias -> {registry.version_for(PRODUCTION)})")
    if decisions["bad"] == 0 or state.canary_percent != 0:  # rolled back: the new revision kept at 0%
        raise OutcomeMissing(f"the bad canary was not rolled back (rollout auto exit {decisions['bad']}, "
                             f"canary {state.canary} at {state.canary_percent}%)")
    return f"good canary promoted (version {good}, INT8, replacing version {v1}); bad canary rolled back"


# -- stage 7: drift -------------------------------------------------------------------------------

def _darken(blob: bytes, factor: float = 0.4) -> bytes:
    import io

    from PIL import Image, ImageEnhance

    out = io.BytesIO()
    ImageEnhance.Brightness(Image.open(io.BytesIO(blob)).convert("RGB")).enhance(factor).save(out, "JPEG")
    return out.getvalue()


DRIFT_ALERT = "GourmetGramDriftDetected"
ALERT_DELIVERY_S = 90.0  # Prometheus evaluates every second; Alertmanager's group wait; the webhook


def stage_drift(ctx: DemoContext) -> str:
    """In-distribution traffic, then darker photos: the logger feeds the detector, which raises
    drift; Prometheus fires the chart's drift alert and Alertmanager delivers it to the retrain
    receiver, whose guard rails decide (here: not yet, too few new labels)."""
    import httpx

    from gourmetgram_app.local.traffic import predict

    images = [path.read_bytes() for path, _ in _sample(ctx, 120)]

    def status() -> dict:
        return httpx.get(f"{ctx.detector_url}/status", timeout=10).json()

    def settle(at_least: int = 0, timeout_s: float = 60) -> dict:
        """Wait until the detector has processed every event it has accepted so far. On a slow
        machine the canary stage can leave a backlog; counting from it judged the darkened photos
        before the detector saw them."""
        target = max(at_least, status().get("received", 0))  # the logger delivers asynchronously
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and status().get("processed", 0) < target:
            time.sleep(0.5)
        return status()

    with httpx.Client(timeout=60) as client:
        backlog = status().get("backlog", 0)
        if backlog:
            print(f"the detector has a backlog of {backlog} event(s) from the canary stage; waiting for it", flush=True)
            settle(timeout_s=300)
        before = status().get("processed", 0)
        for blob in images:
            predict(client, ctx.serving.gateway_url, blob)
        s = settle(before + len(images))
        print(f"{len(images)} in-distribution photos: drift {'YES' if s.get('is_drift') else 'no'}, "
              f"test statistic {s.get('test_stat', 0):.4g} (threshold {s.get('threshold', 0):.4g})")
        detected_at = None
        for n, blob in enumerate(images, 1):
            predict(client, ctx.serving.gateway_url, _darken(blob))
            s = settle(before + len(images) + n)
            if s.get("is_drift"):
                detected_at = n
                break
    print(f"predictions are never delayed by the detector: the gateway logs asynchronously "
          f"(dropped events: see logger_events_dropped_total on {ctx.serving.gateway_url}/metrics)")
    if not detected_at:
        raise OutcomeMissing(f"no drift flagged after {len(images)} darkened photos (detector status: {s})")
    print(f"DRIFT ALARM after {detected_at} darkened photos: test statistic {s.get('test_stat', 0):.4g} > "
          f"threshold {s.get('threshold', 0):.4g}; drift_state is 1 on {ctx.detector_url}/metrics")
    alerting = ctx.loop_stack.alerting
    assert alerting is not None  # stage serve promised it
    fired = delivered = None
    deadline = time.monotonic() + ALERT_DELIVERY_S
    while time.monotonic() < deadline and not (fired and delivered):
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            alerts = httpx.get(f"{ctx.prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            fired = fired or next((a for a in alerts if a["labels"].get("alertname") == DRIFT_ALERT
                                   and a.get("state") == "firing"), None)
            last = httpx.get(f"{alerting.receiver_url}/status", timeout=5).json().get("last_alert") or {}
            delivered = delivered or (last if DRIFT_ALERT in last.get("alerts", []) else None)
        time.sleep(1)
    if not fired:
        raise OutcomeMissing(f"Prometheus did not fire {DRIFT_ALERT} within {ALERT_DELIVERY_S:.0f} s")
    print(f"Prometheus: {DRIFT_ALERT} firing (charts/gourmetgram/rules/gourmetgram.rules.yml)")
    if not delivered:
        raise OutcomeMissing(f"Alertmanager did not deliver {DRIFT_ALERT} to the retrain receiver within "
                             f"{ALERT_DELIVERY_S:.0f} s (log: {alerting.log_dir / 'alertmanager.log'})")
    answer = f"started run {delivered['run_id']}" if delivered.get("started") else delivered.get("message")
    print(f"Alertmanager -> retrain receiver: {answer}")
    return (f"drift flagged after {detected_at} darkened photos; {DRIFT_ALERT} fired and reached the retrain "
            f"receiver ({'a retrain started' if delivered.get('started') else 'held back by its guard rails'})")


# -- stage 8: the loop closes by itself ------------------------------------------------------------

# Stage 8's traffic: LOOP_USERS threads of simulated users, each pausing LOOP_USERS_PAUSE_S between
# uploads (about 15 photos a second on 2 idle cores). The canary at 10% gets a tenth of it, and its
# verdict waits on about a hundred answers from the users about its tags: thinner traffic makes the
# canary step the longest part of the stage, heavier traffic slows the retrain sharing the cores.
LOOP_USERS = 3
LOOP_USERS_PAUSE_S = 0.1


def stage_self_driving(ctx: DemoContext) -> str:
    """Simulated users upload drifted photos (night shots) and answer about the tags; simulated
    annotators label what the policy queues in Label Studio. Nothing else is driven: the demo
    only watches the system notice, retrain, stage, canary and promote by itself, and prints each
    event with its time, until the run ends or the deadline passes."""
    from datetime import datetime, timezone

    from gourmetgram import registry
    from gourmetgram.constants import PRODUCTION
    from gourmetgram.data.layout import list_images
    from gourmetgram.loop.labelstudio import LabelQueue, client
    from gourmetgram.loop.settings import load_loop_settings
    from gourmetgram.loop.store import open_store
    from gourmetgram.objectstore import ObjectStore
    from gourmetgram.retrain.history import History
    from gourmetgram.retrain.settings import load_retrain_settings
    from gourmetgram_app.local.annotators import SimulatedAnnotators
    from gourmetgram_app.local.loopwatch import LoopWatcher
    from gourmetgram_app.local.simulate import Behaviour, Population, SimulatedUsers

    alerting, ls = ctx.loop_stack.alerting, ctx.label_studio
    assert alerting is not None and ls is not None  # stages serve and loop promised them
    deadline_s = float(ctx.args.loop_deadline)
    before = registry.version_for(PRODUCTION)
    settings = load_retrain_settings(ctx.retrain_config)
    names = ctx.result.evaluation.class_names
    items = list_images(ctx.data / "training")  # never the evaluation set: v2 is judged on it
    items = items[:: max(1, len(items) // 300)][:300]
    population = Population.from_images(items, names)
    users = SimulatedUsers(ctx.serving.gateway_url, population, Behaviour(drifted_share=0.5), seed=8,
                           workers=LOOP_USERS, pause_s=LOOP_USERS_PAUSE_S)

    def truth() -> dict[str, str]:
        with ctx.truth_lock:
            known = dict(ctx.truth)
        known.update({s.inference_id: s.label for s in list(users.report.served) if s.inference_id})
        return known

    loop_settings = load_loop_settings()
    queue = LabelQueue(open_store(), ObjectStore(), names, client(ls.url),
                       title=loop_settings.labelstudio.project_title)
    policy = dataclasses.replace(loop_settings.policy, daily_budget=DEMO_LABELLING_BUDGET)
    annotators = SimulatedAnnotators(queue, policy, truth, out=lambda line: print(line, flush=True))
    history = History(ctx.retrain_dir / "history.jsonl")
    started_at = datetime.now(timezone.utc)
    watcher = LoopWatcher(history, ctx.prometheus_url, alerting.receiver_url, since=started_at,
                          alerts=tuple(settings.triggers.drift_alerts + settings.triggers.degradation_alerts))
    print(f"[SIMULATED USERS] {LOOP_USERS} users uploading photos of the training split, half of them night shots, "
          f"answering about the tags through {ctx.serving.gateway_url}/v1/feedback")
    print(f"[SIMULATED ANNOTATORS] every {annotators.every_s:g} s: the labelling policy's queue into Label Studio "
          f"({ls.url}; a budget of {DEMO_LABELLING_BUDGET} a day for the demo, {loop_settings.policy.daily_budget} in "
          "configs/loop.yaml), the photos they know labelled, annotations synced back")
    print(f"then nothing but waiting (up to {deadline_s:.0f} s) for the system: the drift alert -> Alertmanager -> "
          f"the retrain receiver (guard rails: {settings.guards.min_new_labels} new labels, cool-down "
          f"{settings.guards.cooldown}) -> export -> retrain -> gate -> register -> staging gate -> canary "
          "-> promote or roll back\n", flush=True)
    t0 = time.monotonic()
    run = None
    with users, annotators:
        while time.monotonic() - t0 < deadline_s:
            for event in watcher.poll():
                print(f"[+{time.monotonic() - t0:5.0f} s  {event.at.astimezone():%H:%M:%S}] {event.text}", flush=True)
            run = watcher.finished_run()
            if run is not None:
                break
            time.sleep(1)
    print(f"\n[SIMULATED USERS]\n{users.report.format()}")
    print(f"[SIMULATED ANNOTATORS] labelled {annotators.labelled} task(s), {annotators.synced} label(s) synced")
    if run is None:
        started = [r for r in watcher.runs.values() if "started" in r]
        where = (f" (run {started[0]['started']['run_id']} still at step "
                 f"{started[0]['steps'][-1]['step'] if started[0]['steps'] else 'start'})" if started
                 else " (none started)")
        raise OutcomeMissing(f"no retrain run ended within {deadline_s:.0f} s{where}")
    end = run["finished"]
    print()
    _main(["loop", "status", "--state-dir", str(ctx.retrain_dir), "--runs", "1"])  # what the system recorded
    gate: dict = next((st for st in run["steps"] if st.get("step") == "gate"), {})
    for name, a in (gate.get("sets") or {}).items():
        print(f"  {name:<12} {a.get('n', 0):>5} images: v1 (production before) {_fmt3(a.get('v1'))}, "
              f"v2 {_fmt3(a.get('v2'))}")
    if end.get("status") != "promoted":
        raise OutcomeMissing(f"run {end['run_id']} ended {str(end.get('status')).upper()}"
                             + (f": {end.get('error') or '; '.join(end.get('reasons') or [])}"))
    if not str(run["started"].get("source", "")).startswith("alertmanager:"):
        raise OutcomeMissing(f"the run was started by {run['started'].get('source')}, not by an alert")
    after = registry.version_for(PRODUCTION)
    return (f"the loop closed by itself: {run['started']['source']} -> run {end['run_id']} -> version {after} "
            f"promoted (production was version {before}), {time.monotonic() - t0:.0f} s after the drifted traffic began")


def _fmt3(value) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _served(ctx: DemoContext) -> bool:
    return ctx.run is not None and ctx.result.registered and not ctx.args.no_serve


STAGES: list[Stage] = [
    Stage("1. data: the demo dataset", "the demo dataset in the Food-11 layout", stage_data),
    Stage("2. pipeline: ingest -> train -> evaluate -> gate -> export -> register (kfp.local)",
          "the model passes the evaluation gate and is registered", stage_pipeline),
    Stage("3. report", "the evaluation report, the verdict and where the model went", stage_report),
    Stage("4. serve: the production stack with the new model, and the loop around it (serve --loop)",
          "every request answered through the gateway; capture, detector, Prometheus, Alertmanager and the "
          "retrain receiver up", stage_serve, _served),
    Stage("5. closing the loop: capture, user feedback, labelling queue -> Label Studio, annotations, export",
          "labels back from Label Studio and a valid labelled export", stage_loop, _served),
    Stage("6. shadow, then canary rollout: a new model (INT8) in shadow, then as a canary raised 10 -> 50 -> "
          "promoted; a bad canary rolled back (rollout auto + Prometheus)",
          "good canary promoted, bad canary rolled back", stage_canary, _served),
    Stage("7. drift: in-distribution traffic, then darker photos -> drift alarm -> Alertmanager -> receiver",
          "drift alarm raised and delivered to the retrain receiver", stage_drift, _served),
    Stage("8. the loop closes by itself: night shots + feedback + labels -> alert -> retrain -> gate -> "
          "staging gate -> canary -> promote, nothing driven by the demo",
          "v2 retrained on production data and promoted by the system, within the deadline",
          stage_self_driving, lambda ctx: _served(ctx) and not ctx.args.no_cycle),
]


def run_stages(ctx: DemoContext, stages: list[Stage]) -> int:
    """Run the stages in order; stop at the first whose expected outcome did not happen (exit 1,
    naming it). A stage that raises an error is named too, and the error goes on to the entry
    point (its exit code says the cause)."""
    failed: tuple[Stage, str] | None = None
    observed: list[tuple[Stage, str]] = []
    with ctx.cleanup:  # stops every service a stage started, also on Ctrl-C or an error
        for stage in stages:
            if not stage.wanted(ctx):
                continue
            _heading(stage.title, stage.expected)
            started = time.perf_counter()
            try:
                seen = stage.run(ctx)
            except OutcomeMissing as exc:
                failed = (stage, str(exc))
                break
            except BaseException as exc:
                print(f"\nDEMO STOPPED at stage {stage.title.split('.')[0]} ({_short(stage)}): "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                raise
            finally:
                ctx.timings[stage.title] = time.perf_counter() - started
            observed.append((stage, seen))
            print(f"\n==> outcome: {seen}", flush=True)
    print("\nstage timings: " + ", ".join(f"{t.split(':')[0]} {s:.0f}s" for t, s in ctx.timings.items())
          + f" (total {sum(ctx.timings.values()):.0f}s)")
    for stage, seen in observed:
        print(f"  ok  stage {stage.title.split('.')[0]}: {seen}")
    if failed is not None:
        stage, why = failed
        print(f"\nDEMO FAILED at stage {stage.title.split('.')[0]} ({_short(stage)}): expected: {stage.expected}; "
              f"it did not happen: {why}", flush=True)
        return 1
    print("\nDEMO OK: every stage's expected outcome happened")
    return 0


def _short(stage: Stage) -> str:
    return stage.title.split(":", 1)[0].split(".", 1)[-1].strip()


def run_demo(args: argparse.Namespace) -> int:
    return run_stages(DemoContext(args=args, home=home()), STAGES)


def _epochs(value: str) -> int:
    from gourmetgram_app.cli.commands.pipeline import epochs_argument

    return epochs_argument(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a deadline is a positive number of seconds")
    return seconds


def add_parser(subparsers) -> None:
    from gourmetgram.constants import STAGES as MODEL_STAGES
    from gourmetgram.constants import STAGING

    parser = subparsers.add_parser(
        "demo", help="run the whole loop locally on the embedded demo dataset",
        description="Build the demo dataset if needed, run the training pipeline with kfp.local "
                    "(config 'demo') and print the evaluation report and where the model went; then "
                    "serve it with the loop around it (detector, capture sink, Prometheus, Alertmanager, the "
                    "retrain receiver), close the loop (feedback, Label Studio queue, simulated annotators, "
                    "export), roll out a good and a bad canary with `rollout auto`, raise a drift alarm, and "
                    "let the loop close by itself (the drift alert starts a retrain on production data, its "
                    "staging gate, a canary and the promotion). Every stage says the outcome it promises; "
                    "exit 1 names the first stage whose outcome did not happen. State goes to "
                    "$GOURMETGRAM_HOME (default ./.gourmetgram).")
    parser.add_argument("--epochs", type=_epochs, default=-1,
                        help="-1: from configs/demo.yaml; N: N epochs in the first training (from scratch; the "
                        "loop's retrain too if it trains from scratch, but by default it fine-tunes the production "
                        "model for the config's train.fine_tune.epochs); 0: untrained (watch the gate reject it: "
                        "exit 1 at stage 2)")
    parser.add_argument("--stage", default=STAGING, choices=MODEL_STAGES, help="registry alias (default staging)")
    parser.add_argument("--rebuild-data", action="store_true", help="write the demo dataset again")
    parser.add_argument("--no-serve", action="store_true",
                        help="stop after the pipeline (skip serving, canary rollout, drift and the loop)")
    parser.add_argument("--no-cycle", action="store_true",
                        help="skip the last stage (the loop closing by itself: a second training, staging, canary)")
    parser.add_argument("--loop-deadline", type=_seconds, default=LOOP_DEADLINE_S,
                        help="seconds the last stage waits for the loop to promote v2 (default: %(default)s)")
    parser.set_defaults(func=run_demo)
