"""The command line: every subcommand documents itself; bad input exits 2 with a reason."""

from __future__ import annotations

import argparse

import pytest
import yaml
from helpers import free_port

from gourmetgram_app.cli.main import build_parser, main


def _commands() -> list[list[str]]:
    """Every subcommand path (``[cmd]`` and ``[cmd, action]``) the parser knows."""
    def subparsers(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from action.choices.items()

    paths = []
    for name, sub in subparsers(build_parser()):
        paths.append([name])
        paths += [[name, action] for action, _ in subparsers(sub)]
    return paths


def test_pipeline_and_demo_commands_are_registered():
    paths = _commands()
    for expected in (["pipeline", "run"], ["pipeline", "compile"], ["pipeline", "submit"], ["demo"]):
        assert expected in paths


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p))
def test_every_subcommand_has_help(path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(path + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gourmetgram " + " ".join(path))
    assert len(out.splitlines()) > 3  # a description or options, not a bare usage line


def test_pipeline_run_help_names_its_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "run", "--help"])
    out = capsys.readouterr().out
    for option in ("--dataset", "--config", "--epochs", "--model-name", "--stage"):
        assert option in out


def test_missing_dataset_path_exits_2_before_any_step_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = main(["pipeline", "run", "--dataset", str(tmp_path / "nowhere"), "--config", "demo",
                 "--pipeline-root", str(runs)])
    assert code == 2
    assert f"dataset {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert not runs.exists()


def test_unknown_config_exits_2(tmp_path, capsys):
    code = main(["pipeline", "run", "--dataset", str(tmp_path), "--config", "nonsense"])
    assert code == 2
    err = capsys.readouterr().err
    assert "config 'nonsense' not found" in err and "demo" in err  # lists the built-in ones


def test_unsupported_dataset_scheme_exits_2(capsys):
    assert main(["pipeline", "run", "--dataset", "ftp://example.org/food11.zip", "--config", "demo"]) == 2
    assert "unsupported dataset URI scheme 'ftp'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["pipeline", "run", "--config", "demo"], "--dataset"),
    (["pipeline", "run", "--dataset", ".", "--epochs", "-5"], "epochs >= 0"),
    (["pipeline", "run", "--dataset", ".", "--epochs", "ten"], "not an integer"),
    (["pipeline", "run", "--dataset", ".", "--stage", "prod"], "invalid choice"),
    (["pipeline", "submit", "--experiment", "x"], "--host"),
    (["demo", "--epochs", "-2"], "epochs >= 0"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_submit_needs_an_http_host_and_a_package(tmp_path, capsys):
    assert main(["pipeline", "submit", "--host", "localhost:8888", "--param", "dataset_uri=x"]) == 2
    assert "must be an http(s) URL" in capsys.readouterr().err
    assert main(["pipeline", "submit", "--host", "http://localhost:1", "--package",
                 str(tmp_path / "missing.yaml"), "--param", "dataset_uri=x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_submit_to_an_unreachable_host_exits_3(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    port = free_port()  # a port nobody listens on
    code = main(["pipeline", "submit", "--host", f"http://127.0.0.1:{port}", "--param", "dataset_uri=x"])
    assert code == 3  # the KFP API is a dependency that is unavailable
    assert "could not submit" in capsys.readouterr().err


def test_compile_writes_a_loadable_pipeline(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--output", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "gourmetgram-training"
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize(("outcome", "code"), [("SUCCEEDED", 0), ("FAILED", 1), (TimeoutError("Run timeout"), 3)])
def test_submit_wait_exits_by_how_the_run_ended(outcome, code, capsys):
    """`pipeline submit --wait` (infra/scripts/first_run.sh waits on each training run) on kfp's
    RunPipelineResult.wait_for_run_completion: its end state decides the exit code."""
    from gourmetgram.errors import DependencyUnavailable
    from gourmetgram_app.pipeline_runs import wait_for_run

    class Result:  # kfp.client.client.RunPipelineResult's interface (no KFP backend runs here)
        run_id = "run-1"

        def wait_for_run_completion(self, timeout=None):
            assert timeout == 60
            if isinstance(outcome, Exception):
                raise outcome
            return type("Run", (), {"state": outcome})()

    if code == 3:
        with pytest.raises(DependencyUnavailable, match="did not finish within 60 s"):
            wait_for_run(Result(), 60, "http://kfp")
    else:
        assert wait_for_run(Result(), 60, "http://kfp") == code
        assert f"run run-1: {outcome}" in capsys.readouterr().out
