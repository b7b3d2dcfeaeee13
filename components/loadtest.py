"""Staging gate, step 1: load-test the staging endpoint; its SLO verdict decides the canary."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Metrics, Output

from components.base import component


@component
def loadtest_staging(staging_url: str, images_uri: str, slo: str, users: int, run_time: str, version: int,
                     registered_model_name: str, report: Output[HTML], metrics: Output[Metrics],
                     results: Output[Artifact]
                     ) -> NamedTuple("LoadTestOutputs", [("passed", bool), ("summary", str), ("reasons", list)]):
    """Run the Locust suite headless against ``staging_url`` and judge it by the SLOs.

    Checks first that ``version`` is registered (no long load test for a typo). Outputs:
    Locust's HTML report, p95 / error rate / throughput as metrics, every file Locust
    wrote (CSVs, ``summary.json``) as ``results``; ``passed``, the one-paragraph
    ``summary`` and the missed SLOs (``reasons``, a list of strings) for the gate.
    """
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from components.steps import check_version, loadtest_metrics, loadtest_step, user_errors

    with user_errors():
        check_version(version, registered_model_name)
        summary = loadtest_step(staging_url, images_uri, results.path, slo, users, run_time)
    shutil.copyfile(Path(results.path) / "report.html", report.path)
    for key, value in loadtest_metrics(summary).items():
        metrics.log_metric(key, value)
    results.metadata.update({"passed": summary.passed, "reasons": list(summary.reasons),
                             "staging_url": staging_url, "version": int(version)})
    outputs = namedtuple("LoadTestOutputs", ["passed", "summary", "reasons"])
    return outputs(bool(summary.passed), summary.format(), list(summary.reasons))
