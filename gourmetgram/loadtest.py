"""Run the Locust suite headless against an endpoint and judge it against the SLOs.

Locust runs in its own process (it monkey-patches with gevent); its CSV and HTML reports
are parsed here. Deliberately bad requests ("bad request: ..." names) are excluded from the
error rate and latency: they test the API's 4xx handling, not its capacity.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from gourmetgram.config import SLOConfig
from gourmetgram.constants import REPO_ROOT
from gourmetgram.errors import BadInput

LOADTEST_DIR = REPO_ROOT / "loadtests"
SHAPES = ("constant", "ramp", "step", "soak")
BAD_REQUEST_PREFIX = "bad request"


@dataclasses.dataclass
class LoadTestSummary:
    requests: int
    failures: int
    error_rate: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    bad_requests: int
    bad_request_failures: int
    knee_users: int | None
    passed: bool
    reasons: list[str]
    report_html: str
    stats_csv: str

    def format(self) -> str:
        lines = [
            f"good requests {self.requests} ({self.rps:.1f}/s), failures {self.failures} "
            f"(error rate {self.error_rate:.2%})",
            f"latency p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, p99 {self.p99_ms:.0f} ms",
            f"deliberately bad requests {self.bad_requests}, wrongly answered {self.bad_request_failures}",
        ]
        if self.knee_users is not None:
            lines.append(f"throughput knee at about {self.knee_users} users")
        lines.append("SLO: PASS" if self.passed else "SLO: FAIL — " + "; ".join(self.reasons))
        lines.append(f"report: {self.report_html}")
        return "\n".join(lines)


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def find_knee(history_csv: Path, min_gain: float = 0.10) -> int | None:
    """The user count after which throughput stopped growing by ``min_gain`` per step."""
    if not history_csv.is_file():
        return None
    per_users: dict[int, list[float]] = {}
    with history_csv.open() as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") != "Aggregated":
                continue
            users = int(_float(row.get("User Count", "0")))
            if users > 0:
                per_users.setdefault(users, []).append(_float(row.get("Requests/s", "0")))
    steps = sorted(per_users)
    if len(steps) < 2:
        return None
    rps = [sorted(per_users[u])[len(per_users[u]) // 2] for u in steps]  # median per step
    for i in range(1, len(steps)):
        if rps[i] < rps[i - 1] * (1 + min_gain):
            return steps[i - 1]
    return steps[-1]


def summarize(prefix: Path, slo: SLOConfig, html: Path) -> LoadTestSummary:
    """Judge Locust's ``<prefix>_stats.csv`` against the SLOs."""
    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.is_file():
        raise BadInput(f"Locust wrote no statistics ({stats_csv} is missing); see its output above")
    with stats_csv.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["Name"] != "Aggregated"]
    good = [r for r in rows if not r["Name"].startswith(BAD_REQUEST_PREFIX)]
    bad = [r for r in rows if r["Name"].startswith(BAD_REQUEST_PREFIX)]
    requests = sum(int(_float(r["Request Count"])) for r in good)
    failures = sum(int(_float(r["Failure Count"])) for r in good)
    rps = sum(_float(r["Requests/s"]) for r in good)

    def weighted(column: str) -> float:
        # Percentiles of the "predict" row; with several good names, the worst one.
        return max((_float(r[column]) for r in good if int(_float(r["Request Count"]))), default=0.0)

    summary = LoadTestSummary(
        requests=requests, failures=failures, error_rate=failures / requests if requests else 1.0,
        rps=rps, p50_ms=weighted("50%"), p95_ms=weighted("95%"), p99_ms=weighted("99%"),
        bad_requests=sum(int(_float(r["Request Count"])) for r in bad),
        bad_request_failures=sum(int(_float(r["Failure Count"])) for r in bad),
        knee_users=find_knee(Path(f"{prefix}_stats_history.csv")),
        passed=True, reasons=[], report_html=str(html), stats_csv=str(stats_csv),
    )
    checks = [
        (requests >= slo.min_requests, f"only {requests} good requests < {slo.min_requests}"),
        (summary.p95_ms <= slo.p95_ms, f"p95 {summary.p95_ms:.0f} ms > {slo.p95_ms:.0f} ms"),
        (summary.error_rate <= slo.max_error_rate, f"error rate {summary.error_rate:.2%} > {slo.max_error_rate:.2%}"),
        (summary.rps >= slo.min_rps, f"throughput {summary.rps:.1f}/s < {slo.min_rps:.1f}/s"),
        (summary.bad_request_failures == 0, f"{summary.bad_request_failures} bad requests not answered with 400"),
    ]
    summary.reasons = [reason for ok, reason in checks if not ok]
    summary.passed = not summary.reasons
    return summary


def run_loadtest(host: str, images: Path, out_dir: Path, slo: SLOConfig, shape: str = "constant",
                 users: int = 4, spawn_rate: float = 2.0, run_time: str = "60s",
                 bad_request_share: float = 0.05, env: dict[str, str] | None = None,
                 quiet: bool = False) -> LoadTestSummary:
    """Run Locust headless against ``host`` and judge the run; writes CSV, HTML and summary.json."""
    if shape not in SHAPES:
        raise BadInput(f"unknown load shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if not Path(images).is_dir():
        raise BadInput(f"images folder {images} does not exist")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix, html = out_dir / "locust", out_dir / "report.html"
    files = str(LOADTEST_DIR / "locustfile.py")
    if shape != "constant":
        files += "," + str(LOADTEST_DIR / "shapes" / f"{shape}.py")
    cmd = [sys.executable, "-m", "locust", "-f", files, "--headless", "--host", host,
           "--csv", str(prefix), "--csv-full-history", "--html", str(html), "--only-summary",
           "--images", str(images), "--bad-request-share", str(bad_request_share), "--loglevel", "WARNING"]
    if shape == "constant":
        cmd += ["-u", str(users), "-r", str(spawn_rate), "-t", run_time]
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=quiet, text=True)
    if proc.returncode not in (0, 1):  # Locust exits 1 when any request failed; we judge ourselves
        detail = (proc.stderr or "")[-2000:] if quiet else ""
        raise BadInput(f"locust exited with code {proc.returncode}; {detail}")
    summary = summarize(prefix, slo, html)
    (out_dir / "summary.json").write_text(json.dumps(dataclasses.asdict(summary), indent=2))
    (out_dir / "summary.txt").write_text(summary.format() + "\n")
    return summary
