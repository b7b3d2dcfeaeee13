"""A real Prometheus for the local stack, and a small client for its HTTP API.

Canary analysis reads its figures with PromQL from Prometheus on the cluster; locally the
Debian ``prometheus`` binary runs with a generated config that scrapes the gateway (the
queue-proxy metrics), every revision's transformer and Triton (found through the
gateway's HTTP service discovery, so a canary started later is scraped within a second)
and the drift detector, loads the chart's alert rules and, with an Alertmanager, sends it the
firing alerts. Storage is a temp dir.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

from gourmetgram import constants
from gourmetgram.errors import BadInput, DependencyUnavailable

PROMETHEUS_BIN = "/usr/bin/prometheus"


@dataclass(frozen=True)
class Sample:
    """One series of an instant-query result."""

    labels: dict[str, str]
    value: float


class PrometheusClient:
    """``/api/v1/query`` over plain httpx (cluster and local alike)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            r = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable(f"Prometheus at {self.url} is not reachable ({exc}); check the URL "
                                        "(--prometheus) or start it") from exc
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 200 or body.get("status") != "success":
            raise BadInput(f"Prometheus rejected {promql!r}: {body.get('error') or r.text[:200]}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise BadInput(f"expected an instant vector from {promql!r}, got {data['resultType']}")
        out = []
        for item in data["result"]:
            value = float(item["value"][1])
            if not math.isnan(value):
                out.append(Sample(dict(item["metric"]), value))
        return out

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def alerts(self) -> list[dict]:
        """The alerts the rules have now (``/api/v1/alerts``): labels, state (pending|firing), activeAt."""
        try:
            r = httpx.get(f"{self.url}/api/v1/alerts", timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable(f"Prometheus at {self.url} is not reachable ({exc})") from exc
        return list(r.json()["data"]["alerts"])

    def active_targets(self) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=self.timeout_s)
        return r.json()["data"]["activeTargets"]


def free_port(host: str = constants.HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _hostport(url: str) -> str:
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if not parts.netloc:
        raise BadInput(f"{url!r} is not a URL")
    return parts.netloc


def scrape_config(gateway_url: str, detector_url: str | None = None,
                  scrape_interval: str = "1s", rules: list[Path] | None = None,
                  alertmanager_url: str | None = None, targets: dict[str, str] | None = None) -> dict:
    """The Prometheus config for one local stack. ``alertmanager_url``: where firing alerts go;
    ``targets``: more scrape jobs, ``{job name: base URL}`` (``/metrics`` there)."""
    gateway = _hostport(gateway_url)
    jobs = [
        {"job_name": "gateway", "static_configs": [{"targets": [gateway]}]},
        {"job_name": "revisions",
         "http_sd_configs": [{"url": f"http://{gateway}/_gourmetgram/targets", "refresh_interval": "1s"}]},
    ]
    if detector_url:
        jobs.append({"job_name": "drift-detector", "static_configs": [{"targets": [_hostport(detector_url)]}]})
    for name, url in (targets or {}).items():
        jobs.append({"job_name": name, "static_configs": [{"targets": [_hostport(url)]}]})
    config = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": scrape_interval},
        "rule_files": [str(p) for p in rules or []],
        "scrape_configs": jobs,
    }
    if alertmanager_url:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [_hostport(alertmanager_url)]}]}]}
    return config


class LocalPrometheus:
    """``/usr/bin/prometheus`` on a free localhost port, scraping one local stack every second."""

    def __init__(self, gateway_url: str, detector_url: str | None = None, port: int | None = None,
                 host: str = constants.HOST, scrape_interval: str = "1s",
                 rules: list[Path] | None = None, binary: str = PROMETHEUS_BIN,
                 alertmanager_url: str | None = None, targets: dict[str, str] | None = None) -> None:
        if not Path(binary).is_file():
            raise DependencyUnavailable(f"{binary} not found; install Debian's `prometheus` package "
                            "(apt-get install prometheus) or pass --prometheus URL of a running one")
        if rules is None:
            from gourmetgram.manifests import RULES_FILE

            rules = [RULES_FILE] if RULES_FILE.is_file() else []
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.config = scrape_config(gateway_url, detector_url, scrape_interval, rules, alertmanager_url, targets)
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self) -> PrometheusClient:
        return PrometheusClient(self.url)

    def command(self, workdir: Path) -> list[str]:
        """Write the config into ``workdir`` and return the command line (storage there too);
        the local stack runs this under its supervisor, :meth:`start` runs it here."""
        config = Path(workdir) / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return [self.binary, f"--config.file={config}", f"--storage.tsdb.path={Path(workdir) / 'data'}",
                # No --web.enable-lifecycle: nothing here reloads or quits it over HTTP, so
                # nobody else may (stop() signals the process).
                f"--web.listen-address={self.host}:{self.port}", "--storage.tsdb.retention.time=1d"]

    def start(self, timeout_s: float = 30.0) -> "LocalPrometheus":
        self.workdir = Path(tempfile.mkdtemp(prefix="gg-prometheus-"))
        argv = self.command(self.workdir)
        self.log_path = self.workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        client = self.client()
        while not client.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise DependencyUnavailable(f"Prometheus did not start on {self.url} (its log ends below; pass "
                                            f"--prometheus URL of a running one instead):\n{tail}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "LocalPrometheus":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
