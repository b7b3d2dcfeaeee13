"""`gourmetgram demo` is a contract: every stage states its expected outcome, and the demo exits 1
naming the first stage whose outcome did not happen (it never reports success past a failed
stage, as it once did with a rejected retrain)."""

from __future__ import annotations

import argparse

import pytest

from gourmetgram.errors import DependencyUnavailable
from gourmetgram_app.cli.commands.demo import STAGES, DemoContext, OutcomeMissing, Stage, run_stages
from gourmetgram_app.cli.main import main


def _ctx(tmp_path) -> DemoContext:
    return DemoContext(args=argparse.Namespace(), home=tmp_path)


def _stage(number: int, name: str, ran: list[str], fail: BaseException | None = None) -> Stage:
    def run(ctx: DemoContext) -> str:
        ran.append(name)
        if fail is not None:
            raise fail
        return f"{name} happened"

    return Stage(f"{number}. {name}: the {name} stage", f"{name} happens", run)


def test_the_demo_exits_1_naming_the_first_stage_whose_outcome_is_missing(tmp_path, capsys):
    ran: list[str] = []
    ctx = _ctx(tmp_path)
    stopped: list[bool] = []
    ctx.cleanup.callback(stopped.append, True)  # a service a stage started
    stages = [_stage(1, "data", ran), _stage(2, "canary", ran, OutcomeMissing("the good canary was held")),
              _stage(3, "drift", ran)]
    assert run_stages(ctx, stages) == 1
    out = capsys.readouterr().out
    assert ran == ["data", "canary"]  # nothing runs after the failed stage
    assert stopped == [True]  # and what the stages started is stopped
    assert "expected outcome: data happens" in out and "expected outcome: canary happens" in out
    assert "ok  stage 1: data happened" in out
    assert ("DEMO FAILED at stage 2 (canary): expected: canary happens; it did not happen: the good canary "
            "was held") in out
    assert "DEMO OK" not in out


def test_the_demo_exits_0_only_when_every_stage_happened(tmp_path, capsys):
    ran: list[str] = []
    skipped = Stage("3. cycle: skipped", "never asked for", lambda ctx: "ran", lambda ctx: False)
    assert run_stages(_ctx(tmp_path), [_stage(1, "data", ran), _stage(2, "serve", ran), skipped]) == 0
    out = capsys.readouterr().out
    assert ran == ["data", "serve"] and "never asked for" not in out
    assert "DEMO OK: every stage's expected outcome happened" in out


def test_an_error_in_a_stage_names_the_stage_and_keeps_its_exit_code(tmp_path, capsys):
    ran: list[str] = []
    stages = [_stage(1, "data", ran), _stage(2, "serve", ran, DependencyUnavailable("Triton did not start"))]
    with pytest.raises(DependencyUnavailable):
        run_stages(_ctx(tmp_path), stages)
    assert "DEMO STOPPED at stage 2 (serve): DependencyUnavailable: Triton did not start" in capsys.readouterr().err


def test_every_stage_of_the_demo_states_its_expected_outcome():
    assert [s.title.split(".")[0] for s in STAGES] == [str(n) for n in range(1, 9)]
    for stage in STAGES:
        assert len(stage.expected) > 10, stage.title
    assert "promoted" in STAGES[-1].expected and "rolled back" in STAGES[5].expected
    assert "Label Studio" in STAGES[4].expected and "drift alarm" in STAGES[6].expected


@pytest.mark.slow
def test_a_rejected_model_fails_the_demo_at_the_pipeline_stage(session_home, capsys):
    """The real thing: an untrained model (--epochs 0) is rejected by the evaluation gate, so the
    demo's stage 2 promise (a registered model) did not happen: exit 1, naming stage 2."""
    assert main(["demo", "--epochs", "0", "--no-serve"]) == 1
    out = capsys.readouterr().out
    assert "DEMO FAILED at stage 2 (pipeline): expected: the model passes the evaluation gate and is registered" in out
    assert "the evaluation gate rejected the model" in out and "# 3. report" not in out


def test_the_loop_watcher_reports_a_runs_events_once_each_in_order(tmp_path):
    """Stage 8 prints what the system recorded: the run's start (its trigger), each step, its end."""
    from datetime import datetime, timedelta, timezone

    from gourmetgram.retrain.history import History
    from gourmetgram_app.local.loopwatch import LoopWatcher

    history = History(tmp_path / "history.jsonl")
    before = datetime.now(timezone.utc) - timedelta(hours=1)
    history.append({"event": "started", "run_id": "old", "started_at": before.isoformat(), "source": "cli"})
    watcher = LoopWatcher(history, since=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert watcher.poll() == [] and watcher.finished_run() is None  # an earlier run is not this stage's
    now = datetime.now(timezone.utc).isoformat()
    history.append({"event": "started", "run_id": "r1", "started_at": now, "reasons": ["drift"],
                    "source": "alertmanager:GourmetGramDriftDetected", "labels_at_start": 57})
    history.step("r1", "gate", passed=True, seconds=80.0, sets={"original": {"v1": 0.9, "v2": 0.92, "n": 368}})
    first = [e.text for e in watcher.poll()]
    assert first == ["run r1 started by alertmanager:GourmetGramDriftDetected (reasons: drift; 57 labels in "
                     "the loop store)",
                     "differential gate (pipeline done in 80.0 s): PASSED; original (368 images) v1 0.900 -> v2 0.920"]
    history.step("r1", "staging", passed=True, summary="SLO: PASS p95 40 ms", reasons=[], warmup={"sent": 20, "ok": 20})
    history.step("r1", "canary", percent=10, revision="food11-predictor-00004")
    history.step("r1", "canary", percent=50, revision="food11-predictor-00004")
    history.step("r1", "decision", outcome="promoted", detail="food11-predictor-00004 serves all traffic")
    history.append({"event": "finished", "run_id": "r1", "status": "promoted", "version": 3,
                    "finished_at": datetime.now(timezone.utc).isoformat()})
    second = [e.text for e in watcher.poll()]
    assert second == [
        "staging gate (compiled pipeline on kfp.local, 20/20 warm-up requests first): PASSED (SLO: PASS p95 40 ms)",
        "canary at 10% (food11-predictor-00004)", "canary at 50% (food11-predictor-00004)",
        "decision: PROMOTED (food11-predictor-00004 serves all traffic)", "run r1 finished: PROMOTED (version 3)"]
    assert watcher.poll() == []  # each event once
    run = watcher.finished_run()
    assert run is not None and run["finished"]["status"] == "promoted" and len(run["steps"]) == 5


def test_the_gate_step_says_the_paired_figures_when_the_gate_gives_them():
    from gourmetgram_app.local.loopwatch import describe_step

    plain = describe_step({"event": "step", "step": "gate", "passed": True, "seconds": 9,
                           "sets": {"original": {"v1": 0.9, "v2": 0.91, "n": 10}}})
    assert plain.endswith("original (10 images) v1 0.900 -> v2 0.910")
    paired = describe_step({"event": "step", "step": "gate", "passed": False, "seconds": 9, "reasons": ["worse"],
                            "sets": {"original": {"v1": 0.9, "v2": 0.8, "n": 10, "delta": -0.1,
                                                  "interval": [-0.2, -0.05], "test": "non-inferiority",
                                                  "passed": False}}})
    assert "REJECTED: worse" in paired
    assert "v1 0.900 -> v2 0.800 (difference -0.100, interval [-0.200, -0.050], non-inferiority: FAIL)" in paired


def test_the_data_stage_rebuilds_a_demo_dataset_written_without_its_evaluation_sets(tmp_path):
    """A dataset some other tool wrote without eval_sets/ (the demo config's report reads them) is
    not taken as the demo's: stage 1 writes it whole again, so stage 2 does not stop on it."""
    from gourmetgram.data.demo import build_demo_dataset
    from gourmetgram_app.cli.commands.demo import stage_data

    root = tmp_path / "data" / "demo"
    build_demo_dataset(root, with_eval_sets=False)
    ctx = DemoContext(args=argparse.Namespace(rebuild_data=False), home=tmp_path)
    stage_data(ctx)
    assert (root / "eval_sets" / "slices" / "dark_background").is_dir() and ctx.dataset == root
