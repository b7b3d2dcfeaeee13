"""Pipeline runs: the training pipeline and the staging gate under ``kfp.local`` (the same
``@dsl.pipeline`` function, or the same compiled IR, the cluster runs; SubprocessRunner with this
interpreter: no containers, no pip), compiling them, and submitting them to a KFP backend.

The ``gourmetgram pipeline`` command, the loop's cycle and the retrain receiver's launcher all
use these; the command adds only its arguments and its printing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from gourmetgram.constants import MODEL_NAME, REGISTERED_MODEL_NAME, REPO_ROOT, STAGING
from gourmetgram.environment import environment
from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram.tracking import home, tracking_uri

if TYPE_CHECKING:  # torch stays out of the CLI's start-up
    from components.steps import CanaryOutcome, RegistrationOutcome
    from gourmetgram.evaluation.suite import EvaluationResult

DEFAULT_PACKAGE = REPO_ROOT / "pipelines" / "training_pipeline.yaml"


TRAINING, STAGING_GATE = "training", "staging-gate"


# pipeline name -> (module under pipelines/, committed package)
PIPELINES = {
    TRAINING: ("pipelines.training_pipeline", DEFAULT_PACKAGE),
    STAGING_GATE: ("pipelines.staging_gate_pipeline", REPO_ROOT / "pipelines" / "staging_gate_pipeline.yaml"),
}


DEFAULT_EXPERIMENT = "gourmetgram"


ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclasses.dataclass
class LocalRunResult:
    """What a local pipeline run produced (read back from the pipeline's outputs)."""

    passed: bool
    reasons: list[str]
    mlflow_run_id: str
    evaluation: EvaluationResult
    outcome: RegistrationOutcome  # register_step / reject_step
    seconds: float
    pipeline_root: str

    @property
    def registered(self) -> bool:
        return self.outcome.registered


class _Tee:
    """Pass the steps' logs through, line by line.

    kfp's executor logs every step's whole input as pretty-printed JSON; that block is
    folded into one line (it stays in the step's ``executor_output.json`` folder).
    """

    EXECUTOR_INPUT = "Got executor_input:"

    def __init__(self, stream):
        self.stream, self._partial = stream, ""
        self._fold: str | None = None  # the closing line of the JSON block being folded

    def _line(self, line: str) -> None:
        if self._fold == "":  # the line after the marker opens the JSON block
            self._fold = line[: len(line) - len(line.lstrip())] + "}"
            return
        if self._fold is not None:
            if line.rstrip() == self._fold:
                self._fold = None
            return
        if line.rstrip().endswith(self.EXECUTOR_INPUT):
            self.stream.write(line.replace(self.EXECUTOR_INPUT, "executor input folded (see the step's folder)") + "\n")
            self._fold = ""
            return
        self.stream.write(line + "\n")

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        self.stream.flush()

    def __getattr__(self, name: str):  # encoding, isatty, fileno, ...
        return getattr(self.stream, name)


def check_run_inputs(dataset_uri: str, config: str, epochs: int, stage: str, model_name: str,
                     init_from: str = "") -> None:
    """Fail fast (exit 2) on what can be checked before starting the pipeline."""
    from components.steps import check_stage, resolve_config
    from gourmetgram.continual import resolve_init_from
    from gourmetgram.errors import DatasetError

    parsed = urllib.parse.urlparse(dataset_uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else dataset_uri).expanduser()
        if not path.exists():
            raise DatasetError(f"dataset {path} does not exist")
    elif parsed.scheme not in ("http", "https", "s3"):
        raise DatasetError(f"unsupported dataset URI scheme {parsed.scheme!r} in {dataset_uri}; "
                           "use a folder, an archive, an http(s) URL or s3://bucket/prefix")
    resolve_init_from(resolve_config(config, epochs), init_from)
    check_stage(stage)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", model_name):
        raise BadInput(f"invalid model name {model_name!r}: use letters, digits, '_', '.', '-'")


def run_local(dataset_uri: str, config: str = "demo", epochs: int = -1, model_name: str = MODEL_NAME,
              stage: str = STAGING, registered_model_name: str = REGISTERED_MODEL_NAME,
              pipeline_root: str | Path | None = None, enable_caching: bool = False,
              quantize: bool = False, production_dataset_uri: str = "", init_from: str = "") -> LocalRunResult:
    """Run the training pipeline with ``kfp.local``; bad input raises :class:`BadInput`.
    ``init_from``: production | scratch | empty (the config's ``train.init_from``)."""
    check_run_inputs(dataset_uri, config, epochs, stage, model_name, init_from)
    parsed = urllib.parse.urlparse(dataset_uri)
    if parsed.scheme == "" and not Path(dataset_uri).is_absolute():
        dataset_uri = str(Path(dataset_uri).expanduser().resolve())  # steps may run elsewhere
    if config.endswith((".yaml", ".yml")):
        config = str(Path(config).expanduser().resolve())
    from components.steps import RegistrationOutcome
    from gourmetgram.evaluation.suite import JSON_NAME, EvaluationResult
    from pipelines.training_pipeline import training_pipeline

    started = time.perf_counter()
    out, root = _run_under_kfp_local(training_pipeline, pipeline_root, enable_caching, dict(
        dataset_uri=dataset_uri, config=config, epochs=epochs, model_name=model_name, stage=stage,
        registered_model_name=registered_model_name, quantize=quantize,
        production_dataset_uri=production_dataset_uri, init_from=init_from))
    seconds = time.perf_counter() - started
    evaluation = EvaluationResult.from_json(Path(out["evaluation"].path) / JSON_NAME)
    return LocalRunResult(
        passed=bool(out["passed"]), reasons=[str(r) for r in out["reasons"]],
        mlflow_run_id=str(out["mlflow_run_id"]), evaluation=evaluation,
        outcome=RegistrationOutcome.from_json(out["outcome"]), seconds=seconds, pipeline_root=str(root),
    )


def _run_under_kfp_local(pipeline, pipeline_root: str | Path | None, enable_caching: bool,
                         arguments: dict) -> tuple[dict, Path]:
    """Call ``pipeline`` (a ``@dsl.pipeline`` function or a compiled pipeline loaded with
    ``kfp.components.load_component_from_file``) under ``kfp.local``'s SubprocessRunner with this
    interpreter; the steps' logs stream through, a step's own error is re-raised as itself."""
    gg_home = home()  # absolute; the steps inherit the environment
    os.environ["GOURMETGRAM_HOME"] = str(gg_home)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # stream step logs as they happen
    os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")
    root = Path(pipeline_root) if pipeline_root else gg_home / "pipeline_runs"

    from kfp import local

    from components.steps import STEP_ERRORS_ENV, step_errors

    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=enable_caching)
    # GPU, Secrets, timeouts: cluster settings that kfp.local ignores by design.
    warnings.filterwarnings("ignore", message=r"Task '.*': settings .* have no effect")
    root.mkdir(parents=True, exist_ok=True)
    errors = root / f".step-errors-{os.getpid()}-{time.time_ns()}.jsonl"  # the steps inherit its name
    tee = _Tee(sys.stdout)
    saved, sys.stdout = sys.stdout, tee
    saved_env, os.environ[STEP_ERRORS_ENV] = os.environ.get(STEP_ERRORS_ENV), str(errors)
    try:
        task = pipeline(**arguments)
    except RuntimeError as exc:
        found = step_errors(errors)
        if found:
            raise found[-1].error() from None
        raise PipelineFailed(ANSI.sub("", str(exc))) from None
    finally:
        tee.flush()
        sys.stdout = saved
        if saved_env is None:
            os.environ.pop(STEP_ERRORS_ENV, None)
        else:
            os.environ[STEP_ERRORS_ENV] = saved_env
        errors.unlink(missing_ok=True)
    return dict(task.outputs), root


@dataclasses.dataclass
class StagingGateResult:
    """What a local run of the compiled staging-gate pipeline decided."""

    passed: bool
    summary: str
    outcome: CanaryOutcome  # the canary started (alias moved), or why it was blocked
    seconds: float


def run_staging_gate_local(staging_url: str, version: int, images: str | Path, slo: str = "slo",
                           users: int = 4, run_time: str = "60s", canary_percent: int = 10,
                           registered_model_name: str = REGISTERED_MODEL_NAME,
                           package: str | Path | None = None,
                           pipeline_root: str | Path | None = None) -> StagingGateResult:
    """Run the COMPILED staging-gate pipeline (``pipelines/staging_gate_pipeline.yaml``, what a KFP
    backend runs) with ``kfp.local`` against a local staging endpoint: the same IR, the same
    steps, this interpreter. ``slo``: a config name or a YAML path."""
    from kfp import components

    from components.steps import CanaryOutcome

    package = Path(package or PIPELINES[STAGING_GATE][1])
    if not package.is_file():
        raise BadInput(f"pipeline package {package} does not exist; run `gourmetgram pipeline compile`")
    if slo.endswith((".yaml", ".yml")):
        slo = str(Path(slo).expanduser().resolve())  # the step runs in its own folder
    gate = components.load_component_from_file(str(package))
    started = time.perf_counter()
    out, _ = _run_under_kfp_local(gate, pipeline_root, False, dict(
        staging_url=staging_url, version=int(version), images_uri=str(Path(images).resolve()), slo=slo,
        users=int(users), run_time=run_time, canary_percent=int(canary_percent),
        registered_model_name=registered_model_name))
    return StagingGateResult(passed=bool(out["passed"]), summary=str(out["summary"]),
                             outcome=CanaryOutcome.from_json(out["outcome"]),
                             seconds=time.perf_counter() - started)


class PipelineFailed(Exception):
    """A step crashed (not bad input): its traceback is in the log above."""


def format_summary(result: LocalRunResult) -> str:
    """The end-of-run summary: report, verdict, bundle, MLflow run, registered version."""
    o = result.outcome
    bar = "=" * 78
    lines = [bar, result.evaluation.format_report(), bar]
    if result.registered:
        parity = o.parity
        lines += [
            "verdict:          PASSED -> exported and registered",
            f"bundle:           {o.bundle_uri}",
            f"Triton repo:      {o.triton_repo}  ({o.size_bytes / 1e6:.1f} MB, {(o.precision or 'fp32').upper()})",
        ]
        if parity:
            lines.append(f"parity:           max |logit diff| {parity.get('max_abs_diff', float('nan')):.2e}, "
                         f"top-1 agreement {parity.get('top1_agreement', float('nan')):.3f} "
                         f"on {int(parity.get('n_images', 0))} images")
        lines.append(f"registered model: {o.registered_model} version {o.version} (alias '{o.alias}')")
    else:
        lines.append("verdict:          REJECTED by the evaluation gate: nothing exported or registered")
        lines += [f"  - {r}" for r in (o.reasons or result.reasons)]
    lines += [
        f"MLflow run:       {result.mlflow_run_id}",
        f"MLflow tracking:  {tracking_uri()}",
        f"pipeline outputs: {result.pipeline_root}",
        f"wall time:        {result.seconds:.1f} s",
        bar,
    ]
    return "\n".join(lines)


def compile_to(output: str | Path, image: str | None = None, pipeline: str = TRAINING) -> Path:
    """Compile one pipeline (``training`` | ``staging-gate``) to IR YAML, optionally for
    another pipeline image."""
    import importlib

    if pipeline not in PIPELINES:
        raise BadInput(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINES)}")
    if image:
        base = sys.modules.get("components.base")  # the image is read once, when it is imported
        if base is not None and image != base.PIPELINE_IMAGE:
            raise BadInput("--image must be set before the pipeline module is imported")
        os.environ["GOURMETGRAM_PIPELINE_IMAGE"] = image
    module = importlib.import_module(PIPELINES[pipeline][0])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    module.compile_pipeline(str(output))
    return output


_KFP_TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool}


def parse_params(pairs: list[str], package: Path) -> dict:
    """``k=v`` pairs, typed and checked against the compiled pipeline's parameters."""
    import yaml

    spec = next(yaml.safe_load_all(package.read_text()))  # then the platform (kubernetes) spec
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    params: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"--param {pair!r}: use key=value")
        if key not in declared:
            raise BadInput(f"unknown pipeline parameter {key!r}; known: {', '.join(sorted(declared))}")
        kind = _KFP_TYPES.get(declared[key].get("parameterType"), str)
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                params[key] = value.lower() in ("true", "1")
            else:
                params[key] = kind(value)
        except ValueError:
            raise BadInput(f"--param {key}={value!r}: expected {kind.__name__}") from None
    missing = [k for k, d in declared.items() if not d.get("isOptional") and k not in params]
    if missing:
        raise BadInput(f"missing required pipeline parameter(s): {', '.join(missing)} (use --param key=value)")
    return params


def submit(host: str, package: str | Path, experiment: str, params: dict, run_name: str | None = None,
           namespace: str | None = None, enable_caching: bool | None = None):
    """Create a run on a KFP backend from the compiled package; returns kfp's RunPipelineResult."""
    import kfp

    token = environment().kfp_token
    kwargs = {"namespace": namespace} if namespace else {}
    client = kfp.Client(host=host, existing_token=token, **kwargs)
    return client.create_run_from_pipeline_package(
        str(package), arguments=params, run_name=run_name, experiment_name=experiment,
        namespace=namespace, enable_caching=enable_caching)


def wait_for_run(result, timeout_s: int, host: str) -> int:
    """Wait for the submitted run (kfp's RunPipelineResult) to end: 0 when it SUCCEEDED, 1 when
    it ended otherwise (the check failed), 3 when it is still going after ``timeout_s``."""
    run_id = result.run_id
    print(f"waiting up to {timeout_s} s for run {run_id}...", flush=True)
    try:
        run = result.wait_for_run_completion(timeout=timeout_s)
    except TimeoutError:
        raise DependencyUnavailable(f"run {run_id} did not finish within {timeout_s} s; it goes on: "
                                    f"{host.rstrip('/')}/#/runs/details/{run_id}") from None
    state = str(getattr(run, "state", "") or "")
    print(f"run {run_id}: {state}")
    if state != "SUCCEEDED":
        print(f"error: run {run_id} ended {state}; see its logs in the KFP UI", file=sys.stderr)
        return 1
    return 0
