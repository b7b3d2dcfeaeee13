"""``gourmetgram pipeline``: run the training pipeline locally, compile the pipelines, submit them to KFP.

``run`` executes the same ``@dsl.pipeline`` function the cluster runs, under ``kfp.local``
(:mod:`gourmetgram_app.pipeline_runs`), then prints the evaluation report, the gate's verdict,
where the bundle went and what was registered.
``compile`` and ``submit`` also handle the staging gate (``--pipeline staging-gate``): the
load test of the version in staging that decides its canary.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

from gourmetgram.constants import MODEL_NAME, REGISTERED_MODEL_NAME, STAGES, STAGING
from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram_app.pipeline_runs import (
    DEFAULT_EXPERIMENT,
    PIPELINES,
    TRAINING,
    PipelineFailed,
    compile_to,
    format_summary,
    parse_params,
    run_local,
    submit,
    wait_for_run,
)


def _run(args: argparse.Namespace) -> int:
    try:
        result = run_local(args.dataset, args.config, args.epochs, args.model_name, args.stage,
                           args.registered_model_name, args.pipeline_root, args.cache,
                           quantize=args.quantize, production_dataset_uri=args.production_dataset or "",
                           init_from=args.init_from or "")
    except PipelineFailed as exc:
        print(f"error: the pipeline failed: {exc} (the failing step's log is above)", file=sys.stderr)
        return 1
    print(format_summary(result))
    return 0 if result.registered else 1


# -- compile -----------------------------------------------------------------------------------


def _compile(args: argparse.Namespace) -> int:
    # Back-compatible: --output alone compiles the training pipeline; no --output, every pipeline.
    chosen = args.pipeline or (TRAINING if args.output else "all")
    if chosen == "all" and args.output:
        raise BadInput("--output names one file: pass --pipeline training or --pipeline staging-gate")
    for name in (list(PIPELINES) if chosen == "all" else [chosen]):
        path = compile_to(args.output or PIPELINES[name][1], args.image, name)
        print(f"compiled the {name} pipeline to {path}")
    return 0


# -- submit ------------------------------------------------------------------------------------


def _submit(args: argparse.Namespace) -> int:
    package = Path(args.package or PIPELINES[args.pipeline][1])
    if not package.is_file():
        raise BadInput(f"pipeline package {package} does not exist; run `gourmetgram pipeline compile`")
    if urllib.parse.urlparse(args.host).scheme not in ("http", "https"):
        raise BadInput(f"--host {args.host!r} must be an http(s) URL of the KFP API")
    params = parse_params(args.param or [], package)
    try:
        result = submit(args.host, package, args.experiment, params, args.run_name, args.namespace,
                        False if args.no_cache else None)
    except Exception as exc:  # the client raises urllib3/ApiException subclasses
        if type(exc).__module__.startswith(("urllib3", "kfp_server_api", "requests")) or isinstance(exc, OSError):
            raise DependencyUnavailable(f"could not submit to {args.host}: {exc}; check --host and that the KFP "
                                        "API answers") from None
        raise
    print(f"submitted run {result.run_id} to {args.host} (experiment {args.experiment!r})")
    print(f"run details: {args.host.rstrip('/')}/#/runs/details/{result.run_id}")
    if args.wait:
        return wait_for_run(result, args.wait, args.host)
    return 0


# -- schedule (the retrain schedule trigger on the cluster) -------------------------------------

def _schedule(args: argparse.Namespace) -> int:
    import tempfile

    from gourmetgram.retrain.schedule import check_cron, create_schedule
    from gourmetgram.retrain.settings import load_retrain_settings

    if urllib.parse.urlparse(args.host).scheme not in ("http", "https"):
        raise BadInput(f"--host {args.host!r} must be an http(s) URL of the KFP API")
    settings = load_retrain_settings(args.retrain_config)
    cron = check_cron(args.cron or settings.triggers.cron)
    pairs = []
    if args.pipeline == TRAINING:  # what a triggered retrain trains on (configs/retrain.yaml, run)
        run = settings.run
        pairs = [f"config={run.config}", f"epochs={run.epochs}"]
        pairs += [f"dataset_uri={run.dataset_uri}"] if run.dataset_uri else []
    pairs += args.param or []
    with tempfile.TemporaryDirectory(prefix="gourmetgram-schedule-") as tmp:
        if args.package:
            package = Path(args.package)
            if not package.is_file():
                raise BadInput(f"pipeline package {package} does not exist")
        else:  # compiled now, from the code this command runs: the schedule gets what is checked out
            package = compile_to(Path(tmp) / f"{args.pipeline}.yaml", args.image, args.pipeline)
        params = parse_params(pairs, package)
        experiment = args.experiment or settings.run.experiment
        try:
            result = create_schedule(args.host, package, cron, params, args.name, experiment, args.namespace,
                                     args.replace, description=f"GourmetGram schedule trigger ({cron})")
        except Exception as exc:  # the client raises urllib3/ApiException subclasses
            if type(exc).__module__.startswith(("urllib3", "kfp_server_api", "requests")) or isinstance(exc, OSError):
                raise DependencyUnavailable(f"could not create the recurring run on {args.host}: {exc}; check "
                                            "--host and that the KFP API answers") from None
            raise
    replaced = f", replacing {', '.join(result.replaced)}" if result.replaced else ""
    print(f"scheduled {args.pipeline} pipeline as recurring run {result.recurring_run_id} ({args.name!r}, "
          f"cron {cron!r}, experiment {experiment!r}{replaced}); parameters "
          + ", ".join(f"{k}={v}" for k, v in sorted(params.items())))
    print(f"details: {args.host.rstrip('/')}/#/recurringrun/details/{result.recurring_run_id}")
    return 0


# -- argparse ----------------------------------------------------------------------------------

def epochs_argument(value: str) -> int:
    """``--epochs``: -1 (the config's) or a number of epochs."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < -1:
        raise argparse.ArgumentTypeError("use -1 (from the config) or a number of epochs >= 0")
    return number


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=epochs_argument, default=-1,
                        help="-1: from the config; 0: the untrained network (shows the gate rejecting it)")
    parser.add_argument("--model-name", default=MODEL_NAME, help=f"Triton model name (default {MODEL_NAME})")
    parser.add_argument("--stage", default=STAGING, choices=STAGES, help="registry alias to set (default staging)")
    parser.add_argument("--registered-model-name", default=REGISTERED_MODEL_NAME,
                        help=f"MLflow registered model (default {REGISTERED_MODEL_NAME})")
    parser.add_argument("--pipeline-root", help="where step outputs go (default $GOURMETGRAM_HOME/pipeline_runs)")
    parser.add_argument("--cache", action="store_true", help="reuse outputs of identical earlier steps")
    parser.add_argument("--quantize", action="store_true",
                        help="serve the INT8 (ONNX Runtime static) variant when it passes the config's "
                             "accuracy gate and is faster than FP32; else the FP32 bundle")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pipeline", help="run the training pipeline locally, compile it, or submit it to Kubeflow",
        description="The KFP v2 training pipeline: ingest + validate -> train -> evaluate -> gate -> "
                    "export to Triton -> [INT8] -> drift detector -> register in MLflow; and the staging "
                    "gate pipeline (Locust load test -> canary or block).")
    sub = parser.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)

    run = sub.add_parser("run", help="run the pipeline here with kfp.local (no cluster)",
                         description="Run every step as a local subprocess with this interpreter; print "
                                     "the evaluation report and where the model went. Exit 1 when the "
                                     "evaluation gate rejects the model.")
    run.add_argument("--dataset", required=True,
                     help="dataset folder, .zip/.tar.gz archive, http(s) URL or s3://bucket/prefix (AWS_ENDPOINT_URL)")
    run.add_argument("--config", default="food11", help="demo, food11 or a YAML path (default food11)")
    run.add_argument("--production-dataset", help="labelled production data (`gourmetgram loop export`) merged "
                     "with --dataset; the evaluation also compares with the model in production")
    run.add_argument("--init-from", choices=["production", "scratch"],
                     help="production: fine-tune the model the registry's production alias points at (a first "
                          "model trains from scratch); scratch: from scratch (default: the config's train.init_from)")
    add_run_arguments(run)
    run.set_defaults(func=_run)

    comp = sub.add_parser("compile", help="write the pipelines' IR YAML for a KFP backend",
                          description="Compile the pipeline functions to KFP IR YAML: the training pipeline "
                                      "and the staging gate, each to its committed file under pipelines/.")
    comp.add_argument("--pipeline", choices=[*PIPELINES, "all"],
                      help="which pipeline (default: all; with --output alone: training)")
    comp.add_argument("--output", help="target file for ONE pipeline (default: pipelines/<name>_pipeline.yaml)")
    comp.add_argument("--image", help="pipeline image to put in the spec (default: components.base.PIPELINE_IMAGE)")
    comp.set_defaults(func=_compile)

    sm = sub.add_parser("submit", help="create a run on a Kubeflow Pipelines backend",
                        description="Submit the compiled pipeline with kfp.Client. A bearer token is read "
                                    "from KFP_TOKEN when set.")
    sm.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8888")
    sm.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"experiment name (default {DEFAULT_EXPERIMENT})")
    sm.add_argument("--pipeline", choices=list(PIPELINES), default=TRAINING,
                    help="which committed package to submit when --package is not given (default training)")
    sm.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="pipeline parameter, repeatable (training: dataset_uri; staging-gate: staging_url, "
                         "version, images_uri)")
    sm.add_argument("--run-name", help="run name (default: kfp picks one)")
    sm.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    sm.add_argument("--package", help="compiled pipeline YAML (default: the --pipeline's committed file)")
    sm.add_argument("--no-cache", action="store_true", help="disable step caching for this run")
    sm.add_argument("--wait", type=int, metavar="SECONDS", default=0,
                    help="wait for the run to end: exit 0 if it succeeded, 1 if not, 3 after SECONDS")
    sm.set_defaults(func=_submit)

    sc = sub.add_parser("schedule", help="create the retrain schedule: a KFP recurring run (cron)",
                        description="Compile the pipeline and create a KFP recurring run with kfp.Client "
                                    "(max concurrency 1, no catch-up). Cron and parameters default to "
                                    "configs/retrain.yaml (triggers.cron; run.dataset_uri, config, epochs). "
                                    "A bearer token is read from KFP_TOKEN when set.")
    sc.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8888")
    sc.add_argument("--cron", help="six fields, seconds first, UTC (default: the retrain config's triggers.cron)")
    from gourmetgram.retrain.schedule import DEFAULT_NAME

    sc.add_argument("--name", default=DEFAULT_NAME, help="recurring run name (default %(default)s)")
    sc.add_argument("--replace", action="store_true", help="delete a recurring run of the same name first")
    sc.add_argument("--experiment", help="experiment name (default: the retrain config's run.experiment)")
    sc.add_argument("--retrain-config", default="retrain", help="retrain config name or path (default %(default)s)")
    sc.add_argument("--pipeline", choices=list(PIPELINES), default=TRAINING, help="which pipeline (default training)")
    sc.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="pipeline parameter, repeatable; overrides the retrain config (e.g. "
                         "production_dataset_uri=s3://gourmetgram/production/latest)")
    sc.add_argument("--package", help="a compiled pipeline YAML instead of compiling now")
    sc.add_argument("--image", help="pipeline image to compile in (default: components.base.PIPELINE_IMAGE)")
    sc.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    sc.set_defaults(func=_schedule)
