"""Config files: the built-in ones load; mistakes are named at load, never silently defaulted.

Every message names the file, the key path, what is wrong and what is allowed.
"""

from __future__ import annotations

import pytest

from gourmetgram.config import ExportConfig, load_config, load_slo, override
from gourmetgram.constants import CONFIG_DIR
from gourmetgram.errors import ConfigError
from gourmetgram.rollout import analysis
from gourmetgram_app.cli.main import main


@pytest.mark.parametrize("name", ["demo", "food11"])
def test_builtin_configs_load(name):
    cfg = load_config(name)
    assert cfg.model.image_size in (64, 224)
    assert cfg.train.epochs > 0
    assert cfg.evaluation.slices and all(0 <= s.min_accuracy <= 1 for s in cfg.evaluation.slices)
    assert cfg.source == str(CONFIG_DIR / f"{name}.yaml")


def test_shipped_rollout_and_slo_configs_load():
    assert analysis.load_config().auto.steps == (10, 50)
    assert load_slo("slo").max_error_rate == 0.01


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_the_allowed_ones(tmp_path):
    path = _write(tmp_path, "train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: unknown key 'train.epochz'; allowed in train: epochs, batch_size")


def test_unknown_key_in_a_list_item(tmp_path):
    path = _write(tmp_path, "evaluation:\n  slices:\n    - {name: a, path: p, min_acuracy: 0.5}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'evaluation\.slices\[0\]\.min_acuracy'; "
                                          r"allowed in evaluation\.slices\[0\]: name, path, min_accuracy"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = _write(tmp_path, "train:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=f"^{path}: train.batch_size must be an integer, got 'lots'$"):
        load_config(path)


@pytest.mark.parametrize("text, message", [
    ("train:\n  batch_size: '32'\n", "train.batch_size must be an integer, got '32'"),  # no silent str -> int
    ("train:\n  hflip: 1\n", "train.hflip must be true or false, got 1"),
    ("train: 3\n", "train must be a mapping of keys, got 3"),
    ("export:\n  preferred_batch_sizes: 8\n", "export.preferred_batch_sizes must be a list, got 8"),
])
def test_wrong_types(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(_write(tmp_path, text))


def test_out_of_range(tmp_path):
    path = _write(tmp_path, "evaluation:\n  min_overall_accuracy: 85\n")
    with pytest.raises(ConfigError, match=r"evaluation.min_overall_accuracy must be in \[0, 1\], got 85"):
        load_config(path)


def test_bad_slice_threshold_fails_at_load_before_any_training(tmp_path):
    # The reason this validation exists: a threshold used only at evaluation time must
    # not wait for a whole training run to be found wrong.
    path = _write(tmp_path, "evaluation:\n  slices:\n    - {name: a, path: p, min_accuracy: 1.5}\n"
                            "  failure_modes:\n    - {name: b, path: q, expected_class: -1, min_accuracy: 0.5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "evaluation.slices[0].min_accuracy must be in [0, 1], got 1.5" in str(err.value)
    assert "evaluation.failure_modes[0].expected_class must be >= 0, got -1" in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: -1\n", r"train.epochs must be >= 0, got -1"),
    ("train:\n  batch_size: 0\n", r"train.batch_size must be >= 1, got 0"),
    ("train:\n  lr: 0\n", r"train.lr must be > 0, got 0"),
    ("train:\n  crop_scale: 1.2\n", r"train.crop_scale must be in \(0, 1\], got 1.2"),
    ("train:\n  device: gpu\n", r"train.device must be one of auto, cpu, cuda, got 'gpu'"),
    ("train:\n  init_from: latest\n", r"train.init_from must be one of production, scratch, got 'latest'"),
    ("train:\n  fine_tune:\n    lr: 0\n", r"train.fine_tune.lr must be > 0, got 0"),
    ("train:\n  fine_tune:\n    epochs: -2\n", r"train.fine_tune.epochs must be >= 0, got -2"),
    ("train:\n  fine_tune:\n    production_share: 1.5\n", r"train.fine_tune.production_share must be in \[0, 1\], got 1.5"),
    ("train:\n  fine_tune:\n    epoch: 3\n",
     r"unknown key 'train.fine_tune.epoch'; allowed in train.fine_tune: epochs, lr, production_share"),
    ("model:\n  arch: resnet\n", r"model.arch must be one of mobilenet_v2, got 'resnet'"),
    ("export:\n  instance_kind: GPU\n", r"export.instance_kind must be one of KIND_CPU, KIND_GPU, KIND_AUTO"),
    ("export:\n  max_batch_size: 4\n  preferred_batch_sizes: [2, 8]\n",
     r"export: preferred_batch_sizes \[8\] exceed max_batch_size 4"),
    ("export:\n  precision: bf16\n", r"export.precision must be one of fp32, fp16, got 'bf16'"),
    ("export:\n  fp16_parity_atol: 0\n", r"export.fp16_parity_atol must be > 0, got 0"),
    ("export:\n  instance_kind: KIND_CPU\n  tensorrt_fp16: true\n",
     r"export: tensorrt_fp16 needs GPU instances: set instance_kind to KIND_GPU or KIND_AUTO"),
    ("evaluation:\n  slices:\n    - {name: a, path: p, min_accuracy: 0.5}\n"
     "  failure_modes:\n    - {name: a, path: q, expected_class: 1, min_accuracy: 0.5}\n",
     r"evaluation: slice and failure mode names must be unique; repeated: a"),
    ("evaluation:\n  slices:\n    - {name: a}\n", r"evaluation.slices\[0\].path is required"),
])
def test_bounds_and_choices(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_all_problems_are_reported_at_once(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: -1\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"train.epochs must be >= 0, got -1; train.batch_size must be >= 1"):
        load_config(path)


def test_empty_section_means_defaults(tmp_path):
    assert load_config(_write(tmp_path, "train:\nmodel:\n  image_size: 64\n")).train.epochs == 20


def test_missing_config_lists_builtins():
    with pytest.raises(ConfigError, match="built-in configs: .*demo"):
        load_config("nope")


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path, "train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_override_checks_values():
    cfg = override(load_config("demo"), "train", epochs=0)
    assert cfg.train.epochs == 0 and cfg.train.batch_size == load_config("demo").train.batch_size
    with pytest.raises(ConfigError, match="demo.yaml with train overrides: train.epochs must be >= 0, got -1"):
        override(cfg, "train", epochs=-1)
    with pytest.raises(ConfigError, match="unknown key 'train.epochz'"):
        override(cfg, "train", epochz=3)
    assert override(cfg, "train", epochs=None) is cfg  # unset pipeline parameters change nothing


def test_objects_built_in_code_keep_their_shape():
    # Tests and benchmarks build configs directly (deliberately unreachable gates too).
    cfg = ExportConfig(max_batch_size=8, preferred_batch_sizes=(4,), int8_min_agreement=1.01)
    assert cfg.int8_min_agreement == 1.01


@pytest.mark.parametrize("text, message", [
    ("analysis:\n  window: 2 minutes\n",
     r"analysis.window must be a Prometheus duration like 30s, 2m or 1h, got '2 minutes'"),
    ("analysis:\n  max_confidence_drop: 2\n", r"analysis.max_confidence_drop must be in \[0, 1\], got 2"),
    ("auto:\n  steps: [50, 10]\n", r"auto.steps must be strictly increasing percentages"),
    ("auto:\n  steps: [0, 100]\n", r"auto.steps\[0\] must be in \[1, 99\], got 0; auto.steps\[1\] must be in"),
    ("auto:\n  interval_s: 0\n", r"auto.interval_s must be > 0, got 0"),
    ("analysis:\n  windw: 1m\n", r"unknown key 'analysis.windw'; allowed in analysis: window, min_requests"),
])
def test_rollout_config_is_validated_at_load(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        analysis.load_config(_write(tmp_path, text))


def test_slo_config_is_validated_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"max_error_rate must be in \[0, 1\], got 2; min_rps must be >= 0"):
        load_slo(_write(tmp_path, "p95_ms: 100\nmax_error_rate: 2\nmin_rps: -1\n"))
    with pytest.raises(ConfigError, match="p95_ms is required"):
        load_slo(_write(tmp_path, "max_error_rate: 0.1\nmin_rps: 1\n"))


def test_cli_refuses_a_bad_config_with_exit_2_and_the_message(tmp_path, capsys):
    path = _write(tmp_path, "analysis:\n  max_class_shift: 7\n")
    assert main(["rollout", "analyze", "--config", str(path), "--gateway", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: analysis.max_class_shift must be in [0, 1], got 7" in err
    # a command-line option is validated like the file
    assert main(["rollout", "analyze", "--window", "soon", "--gateway", "http://127.0.0.1:9"]) == 2
    assert "analysis.window must be a Prometheus duration" in capsys.readouterr().err


def _loaders():
    from gourmetgram.config import load_config, load_slo
    from gourmetgram.loop.settings import load_loop_settings
    from gourmetgram.retrain.settings import load_retrain_settings
    from gourmetgram.rollout.config import load_config as load_rollout

    return {"run": (load_config, "demo"), "slo": (load_slo, "slo"), "rollout": (load_rollout, "rollout"),
            "retrain": (load_retrain_settings, "retrain"), "loop": (load_loop_settings, "loop")}


@pytest.mark.parametrize("kind", ["run", "slo", "rollout", "retrain", "loop"])
def test_every_config_file_is_loaded_one_way(kind, tmp_path):
    """Each loader is config.load_file: a name or a path, the same refusals (a missing file
    lists the built-in configs, an unknown key is named), the file recorded as the source."""
    from gourmetgram.constants import CONFIG_DIR

    load, name = _loaders()[kind]
    loaded = load(name)
    assert loaded.source == str(CONFIG_DIR / f"{name}.yaml")
    with pytest.raises(ConfigError, match=r"not found .*built-in configs: .*demo"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_section: 1\n")
    with pytest.raises(ConfigError, match=rf"{bad}: .*unknown key 'no_such_section'"):
        load(bad)


def test_the_environment_is_read_through_one_settings_object(monkeypatch):
    """gourmetgram.environment: each variable once, typed, read when asked (a variable set later is
    seen), empty as unset; the core and the app read no variable by its name anywhere else."""
    import ast

    from gourmetgram.constants import REPO_ROOT
    from gourmetgram.environment import Environment, environment
    from gourmetgram.loop import settings

    aliases = {f.alias for f in Environment.model_fields.values()}
    for name in (settings.ENV_DB_URL, settings.ENV_OBJECTS_URL, settings.ENV_S3_ENDPOINT, settings.ENV_LS_URL,
                 settings.ENV_LS_TOKEN, "GOURMETGRAM_HOME", "MLFLOW_TRACKING_URI", "KFP_TOKEN"):
        assert name in aliases
    monkeypatch.setenv("GOURMETGRAM_LOOP_DB", "sqlite:////tmp/x.db")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("GOURMETGRAM_S3_ENDPOINT_URL", "  ")
    env = environment()
    assert env.loop_db == "sqlite:////tmp/x.db" and settings.db_url() == "sqlite:////tmp/x.db"
    assert env.s3_endpoint is None and env.s3_endpoint_url() == "http://minio:9000"  # empty is unset
    by_name = []
    for root in ("gourmetgram", "gourmetgram_app"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            if path.name == "environment.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv")
                        and node.args and isinstance(node.args[0], ast.Constant)):
                    by_name.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not by_name, by_name
