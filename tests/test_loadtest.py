"""The SLO gate's arithmetic, on CSV files in Locust's own format."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gourmetgram.config import SLOConfig, load_slo
from gourmetgram.errors import BadInput, ConfigError
from gourmetgram.loadtest import find_knee, summarize

STATS_HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
                "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
                "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]


def _stats(path: Path, rows: list[tuple[str, int, int, float, int]]) -> Path:
    """rows: (name, requests, failures, rps, p95)."""
    with open(f"{path}_stats.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(STATS_HEADER)
        for name, n, f, rps, p95 in rows:
            writer.writerow(["POST", name, n, f, p95 // 2, p95 / 2, 1, p95 * 2, 100, rps, 0,
                             p95 // 2, 0, 0, 0, 0, p95, 0, p95 + 10, 0, 0, p95 * 2])
        writer.writerow(["", "Aggregated", 0, 0, 0, 0, 0, 0, 0, 0, 0] + [0] * 11)
    return path


SLO = SLOConfig(p95_ms=500, max_error_rate=0.01, min_rps=5, min_requests=20)


def test_gate_passes_and_leaves_bad_requests_out(tmp_path):
    prefix = _stats(tmp_path / "run", [("predict", 1000, 5, 20.0, 300),
                                      ("bad request: invalid base64", 50, 0, 1.0, 5)])
    summary = summarize(prefix, SLO, tmp_path / "r.html")
    assert summary.passed, summary.reasons
    assert summary.requests == 1000 and summary.bad_requests == 50
    assert summary.error_rate == pytest.approx(0.005)


@pytest.mark.parametrize("rows, reason", [
    ([("predict", 1000, 0, 20.0, 900)], "p95 900 ms > 500 ms"),
    ([("predict", 1000, 50, 20.0, 100)], "error rate 5.00% > 1.00%"),
    ([("predict", 1000, 0, 2.0, 100)], "throughput 2.0/s < 5.0/s"),
    ([("predict", 10, 0, 20.0, 100)], "only 10 good requests < 20"),
    ([("predict", 1000, 0, 20.0, 100), ("bad request: empty instances", 10, 3, 1.0, 5)],
     "3 bad requests not answered with 400"),
])
def test_gate_fails_with_the_reason(tmp_path, rows, reason):
    summary = summarize(_stats(tmp_path / "run", rows), SLO, tmp_path / "r.html")
    assert not summary.passed
    assert reason in summary.reasons


def test_missing_stats_is_a_clear_error(tmp_path):
    with pytest.raises(BadInput, match="Locust wrote no statistics"):
        summarize(tmp_path / "nothing", SLO, tmp_path / "r.html")


def test_knee_is_where_throughput_stops_growing(tmp_path):
    history = tmp_path / "h_stats_history.csv"
    with history.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Timestamp", "User Count", "Type", "Name", "Requests/s"])
        for users, rps in [(2, 10), (2, 11), (4, 20), (4, 21), (6, 28), (8, 29), (8, 30), (10, 29)]:
            writer.writerow([0, users, "", "Aggregated", rps])
    assert find_knee(history) == 6


def test_slo_file_is_validated(tmp_path):
    assert load_slo("slo").p95_ms > 0
    bad = tmp_path / "slo.yaml"
    bad.write_text("p95_ms: 100\nmax_error_rate: 2\nmin_rps: 1\n")
    with pytest.raises(ConfigError, match="max_error_rate"):
        load_slo(bad)
