"""The schedule trigger on the cluster: `gourmetgram pipeline schedule` creates a KFP recurring
run with the real kfp.Client, checked up to the wire against a stand-in of the KFP v2beta1 API."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from helpers import FakeKFPApi, free_port

from gourmetgram.errors import BadInput
from gourmetgram.retrain.schedule import check_cron
from gourmetgram.retrain.settings import load_retrain_settings
from gourmetgram_app.cli.main import main


class _FakeKFP(FakeKFPApi):
    """Recurring runs, the calls kfp.Client makes for a schedule."""

    recurring: dict[str, dict] = {}

    def get(self, path: str) -> dict | None:
        url = urlparse(path)
        if url.path == "/apis/v2beta1/recurringruns":
            experiment = parse_qs(url.query).get("experiment_id", [""])[0]
            return {"recurringRuns": [r for r in self.recurring.values() if r["experiment_id"] == experiment]}
        return None

    def post(self, path: str, body: dict) -> dict | None:
        if path == "/apis/v2beta1/recurringruns":
            run = {**body, "recurring_run_id": f"rr-{len(self.recurring) + 1}", "status": "ENABLED"}
            self.recurring[run["recurring_run_id"]] = run
            return run
        return None

    def do_DELETE(self):  # noqa: N802
        self._record()
        run_id = self.path.rsplit("/", 1)[-1]
        found = self.path.startswith("/apis/v2beta1/recurringruns/") and self.recurring.pop(run_id, None)
        self._reply({} if found else None)


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    monkeypatch.delenv("GOURMETGRAM_PIPELINE_IMAGE", raising=False)
    _FakeKFP.requests, _FakeKFP.recurring = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKFP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _FakeKFP
    server.shutdown()
    server.server_close()


def _posts(fake, path: str) -> list[tuple[dict, dict]]:
    return [(h, b) for m, p, h, b in fake.requests if m == "POST" and p == path]


def test_schedule_creates_a_recurring_run_with_the_cron_and_the_compiled_pipeline(kfp_api, monkeypatch, capsys):
    url, fake = kfp_api
    monkeypatch.setenv("KFP_TOKEN", "t0ken")
    code = main(["pipeline", "schedule", "--host", url, "--cron", "0 30 2 * * 1-5",
                 "--param", "dataset_uri=s3://gourmetgram/food11", "--param",
                 "production_dataset_uri=s3://gourmetgram/production/latest"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "recurring run rr-1" in out.out and "cron '0 30 2 * * 1-5'" in out.out
    [(_, experiment)] = _posts(fake, "/apis/v2beta1/experiments")
    assert experiment["display_name"] == load_retrain_settings().run.experiment
    [(headers, run)] = _posts(fake, "/apis/v2beta1/recurringruns")
    assert headers["authorization"] == "Bearer t0ken"
    assert run["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * 1-5"}}
    assert run["experiment_id"] == "exp-1" and run["display_name"] == "gourmetgram-retrain-schedule"
    assert run["mode"] == "ENABLE" and run["no_catchup"] is True and int(run["max_concurrency"]) == 1
    # the pipeline compiled from this checkout travels in the request (not a reference)
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "gourmetgram-training"
    assert {"exec-train-model", "exec-evaluate-model"} <= set(spec["deploymentSpec"]["executors"])
    assert "production_dataset_uri" in spec["root"]["inputDefinitions"]["parameters"]
    assert "mlflow-credentials" in json.dumps(run["pipeline_spec"]["platform_spec"])
    settings = load_retrain_settings()
    assert run["runtime_config"]["parameters"] == {
        "dataset_uri": "s3://gourmetgram/food11", "config": settings.run.config, "epochs": settings.run.epochs,
        "production_dataset_uri": "s3://gourmetgram/production/latest"}


def test_schedule_defaults_to_the_retrain_configs_cron(kfp_api, tmp_path, capsys):
    url, fake = kfp_api
    config = tmp_path / "retrain.yaml"
    config.write_text("triggers:\n  cron: '0 15 4 * * 0'\nrun:\n  dataset_uri: https://example.org/f.zip\n"
                      "  experiment: nightly\n")
    assert main(["pipeline", "schedule", "--host", url, "--retrain-config", str(config)]) == 0, capsys.readouterr()
    [(_, run)] = _posts(fake, "/apis/v2beta1/recurringruns")
    assert run["trigger"]["cron_schedule"]["cron"] == "0 15 4 * * 0"
    assert run["runtime_config"]["parameters"]["dataset_uri"] == "https://example.org/f.zip"
    assert _posts(fake, "/apis/v2beta1/experiments")[0][1]["display_name"] == "nightly"


def test_a_second_schedule_of_the_same_name_is_refused_unless_replaced(kfp_api, capsys):
    url, fake = kfp_api
    argv = ["pipeline", "schedule", "--host", url, "--param", "dataset_uri=s3://b/d"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "rr-1" in err and "--replace" in err
    assert list(fake.recurring) == ["rr-1"]  # nothing created twice
    assert main([*argv, "--replace", "--cron", "0 0 1 * * *"]) == 0
    assert "replacing rr-1" in capsys.readouterr().out
    assert [(m, p) for m, p, _, _ in fake.requests if m == "DELETE"] == [("DELETE", "/apis/v2beta1/recurringruns/rr-1")]
    [run] = fake.recurring.values()
    assert run["trigger"]["cron_schedule"]["cron"] == "0 0 1 * * *"


@pytest.mark.parametrize("argv, message", [
    (["--cron", "0 3 * * 1", "--param", "dataset_uri=x"], "has 5 field(s); KFP takes six"),
    (["--cron", "0 61 3 * * 1", "--param", "dataset_uri=x"], "61 is out of range for the minutes field"),
    (["--param", "epochs=3"], "missing required pipeline parameter(s): dataset_uri"),
    (["--param", "dataset_uri=x", "--param", "lr=1"], "unknown pipeline parameter 'lr'"),
])
def test_bad_schedules_are_refused_before_the_wire(kfp_api, capsys, argv, message):
    url, fake = kfp_api
    assert main(["pipeline", "schedule", "--host", url, *argv]) == 2
    assert message in capsys.readouterr().err
    assert fake.requests == []


def test_an_unreachable_kfp_api_is_exit_3(kfp_api, capsys):
    port = free_port()  # a port nobody listens on
    assert main(["pipeline", "schedule", "--host", f"http://127.0.0.1:{port}", "--param", "dataset_uri=x"]) == 3
    assert "could not create the recurring run" in capsys.readouterr().err


def test_cron_check():
    for ok in ("0 0 3 * * 1", "*/30 * * * * *", "0 0 9 ? * 2-6", "0 0 0 1 JAN,JUL *", "0 0/15 8-18 * * MON-FRI"):
        assert check_cron(ok) == ok
    for bad in ("@daily", "0 0 3 * *", "0 0 24 * * *", "0 0 0 0 * *", "0 0 0 * 13 *", "0 0 0 * * 7", "x! * * * * *"):
        with pytest.raises(BadInput):
            check_cron(bad)
