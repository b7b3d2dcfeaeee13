"""The serving benchmark and its seed-style baseline server, run for real (no speed asserted)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "serving_performance.py"
ROW = re.compile(r"^(limit|baseline|served)\s+(\S+)\s+(-|\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)"
                 r"\s+([\d.]+)\s+([\d.]+)$")

sys.path.insert(0, str(REPO / "benchmarks"))
import serving_performance as sp  # noqa: E402


def test_percentiles_and_ratios():
    import harness

    assert harness.percentiles(list(range(1, 101))) == pytest.approx((50.5, 95.05, 99.01))
    assert harness.spread([0.9, 1.0, 0.95]) == "0.950 ± 0.050 (0.900..1.000)"
    points = [sp.Point("limit", 0, 8, 64, 0, 1.0, 100.0, 1, 1, 1, variant="nospin"),
              sp.Point("baseline", 1, 1, 20, 0, 1.0, 20.0, 1, 1, 1, variant="t1"),
              sp.Point("baseline", 1, 1, 22, 0, 1.0, 22.0, 1, 1, 1, variant="t2"),
              sp.Point("baseline", 4, 1, 25, 0, 1.0, 25.0, 1, 1, 1, variant="t1"),
              sp.Point("served", 1, 1, 30, 0, 1.0, 30.0, 10, 12, 13, variant="raw"),
              sp.Point("served", 4, 1, 90, 0, 1.0, 90.0, 1, 1, 1, variant="raw"),
              sp.Point("served", 4, 1, 80, 0, 1.0, 80.0, 1, 1, 1, variant="json"),
              sp.Point("served", 64, 1, 45, 0, 1.0, 45.0, 20, 35, 40, variant="raw@45/s")]
    ratios = sp.summarise(points)
    assert ratios["served_best/limit"] == pytest.approx(0.9)
    assert ratios["served_best/baseline_best"] == pytest.approx(90 / 25)
    assert ratios["served[raw]/baseline@c1"] == pytest.approx(30 / 22)  # the better tuning at c=1
    assert ratios["served[json]/limit@c4"] == pytest.approx(0.8)
    assert ratios["half_peak_p95/single_p50"] == pytest.approx(3.5)
    verdicts = {name: met for name, _op, _target, _value, met in sp.checks(ratios)}
    assert verdicts == {"served_best/limit": True, "served_best/baseline_best": True,
                        "half_peak_p95/single_p50": False}


def test_raw_http_client_reads_keep_alive_answers(tmp_path):
    """The load generator's own client: several answers on one connection, a 4xx seen as such."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 200 if body.startswith(b"ok") else 400
            reply = b'{"predictions": [' + body + b"]}"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        client = sp.RawHTTP("127.0.0.1", port)
        for i in range(3):
            status, body = client.call(sp.http_request("127.0.0.1", port, "/p", f"ok{i}".encode(), "text/plain"))
            assert (status, body) == (200, f'{{"predictions": [ok{i}]}}'.encode())
        error = sp._call(client, sp.http_request("127.0.0.1", port, "/p", b"bad", "text/plain"), sp._ok_served)
        assert error is not None and error.startswith("HTTP 400")
        client.close()
    finally:
        server.shutdown()


def test_baseline_server_predicts_and_rejects_bad_input(tmp_path):
    settings = sp.Settings(image_size=32, width_mult=0.5)
    checkpoint, _ = sp.make_bundle(tmp_path, settings)
    jpeg = sp.make_images(1, (64, 48))[0]
    with sp.baseline_server(checkpoint, tmp_path / "baseline.log") as (port, _pid):
        url = f"http://127.0.0.1:{port}/predict"
        ok = httpx.post(url, json={"image": base64.b64encode(jpeg).decode()}, timeout=30)
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["prediction"].startswith("class_") and 0 < body["probability"] <= 1
        assert httpx.post(url, json={"image": "not base64!"}, timeout=30).status_code == 400
        assert httpx.post(url, json={"image": base64.b64encode(b"GIF89a").decode()},
                          timeout=30).status_code == 400
        assert httpx.post(url, json={}, timeout=30).status_code == 422


@pytest.mark.slow
def test_quick_benchmark_prints_every_row_and_positive_ratios(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [m.groups() for line in proc.stdout.splitlines() if (m := ROW.match(line.strip()))]
    seen = {(r[0], r[1], r[2]) for r in rows}
    assert {("limit", "nospin", "-"), ("limit", "spin", "-"), ("baseline", "t1", "1"), ("baseline", "t1", "2"),
            ("served", "json", "1"), ("served", "json", "4"), ("served", "raw", "1"), ("served", "raw", "4")} <= seen
    assert any(r[0] == "served" and "@" in r[1] for r in rows)  # the open-loop point at half of peak
    for r in rows:
        assert int(r[5]) == 0, f"errors in row {r}"  # every request answered correctly
        assert float(r[6]) > 0
    result = json.loads(out.read_text())
    for key in ("served_best/limit", "served_best/baseline_best", "served[raw]/baseline@c1",
                "served[json]/limit@c4", "half_peak_p95/single_p50"):
        assert result["ratios"][key] > 0
        assert key in proc.stdout
    assert [c["name"] for c in result["checks"]] == [name for name, _, _ in sp.CHECKS]
    assert "issue 14 targets" in proc.stdout and "load average before" in proc.stdout
    served = [p for p in result["points"] if p["target"] == "served" and "@" not in p["variant"]]
    assert all({"gateway", "transformer", "triton"} <= set(p["cpu_ms_per_image"]) for p in served)
    assert result["stages"]["decode_preprocess_cpu_ms_per_image"] > 0


def test_http_client_benchmark_measures_both_clients_against_a_real_server(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "http_client_overhead.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    cpu = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(httpx|aiohttp)\s+([0-9.]+)\s+[0-9.]+$",
                                                              proc.stdout, re.M)}
    assert set(cpu) == {"httpx", "aiohttp"} and all(v > 0 for v in cpu.values()), proc.stdout
    ratio = float(re.search(r"httpx / aiohttp CPU per request: ([0-9.]+)", proc.stdout).group(1))
    assert ratio == pytest.approx(cpu["httpx"] / cpu["aiohttp"], rel=0.05)


def test_http_client_benchmark_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "http_client_overhead.py"), "--requests", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--requests" in proc.stderr


@pytest.mark.slow
def test_capture_benchmark_quick_run_reports_every_figure(tmp_path):
    out = tmp_path / "capture.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "capture_throughput.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    served, alone = figures["served"], figures["capture_alone"]
    assert served["served"] > 0 and served["errors"] == 0
    assert served["captured"] >= served["served"]  # every prediction of the run was captured
    assert alone["stored"] == alone["predictions"] and figures["ratio_capture_alone_over_served"] > 0
    assert figures["storage_per_1000"]["object_bytes"] > 0 and "capture alone / served" in proc.stdout


def test_soak_windows_and_percentiles():
    import soak

    assert soak.percentile(list(range(1, 101)), 95) == pytest.approx(95.05) and soak.percentile([7.0], 50) == 7.0
    answers = [soak.Answer(due=t, latency_ms=10.0 * (1 + t % 2), status=200, inference_id=str(t))
               for t in range(10)] + [soak.Answer(due=12.5, latency_ms=99.0, status=503, inference_id=None)]
    stats = soak.windows(answers, start=0.0, window_s=5.0)
    assert [(w.index, w.requests, w.errors) for w in stats] == [(0, 5, 0), (1, 5, 0), (2, 1, 1)]
    assert stats[0].p95_ms == 20.0 and stats[0].rate == 1.0 and stats[2].p95_ms != stats[2].p95_ms  # NaN


@pytest.mark.parametrize("args", [["--minutes", "0"], ["--window", "-1"], ["--feedback-share", "2"],
                                  ["--rate", "0"], ["--peak-users", "0"]])
def test_soak_rejects_bad_arguments(args):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error:" in r.stderr


def test_canary_benchmark_runs_both_analyses_on_every_scenario(tmp_path):
    """A small run of benchmarks/canary_error_rates.py: every scenario judged by both decisions, and
    a canary with 5 points more 5xx caught by the sequential analysis in each rollout."""
    import canary_error_rates as bench

    out = tmp_path / "canary.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "canary_error_rates.py"), "--rollouts", "6",
                           "--bad-rollouts", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert list(results) == [s.name for s in bench.SCENARIOS]
    for by_analysis in results.values():
        assert set(by_analysis) == {"fixed-window (before)", "sequential (now)"}
        for figures in by_analysis.values():
            assert figures["rolled_back"] + figures["promoted"] + figures["held"] == pytest.approx(1.0)
    caught = results["5xx +5 points"]["sequential (now)"]
    assert caught["rolled_back"] == 1.0 and caught["median_canary_requests_to_rollback"] > 0
    assert "A/A false-rollback rate: fixed-window" in proc.stdout and "| A/A (identical) | sequential" in proc.stdout


def test_canary_benchmark_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "canary_error_rates.py"), "--rollouts", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--rollouts" in proc.stderr


def test_benchmarks_share_helpers_through_the_harness_only():
    """A benchmark imports this folder's helpers from ``harness`` (or a baseline module it measures
    against), never from another benchmark script (one place for ports, waits, percentiles, photos
    and load)."""
    import ast

    folder = REPO / "benchmarks"
    scripts = {p.stem for p in folder.glob("*.py") if '__name__ == "__main__"' in p.read_text()}
    borrowed = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            borrowed += [f"{path.name} imports {n}" for n in names if n in scripts]
    assert "serving_latency" in scripts and (folder / "harness.py").is_file() and not borrowed, borrowed


def test_accuracy_estimation_benchmark_reports_every_mixture_method_and_the_offline_figures(tmp_path, demo_dataset):
    """The estimation benchmark's analysis on an exported bundle (an untrained demo-spec model, its
    calibration fitted on the demo's validation split as the export step fits it): every mixture,
    every method with its interval and error, the offline figures, the seed summary; bad
    arguments are exit 2. Training per seed is what the full run adds (minutes a seed)."""
    import accuracy_estimation as ae
    import numpy as np
    import torch

    from gourmetgram.config import ExportConfig
    from gourmetgram.data.layout import list_images
    from gourmetgram.evaluation.calibration import fit_validation_calibration
    from gourmetgram.export import export_bundle
    from gourmetgram.model import ModelSpec, build_model
    from gourmetgram_app.local.simulate import night_shot

    torch.manual_seed(0)
    model = build_model(ModelSpec(class_names=tuple(f"c{i}" for i in range(10)), image_size=64, width_mult=0.5)).eval()
    bundle = tmp_path / "bundle"
    export_bundle(model, bundle, ExportConfig(), calibration=fit_validation_calibration(model, demo_dataset))
    items = list_images(demo_dataset / "evaluation")[::6]
    blobs, labels = [p.read_bytes() for p, _ in items], np.array([c for _, c in items])
    normal, night = ae.served_logits(bundle, blobs), ae.served_logits(bundle, [night_shot(b) for b in blobs])
    result = ae.evaluate_mixtures(bundle, normal, night, labels, seed=0)
    assert [m["night_share"] for m in result["mixtures"]] == list(ae.MIXTURES)
    for mixture in result["mixtures"]:
        assert 0 <= mixture["true_accuracy"] <= 1 and mixture["n"] == len(labels)
        assert set(mixture["estimates"]) == set(ae.methods())
        for e in mixture["estimates"].values():
            assert e["lower"] <= e["value"] <= e["upper"]
            assert e["error"] == pytest.approx(e["value"] - mixture["true_accuracy"])
    ood = {d.name: [p.read_bytes() for p in sorted(d.iterdir())][:10] for d in (demo_dataset / "eval_sets/ood").iterdir()}
    assert set(ood) == {"blank_plates", "noise", "symbols"}
    result["offline"] = ae.offline_figures(bundle, normal, labels, {k: ae.served_logits(bundle, v) for k, v in ood.items()})
    assert set(result["offline"]["ood_flagged"]) == {"evaluation", "blank_plates", "noise", "symbols"}
    assert 0 <= result["offline"]["ece_after"] <= 1
    lines = ae.format_seed(0, result)
    assert len(lines) == 2 + len(ae.MIXTURES) and "ECE" in lines[0]
    summary, met = ae.summarise({0: result, 1: result})
    assert set(met) == set(ae.methods()) and any(line.startswith("offline report") for line in summary)
    assert ae.main(["--seeds", "x"]) == 2 and ae.main(["--bundles", "nonsense"]) == 2


@pytest.mark.slow
def test_gpu_training_benchmark_runs_the_projects_training_on_the_cpu(tmp_path):
    """Here there is no GPU: asked for cuda, it says so and measures the CPU rows (about a minute)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_training.py"), "--devices", "cpu,cuda",
                          "--quick"], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "GOURMETGRAM_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no CUDA device here: measuring the CPU only" in out.stdout
    assert re.search(r"^cpu\s+[\d.]+\s+\d+\s+[\d.]+\s+1\.0x$", out.stdout, re.M)  # train(): s/epoch, img/s, acc
    assert re.search(r"^food11\s+cpu\s+fp32\s+\d+\s+1\.0x$", out.stdout, re.M)
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_training.py"), "--devices", "tpu"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "use cpu and/or cuda" in bad.stderr


CONTINUAL = REPO / "benchmarks" / "continual_training.py"


def test_continual_benchmark_rejects_bad_arguments(tmp_path):
    for args, option in ((["--seeds", "one"], "--seeds"), (["--threads", "0"], "--threads"),
                         (["--config", str(tmp_path / "none.yaml")], "not found")):
        proc = subprocess.run([sys.executable, str(CONTINUAL), *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and option in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_continual_benchmark_quick_run_builds_the_cycles_data_and_judges_each_v2(tmp_path):
    """One seed, one epoch per model: v1, the cycle's production data (simulated users' night
    shots, their corrections in a loop store, annotators' labels for the policy's queue, `loop
    export` with lineage, the pipeline's merge), a fine-tuned v2 (production photos drawn as the
    config's share) and a from-scratch v2, each judged by the differential gate."""
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(CONTINUAL), "--quick", "--scratch", "--annotators", "--threads", "1",
                           "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["seed"], r["kind"]) for r in rows] == [(0, "fine-tune"), (0, "scratch")]
    for r in rows:
        sets = {s["name"]: s for s in r["comparison"]["sets"]}
        assert sets["original"]["n_images"] == 368 and sets["original"]["test"] == "non-inferiority"
        assert sets["production"]["n_images"] > 0 and sets["production"]["interval"] is not None
        assert r["seconds_v1"] > 0 and r["seconds_v2"] > 0 and 0 <= r["night_v2"] <= 1
    (lineage,) = (tmp_path / "work").glob("production-seed0-*/export/lineage.json")
    samples = json.loads(lineage.read_text())["samples"]
    assert samples and all(s["model_version"] == "1" for s in samples)
    assert "annotator" in {s["label_source"] for s in samples}  # the policy's queue, labelled
    assert rows[0]["settings"].endswith("share 0.3")  # configs/demo.yaml's train.fine_tune
    merged = lineage.parent.parent / "merged"
    assert all((merged / s["file"]).is_file() for s in samples)  # merged by the pipeline's ingest
    assert "seed 0: v1 trained from scratch" in proc.stdout and "over 1 seed(s)" in proc.stdout
