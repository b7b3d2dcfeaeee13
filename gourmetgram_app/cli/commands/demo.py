"""``gourmetgram demo``: the whole loop on this machine, from nothing, in one command.

The demo is a sequence of stages over one shared :class:`DemoContext`; each stage prints
a heading, does one thing and records what later stages need. Add a stage by writing a
``(context) -> None`` function and appending it to :data:`STAGES`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gourmetgram.bundle import Bundle
from gourmetgram.constants import SPLITS
from gourmetgram.tracking import home

if TYPE_CHECKING:
    from gourmetgram.rollout.prometheus import LocalPrometheus
    from gourmetgram_app.cli.commands.pipeline import LocalRunResult
    from gourmetgram_app.local.labelstudio import LabelStudioServer
    from gourmetgram_app.local.loop import LoopServices
    from gourmetgram_app.local.stack import LocalStack

DEMO_CONFIG = "demo"


@dataclasses.dataclass
class DemoContext:
    """What the stages share: the arguments in, the results out."""

    args: argparse.Namespace
    home: Path
    dataset: Path | None = None
    run: LocalRunResult | None = None
    exit_code: int = 0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    cleanup: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)
    stack: LocalStack | None = None  # production, once serving
    detector_url: str = ""
    prometheus: LocalPrometheus | None = None
    loop: LoopServices | None = None  # broker + capture sink
    label_studio: LabelStudioServer | None = None  # starting in the background

    # What a stage needs from an earlier one (a clear error if the order is ever wrong).
    @property
    def data(self) -> Path:
        return _needed(self.dataset, "the demo dataset (stage data)")

    @property
    def result(self) -> LocalRunResult:
        return _needed(self.run, "the pipeline run (stage pipeline)")

    @property
    def serving(self) -> LocalStack:
        return _needed(self.stack, "the serving stack (stage serve)")

    @property
    def local_prometheus(self) -> LocalPrometheus:
        return _needed(self.prometheus, "a local Prometheus (stage canary)")

    @property
    def loop_services(self) -> LoopServices:
        return _needed(self.loop, "the loop services (stage serve)")

    @property
    def bundle(self) -> Path:
        return Path(self.result.outcome.bundle_uri)


def _needed(value, what: str):
    if value is None:
        raise RuntimeError(f"demo stage order: {what} has not run yet")
    return value


def _heading(title: str) -> None:
    print(f"\n{'#' * 78}\n# {title}\n{'#' * 78}", flush=True)


# -- stage 1: data ------------------------------------------------------------------------------

def _dataset_present(root: Path) -> bool:
    return (root / "classes.txt").is_file() and all((root / s).is_dir() for s in SPLITS)


def stage_data(ctx: DemoContext) -> None:
    """Build the embedded demo dataset unless it is already there."""
    from gourmetgram.data.demo import build_demo_dataset

    root = ctx.home / "data" / "demo"
    if ctx.args.rebuild_data or not _dataset_present(root):
        print(f"building the demo dataset in {root} (scikit-learn's handwritten digits, no download)")
        build_demo_dataset(root)
    else:
        print(f"using the demo dataset in {root} (--rebuild-data to write it again)")
    ctx.dataset = root


# -- stage 2: the training pipeline ------------------------------------------------------------

def stage_pipeline(ctx: DemoContext) -> None:
    """Run the KFP training pipeline locally with the demo config."""
    from gourmetgram_app.cli.commands.pipeline import run_local

    ctx.run = run_local(str(ctx.dataset), DEMO_CONFIG, epochs=ctx.args.epochs, stage=ctx.args.stage)
    if not ctx.result.registered:
        ctx.exit_code = 1


# -- stage 3: report ----------------------------------------------------------------------------

def stage_report(ctx: DemoContext) -> None:
    """The evaluation report, the gate's verdict and where everything is."""
    from gourmetgram_app.cli.commands.pipeline import format_summary

    print(format_summary(ctx.result))


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


def stage_serve(ctx: DemoContext) -> None:
    """The drift detector and the production stack (Triton, transformer, gateway) with the new
    model; evaluation images through the gateway, compared with the offline evaluation."""
    import httpx
    import numpy as np
    import onnxruntime as ort

    from gourmetgram import registry
    from gourmetgram.constants import MODEL_NAME, PRODUCTION
    from gourmetgram.export import load_model_spec
    from gourmetgram.preprocessing import preprocess_batch
    from gourmetgram.rollout.prometheus import free_port
    from gourmetgram_app.local.stack import LocalStack, Ports, Service, _child_env, _get_ok
    from gourmetgram_app.local.traffic import predict

    version = ctx.result.outcome.version
    registry.set_stage(PRODUCTION, version)
    print(f"registry: version {version} now also has alias {PRODUCTION!r}")
    ctx.label_studio = _start_label_studio(ctx)  # slow to come up: started first, awaited in stage 5
    port = free_port()
    ctx.detector_url = f"http://127.0.0.1:{port}"
    from gourmetgram import control

    token_file = control.detector_token()[1]  # the gateway's logger sends the same token
    detector = Service("drift-detector", [sys.executable, "-m", "drift_detector", "--bundle", str(ctx.bundle),
                                          "--port", str(port)]
                       + (["--token-file", str(token_file)] if token_file else []),
                       ctx.home / "logs" / "demo" / "drift-detector.log",
                       lambda: _get_ok(f"{ctx.detector_url}/health"), env=_child_env())
    detector.start(Path.cwd())
    ctx.cleanup.callback(detector.stop)
    from gourmetgram_app.local.loop import LoopServices

    # the logger's fan-out: broker -> drift detector + capture sink (closing the loop)
    ctx.loop = LoopServices(ctx.bundle, ctx.home / "logs" / "demo", detector_url=ctx.detector_url).start()
    ctx.cleanup.callback(ctx.loop_services.stop)
    ctx.stack = LocalStack(ctx.bundle, PRODUCTION, Ports.free(), logger_url=ctx.loop_services.broker_url + "/",
                           feedback_url=ctx.loop_services.capture_url, model_version=version,
                           log_dir=ctx.home / "logs" / "demo")
    ctx.serving.start()
    ctx.cleanup.callback(ctx.serving.stop)
    detector.wait_ready(120)
    for name, url in {**ctx.serving.endpoints(), "drift detector": ctx.detector_url,
                      "broker (logger fan-out)": ctx.loop_services.broker_url,
                      "capture sink": ctx.loop_services.capture_url}.items():
        print(f"  {name:<22} {url}")

    sample = _sample(ctx, SERVE_SAMPLE)
    images = [path.read_bytes() for path, _ in sample]
    with httpx.Client(timeout=60) as client:
        served = [predict(client, ctx.serving.gateway_url, blob).json()["predictions"][0] for blob in images]
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


# -- stage 5: closing the loop -----------------------------------------------------------------------

LOOP_PHOTOS = 60  # "new" user photos (evaluation images re-encoded: new bytes, new content hash)
LOOP_FEEDBACK = 30


def _label_studio_credentials(ctx: DemoContext) -> dict[str, str]:
    """LABEL_STUDIO_USERNAME/PASSWORD/API_KEY from the environment, else generated once for this
    machine and kept (mode 600) next to Label Studio's data, so its first user stays valid."""
    import json
    import os
    import secrets

    from gourmetgram.loop.settings import ENV_LS_PASSWORD, ENV_LS_TOKEN, ENV_LS_USERNAME, loop_home

    path = loop_home() / "label-studio-credentials.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    creds = {ENV_LS_USERNAME: os.environ.get(ENV_LS_USERNAME) or saved.get(ENV_LS_USERNAME) or "admin@gourmetgram.local",
             ENV_LS_PASSWORD: os.environ.get(ENV_LS_PASSWORD) or saved.get(ENV_LS_PASSWORD) or secrets.token_urlsafe(12),
             ENV_LS_TOKEN: os.environ.get(ENV_LS_TOKEN) or saved.get(ENV_LS_TOKEN) or secrets.token_hex(20)}
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


def _command(name: str, *argv: str) -> int:
    """Run ``gourmetgram NAME ARGV`` in this process (``loop``, ``data``), as :func:`_rollout` does."""
    import importlib

    module = importlib.import_module(f"gourmetgram_app.cli.commands.{name}")
    parser = argparse.ArgumentParser(prog="gourmetgram")
    module.add_parser(parser.add_subparsers())
    args = parser.parse_args([name, *argv])
    return int(args.func(args) or 0)


def _main(argv: list[str]) -> int:
    return _command(argv[0], *argv[1:])


def stage_loop(ctx: DemoContext) -> None:
    """Captured predictions, simulated user feedback, the labelling queue into Label Studio,
    simulated annotators, annotations back, a labelled export, and the loop's status."""
    import random

    import httpx

    from gourmetgram.errors import UserError
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
        print("Label Studio is not installed (scripts/setup.sh installs it into .venv-labelstudio): "
              "skipping the labelling queue")
        _main(["loop", "status"])
        return
    print(f"\nwaiting for Label Studio at {ls.url} (first start: database migrations, a minute or two)...", flush=True)
    try:
        ls.service.wait_ready(600)
    except UserError as exc:
        print(f"Label Studio did not come up ({exc}); skipping the labelling queue")
        _main(["loop", "status"])
        return
    ls_args = ["--labelstudio-url", ls.url, "--bundle", str(ctx.bundle)]
    _main(["loop", "queue", *ls_args])
    api = client(ls.url)
    project = next(p for p in api.projects.list() if p.title == "GourmetGram production samples")
    tasks = [t for t in api.tasks.list(project=project.id, fields="all") if not t.annotations]
    print(f"\n[SIMULATED ANNOTATORS] labelling {len(tasks)} task(s) through Label Studio's API "
          "(a stand-in for people clicking in the UI; they know the true class of these demo photos)")
    for t in tasks:
        answer = truth.get(t.data["sample_id"]) or served_label(t.data["sample_id"])
        api.annotations.create(id=t.id, result=[{"from_name": "label", "to_name": "image", "type": "choices",
                                                 "value": {"choices": [answer]}}])
    _main(["loop", "sync", *ls_args])
    out = ctx.home / "data" / "production"
    code = _main(["loop", "export", "--bundle", str(ctx.bundle), "--base", str(ctx.dataset), "--output", str(out),
                 "--overwrite"])
    if code == 0:
        _main(["data", "validate", str(out)])
    print()
    _main(["loop", "status"])
    print(f"\nLabel Studio: {ls.url} (user {ls.username}; password and token in "
          f"$GOURMETGRAM_HOME/loop/label-studio-credentials.json); it stops with the demo: "
          "`gourmetgram loop labelstudio` starts it again")


# -- stage 6: canary rollout ---------------------------------------------------------------------

DEMO_AUTO = ["--window", "15s", "--min-requests", "15", "--steps", "", "--interval", "4",
             "--passes-per-step", "2", "--timeout", "180"]


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
    from gourmetgram_app.cli.commands import rollout

    parser = argparse.ArgumentParser(prog="gourmetgram")
    rollout.add_parser(parser.add_subparsers())
    args = parser.parse_args(["rollout", *argv])
    return int(args.func(args) or 0)


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


def stage_canary(ctx: DemoContext) -> None:
    """A good canary promoted and a bad one rolled back by `rollout auto` (real Prometheus)."""
    from gourmetgram.errors import CheckFailed
    from gourmetgram.rollout.prometheus import LocalPrometheus
    from gourmetgram_app.local.traffic import BackgroundTraffic

    gateway = ctx.serving.gateway_url
    ctx.prometheus = LocalPrometheus(gateway, detector_url=ctx.detector_url).start()
    ctx.cleanup.callback(ctx.local_prometheus.stop)
    print(f"Prometheus at {ctx.local_prometheus.url} scraping the gateway, every revision and the detector")
    images = [path.read_bytes() for path, _ in _sample(ctx, 40)]
    gw = ["--gateway", gateway]
    prom = ["--prometheus", ctx.local_prometheus.url]
    candidates = [("the newly trained model again (a good canary)", ["--version", str(ctx.result.outcome.version)]),
                  ("a deliberately bad model (answers one class for everything)", ["--bundle", str(_bad_candidate(ctx))])]
    _shadow_first(gateway, candidates[0][1], images)  # the retrained candidate, before its canary
    for title, source in candidates:
        print(f"\n--- canary: {title} at 30%")
        if _rollout("canary", "--percent", "30", *source, *gw) != 0:
            raise CheckFailed("could not start the canary (see above)")
        with BackgroundTraffic(gateway, images) as traffic:
            decision = _rollout("auto", *gw, *prom, *DEMO_AUTO)
        failed = sum(code != 200 for code in traffic.codes)
        print(f"rollout auto exit {decision} ({'promoted' if decision == 0 else 'rolled back / held'}); "
              f"{len(traffic.codes)} predictions served during the rollout, {failed} failed")
    _rollout("status", *gw)


# -- stage 7: drift -------------------------------------------------------------------------------

def _darken(blob: bytes, factor: float = 0.4) -> bytes:
    import io

    from PIL import Image, ImageEnhance

    out = io.BytesIO()
    ImageEnhance.Brightness(Image.open(io.BytesIO(blob)).convert("RGB")).enhance(factor).save(out, "JPEG")
    return out.getvalue()


def stage_drift(ctx: DemoContext) -> None:
    """In-distribution traffic, then darker photos: the logger feeds the detector, which raises drift."""
    import httpx

    from gourmetgram_app.local.traffic import predict

    images = [path.read_bytes() for path, _ in _sample(ctx, 120)]

    def status() -> dict:
        return httpx.get(f"{ctx.detector_url}/status", timeout=10).json()

    def settle(expected: int) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and status().get("processed", 0) < expected:
            time.sleep(0.5)
        return status()

    with httpx.Client(timeout=60) as client:
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
    if detected_at:
        print(f"DRIFT ALARM after {detected_at} darkened photos: test statistic {s.get('test_stat', 0):.4g} > "
              f"threshold {s.get('threshold', 0):.4g}; drift_state is 1 on {ctx.detector_url}/metrics and the "
              f"GourmetGramDriftDetected alert rule (charts/gourmetgram/rules) fires on it")
    else:
        print(f"no drift flagged after {len(images)} darkened photos (status: {s})")
    print(f"predictions are never delayed by the detector: the gateway logs asynchronously "
          f"(dropped events: see logger_events_dropped_total on {ctx.serving.gateway_url}/metrics)")


# -- stage 8: closing the loop 2/2: the cycle --------------------------------------------------------

CYCLE_USERS = 240  # uploads by simulated users before the cycle, half of them night shots (drift onset)
CYCLE_CANARY_PERCENT = 50  # both revisions collect feedback at the same pace
CYCLE_MIN_FEEDBACK = 15  # answers per revision before the canary is judged on feedback


def stage_cycle(ctx: DemoContext) -> None:
    """Drifted production traffic with user feedback, then one turn of the loop (`loop cycle`):
    export -> retrain -> differential gate -> register -> staging gate -> canary with feedback."""
    from gourmetgram_app.local.cycle import Cycle, CycleSettings, UserSettings
    from gourmetgram_app.local.simulate import Behaviour

    settings = CycleSettings(gateway=ctx.serving.gateway_url, base=ctx.data, train_config=DEMO_CONFIG,
                             epochs=ctx.args.epochs, canary_percent=CYCLE_CANARY_PERCENT,
                             min_feedback=CYCLE_MIN_FEEDBACK, timeout_s=300,
                             users=UserSettings(before=CYCLE_USERS, behaviour=Behaviour(drifted_share=0.5)))
    print("the same as `gourmetgram loop cycle --simulate-users "
          f"{CYCLE_USERS} --canary-percent {CYCLE_CANARY_PERCENT} --min-feedback {CYCLE_MIN_FEEDBACK}`", flush=True)
    Cycle(settings, out=lambda line: print(line, flush=True)).run()


Stage = tuple[str, Callable[[DemoContext], None], Callable[[DemoContext], bool]]

STAGES: list[Stage] = [
    # (heading, run, should it run? e.g. later stages only when a model was registered)
    ("1. data: the demo dataset", stage_data, lambda ctx: True),
    ("2. pipeline: ingest -> train -> evaluate -> gate -> export -> register (kfp.local)", stage_pipeline,
     lambda ctx: True),
    ("3. report", stage_report, lambda ctx: ctx.run is not None),
    ("4. serve: drift detector + production stack (Triton, transformer, gateway) with the new model",
     stage_serve, lambda ctx: ctx.run is not None and ctx.result.registered and not ctx.args.no_serve),
    ("5. closing the loop: capture, user feedback, labelling queue -> Label Studio, annotations, export",
     stage_loop, lambda ctx: ctx.stack is not None and ctx.loop is not None),
    ("6. shadow, then canary rollout: the candidate in shadow first, then good canary promoted, bad "
     "canary rolled back (rollout auto + Prometheus)",
     stage_canary, lambda ctx: ctx.stack is not None),
    ("7. drift: in-distribution traffic, then darker photos -> drift alarm", stage_drift,
     lambda ctx: ctx.stack is not None),
    ("8. closing the loop 2/2: night shots + user feedback -> export -> retrain -> differential gate -> "
     "register -> staging gate -> canary analysed with feedback -> promote or roll back", stage_cycle,
     lambda ctx: ctx.stack is not None and ctx.loop is not None and not ctx.args.no_cycle),
]


def run_demo(args: argparse.Namespace) -> int:
    ctx = DemoContext(args=args, home=home())
    with ctx.cleanup:  # stops every service a stage started, also on Ctrl-C or an error
        for title, run, wanted in STAGES:
            if not wanted(ctx):
                continue
            _heading(title)
            started = time.perf_counter()
            run(ctx)
            ctx.timings[title] = time.perf_counter() - started
    print("\nstage timings: " + ", ".join(f"{t.split(':')[0]} {s:.0f}s" for t, s in ctx.timings.items()))
    if ctx.exit_code:
        print("the model was rejected by the evaluation gate (see the reasons above)")
    return ctx.exit_code


def _epochs(value: str) -> int:
    from gourmetgram_app.cli.commands.pipeline import _int_at_least_minus_one

    return _int_at_least_minus_one(value)


def add_parser(subparsers) -> None:
    from gourmetgram.constants import STAGES as MODEL_STAGES
    from gourmetgram.constants import STAGING

    parser = subparsers.add_parser(
        "demo", help="run the whole loop locally on the embedded demo dataset",
        description="Build the demo dataset if needed, run the training pipeline with kfp.local "
                    "(config 'demo') and print the evaluation report and where the model went; then "
                    "serve it (Triton, transformer, gateway, drift detector, capture sink), close the "
                    "loop (feedback, Label Studio queue, simulated annotators, export), roll out a good and a "
                    "bad canary with `rollout auto`, raise a drift alarm, and run one turn of the loop "
                    "(`loop cycle`: retrain on production data, staging gate, canary with feedback). State goes to "
                    "$GOURMETGRAM_HOME (default ./.gourmetgram). Exit 1 if the evaluation gate "
                    "rejects the model.")
    parser.add_argument("--epochs", type=_epochs, default=-1,
                        help="-1: from configs/demo.yaml; 0: untrained (watch the gate reject it)")
    parser.add_argument("--stage", default=STAGING, choices=MODEL_STAGES, help="registry alias (default staging)")
    parser.add_argument("--rebuild-data", action="store_true", help="write the demo dataset again")
    parser.add_argument("--no-serve", action="store_true",
                        help="stop after the pipeline (skip serving, canary rollout and drift stages)")
    parser.add_argument("--no-cycle", action="store_true",
                        help="skip the last stage (the loop's cycle: retrain on production data, canary with feedback)")
    parser.set_defaults(func=run_demo)
