"""`serve --loop` with the loop store on PostgreSQL (``GOURMETGRAM_LOOP_DB=postgresql+psycopg2://...``),
as the cluster keeps it: the loop's processes as `serve --loop` starts them (the broker and the
capture sink, which reads the URL from the environment), on a throwaway PostgreSQL server. And a
database that does not answer: exit 3 with its address, never its password."""

from __future__ import annotations

import json

import httpx
import pytest
from helpers import free_port, wait_until
from loop_helpers import CLASSES, ce_headers, image, new_id, request_body, response_body
from starlette.testclient import TestClient

from gourmetgram.loop.models import PENDING, USER, Label
from gourmetgram.loop.settings import ENV_DB_URL
from gourmetgram.loop.store import Store


@pytest.mark.slow
def test_serve_loop_stores_captures_and_feedback_in_postgresql_from_the_environment(postgres, postgres_url,
                                                                                     tmp_path, monkeypatch):
    from gourmetgram_app.local.gateway import Gateway, Revision
    from gourmetgram_app.local.loop import LoopServices
    from gourmetgram_app.local.manifests import load_stage_manifest

    monkeypatch.setenv(ENV_DB_URL, postgres_url)  # what `serve --loop` hands its capture sink
    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path / "home"))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model_spec.json").write_text(json.dumps({"class_names": CLASSES}))
    config = tmp_path / "loop.yaml"  # one correction per client a day, to see the cap across processes
    config.write_text("feedback:\n  daily_corrections_per_client: 1\n")
    with LoopServices(bundle, tmp_path / "logs", config=str(config)) as loop:
        ids = [new_id(), new_id()]
        with httpx.Client(timeout=30) as client:  # the gateway's logger posts both halves to the broker
            for i, ce_id in enumerate(ids):
                for kind, body in (("request", request_body(image(i))), ("response", response_body("two", 0.95))):
                    assert client.post(loop.broker_url + "/", content=body,
                                       headers=ce_headers(ce_id, kind)).status_code in (200, 202)
            store = Store(postgres_url)
            try:
                assert wait_until(lambda: all((s := store.get_sample(i)) is not None and s.complete for i in ids),
                                  60), "the captures did not reach PostgreSQL"
                status = client.get(loop.capture_url + "/status").json()
                assert status["captured"] == 2 and "127.0.0.1" in status["db"]
                assert postgres.password not in json.dumps(status)  # the URL is shown without its password
                # feedback through the gateway: the capture sink's uvicorn takes each caller's
                # address from the X-Forwarded-For the gateway appends, so each has its own cap
                gateway = Gateway(load_stage_manifest("production"), [Revision("food11-transformer-00001",
                                                                               f"http://127.0.0.1:{free_port()}")],
                                  logger_enabled=False, feedback_url=loop.capture_url)
                answers = []
                for caller, ce_id in ((("198.51.100.20", 1), ids[0]), (("198.51.100.20", 1), ids[1]),
                                      (("198.51.100.21", 1), ids[1])):
                    with TestClient(gateway.app(), client=caller) as gw:
                        answers.append(gw.post("/v1/feedback", json={"inference_id": ce_id, "correct": False,
                                                                     "correct_class": "one"}))
                assert [r.status_code for r in answers] == [200, 429, 200], [r.text for r in answers]
                assert answers[0].json()["label_status"] == "pending_review"  # 0.95: waits for an annotator
                with store.session() as s:
                    labels = s.query(Label).filter_by(label_source=USER).all()
                    assert {(lab.sample_id, lab.review) for lab in labels} == {(ids[0], PENDING), (ids[1], PENDING)}
                    assert len({lab.labelled_by for lab in labels}) == 2  # two clients
            finally:
                store.dispose()


def test_a_postgresql_loop_database_that_does_not_answer_is_exit_3(tmp_path, capsys):
    from capture_sink.__main__ import main as capture_main
    from gourmetgram_app.cli.main import main

    url = f"postgresql+psycopg2://gourmetgram:s3cret-pw@127.0.0.1:{free_port()}/loop"  # nothing listens there
    assert capture_main(["--db", url, "--class-names", ",".join(CLASSES),
                         "--objects", (tmp_path / "objects").as_uri()]) == 3
    assert main(["loop", "status", "--db", url]) == 3
    err = capsys.readouterr().err
    assert err.count("the loop database at postgresql+psycopg2://gourmetgram:***@127.0.0.1:") == 2, err
    assert "is not available" in err and "s3cret-pw" not in err
