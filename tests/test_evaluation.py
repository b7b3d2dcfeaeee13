"""Offline evaluation suite: eval sets, metrics, slices, failure modes, templates, the gate, MLflow."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gourmetgram.classes import class_dir_name, write_class_names
from gourmetgram.config import EvaluationConfig, FailureModeConfig, SliceConfig, TemplateConfig, load_config, override
from gourmetgram.data.demo import load_digits, split_indices
from gourmetgram.errors import ConfigError
from gourmetgram.evaluation import metrics as M
from gourmetgram.evaluation.demo_sets import build_demo_eval_sets
from gourmetgram.evaluation.suite import EvaluationResult, evaluate, log_evaluation
from gourmetgram.evaluation.templates import Composition, compose_image, score_templates
from gourmetgram.model import ModelSpec, build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def one_thread():
    """Inference on a shared 2-core machine is several times faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the demo's evaluation sets ------------------------------------------------------------------

def _indices_in(folder: Path) -> set[int]:
    return {int(p.stem) for p in folder.rglob("*") if p.is_file() and p.stem.isdigit()}


def test_demo_eval_sets_are_valid_and_held_out(demo_dataset):
    sets = demo_dataset / "eval_sets"
    for name in ("dark_background", "small_digits"):
        folders = sorted(p.name for p in (sets / "slices" / name).iterdir())
        assert folders == [class_dir_name(i) for i in range(10)]
        for image_path in (sets / "slices" / name / "class_03").iterdir():
            with Image.open(image_path) as im:
                assert im.format == "JPEG" and im.size == (64, 64)
    dark = np.mean([np.asarray(Image.open(p)).mean() for p in (sets / "slices/dark_background/class_00").iterdir()])
    assert dark < 110, "dark_background slice should be dark"
    for name in ("faint_eights", "bold_ones"):
        files = list((sets / "failure_modes" / name).glob("*.jpg"))
        assert len(files) >= 20
    templates = sets / "templates"
    backgrounds = sorted((templates / "backgrounds").glob("*.png"))
    extras = sorted((templates / "extras").glob("*.png"))
    assert len(backgrounds) >= 2 and {p.stem for p in extras} >= {"fork"}
    with Image.open(extras[0]) as extra:
        alpha = np.asarray(extra.convert("RGBA"))[..., 3]
        assert extra.mode == "RGBA" and alpha.min() == 0 and alpha.max() == 255
    for cls in range(10):
        foods = list((templates / "foods" / class_dir_name(cls)).glob("*.png"))
        assert foods and all(Image.open(p).mode == "RGBA" for p in foods)

    # Only evaluation-split digits were used: nothing the model trained on leaks in.
    _, labels = load_digits()
    held_out = set(split_indices(labels, 0)["evaluation"])
    used = _indices_in(sets / "slices") | _indices_in(sets / "failure_modes") | _indices_in(templates / "foods")
    assert used and used <= held_out
    eights = _indices_in(sets / "failure_modes" / "faint_eights")
    assert {int(labels[i]) for i in eights} == {8}


def test_demo_eval_sets_build_from_the_evaluation_split(tmp_path):
    images, labels = load_digits()
    build_demo_eval_sets(tmp_path, images, labels, split_indices(labels, 0)["evaluation"], seed=0)
    assert len(list((tmp_path / "eval_sets").rglob("*.jpg"))) > 200


# -- metrics and templates, on controlled cases ---------------------------------------------------

def test_confusion_matrix_and_metrics():
    cm = M.confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    per_class = M.per_class_accuracy(cm)
    assert per_class[:3] == [0.5, 1.0, 0.0] and np.isnan(per_class[3])
    # F1: class 0 p=1/2 r=1/2 -> 0.5; class 1 p=2/3 r=1 -> 0.8; class 2 -> 0
    assert M.macro_f1(cm) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert M.metric_key("Noodles/Pasta") == "noodles_pasta"
    assert M.metric_key("Dairy product") == "dairy_product"


def test_compose_image_places_food_centre_and_extra_corner():
    background = Image.new("RGB", (64, 48), (200, 200, 200))
    food = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    extra = Image.new("RGBA", (10, 10), (0, 0, 255, 255))
    plain = compose_image(food, background)
    assert plain.mode == "RGB" and plain.size == (64, 48)
    assert plain.getpixel((32, 24)) == (255, 0, 0)
    assert plain.getpixel((63, 47)) == (200, 200, 200)
    with_extra = compose_image(food, background, extra)
    assert with_extra.getpixel((63, 47)) == (0, 0, 255)
    assert with_extra.getpixel((0, 0)) == (200, 200, 200)
    assert with_extra.getpixel((32, 24)) == (255, 0, 0)
    # Transparent parts of the food leave the background visible.
    ring = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert compose_image(ring, background).getpixel((32, 24)) == (200, 200, 200)


def _grid(classes=(0, 1), backgrounds=("bg1", "bg2"), extras=(None, "fork")):
    return [Composition(c, f"food{c}", bg, ex) for c in classes for bg in backgrounds for ex in extras]


def test_template_scores_on_a_controlled_case():
    plan = _grid()
    # food0 is read right except on bg2 with the fork (read as class 1); food1 always right.
    preds = [1 if (c.food_class == 0 and c.background == "bg2" and c.extra == "fork") else c.food_class
             for c in plan]
    scores = score_templates(plan, preds, ["a", "b"])
    assert scores.accuracy == pytest.approx(7 / 8)
    assert scores.invariance == pytest.approx(7 / 8)  # food0: 3 of 4 agree with its usual label
    assert scores.n_swaps == 4 and scores.sensitivity == pytest.approx(3 / 4)  # the fork scene: both say b
    assert len(scores.failures) == 1 and "predicted b, expected a" in scores.failures[0]

    constant = score_templates(plan, [0] * len(plan))
    assert constant.invariance == 1.0 and constant.sensitivity == 0.0 and constant.accuracy == 0.5


# -- the suite on a controlled dataset, with a model that reads pixels -----------------------------

COLOURS = {0: (220, 30, 30), 1: (30, 200, 30), 2: (30, 30, 220)}


class CentreColourModel(nn.Module):
    """Predicts the dominant channel of the image centre: right on solid-colour foods."""

    def __init__(self, image_size: int = 32):
        super().__init__()
        self.spec = ModelSpec(("red", "green", "blue"), image_size=image_size)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        centre = x[..., h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2]
        return centre.mean(dim=(-1, -2)) * self.scale


def _solid(colour, size=40, edge=(128, 128, 128)) -> Image.Image:
    image = Image.new("RGB", (size, size), edge)
    image.paste(Image.new("RGB", (size // 2, size // 2), colour), (size // 4, size // 4))
    return image


@pytest.fixture()
def colour_dataset(tmp_path) -> Path:
    root = tmp_path / "colours"
    for cls, colour in COLOURS.items():
        for k in range(3):
            for folder in (root / "evaluation", root / "eval_sets/slices/grey_edges"):
                (folder / class_dir_name(cls)).mkdir(parents=True, exist_ok=True)
                _solid(colour, edge=(100 + 20 * k,) * 3).save(folder / class_dir_name(cls) / f"{k}.png")
    (root / "eval_sets/failure_modes/dark_reds").mkdir(parents=True)
    for k in range(4):  # a dim red still has red as its strongest channel
        _solid((90 + 10 * k, 40, 40)).save(root / f"eval_sets/failure_modes/dark_reds/{k}.jpg", quality=95)
    t = root / "eval_sets/templates"
    for k, grey in enumerate((90, 160, 230)):
        (t / "backgrounds").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 48), (grey, grey, grey)).save(t / "backgrounds" / f"bg{k}.png")
    (t / "extras").mkdir()
    Image.new("RGBA", (8, 8), (0, 0, 255, 255)).save(t / "extras" / "blue_crumb.png")
    for cls, colour in COLOURS.items():
        (t / "foods" / class_dir_name(cls)).mkdir(parents=True)
        Image.new("RGBA", (20, 20), colour + (255,)).save(t / "foods" / class_dir_name(cls) / "f.png")
    write_class_names(root, ["red", "green", "blue"])
    return root


def _colour_cfg(**changes) -> EvaluationConfig:
    cfg = EvaluationConfig(
        min_overall_accuracy=0.9, min_per_class_accuracy=0.9,
        slices=(SliceConfig("grey_edges", "eval_sets/slices/grey_edges", 0.9),),
        failure_modes=(FailureModeConfig("dark_reds", "eval_sets/failure_modes/dark_reds", 0, 0.9),),
        templates=TemplateConfig("eval_sets/templates", min_invariance=0.9, min_sensitivity=0.9, min_accuracy=0.9),
        batch_size=4,
    )
    return dataclasses.replace(cfg, **changes)


def test_suite_passes_a_model_that_is_right(colour_dataset, tmp_path):
    result = evaluate(CentreColourModel(), colour_dataset, _colour_cfg(), tmp_path / "out")
    assert result.passed and result.reasons == []
    assert result.metrics["eval/accuracy"] == 1.0 and result.n_images == 9
    assert result.confusion_matrix == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert result.metrics["eval/slice/grey_edges/accuracy"] == 1.0
    assert result.metrics["eval/failure_mode/dark_reds/accuracy"] == 1.0
    # 3 foods x 3 backgrounds x (nothing, crumb) = 18; a crumb in the corner changes nothing.
    assert result.templates["n_compositions"] == 18
    assert result.metrics["eval/template/invariance"] == 1.0
    assert result.metrics["eval/template/sensitivity"] == 1.0
    assert all("=" not in k for k in result.metrics)
    assert "Verdict: PASSED" in result.format_report()


def test_suite_fails_a_model_that_is_wrong(colour_dataset, tmp_path):
    class Swapped(CentreColourModel):  # reads red as green, green as blue, blue as red
        def forward(self, x):
            return super().forward(x).roll(1, dims=1)

    cfg = _colour_cfg(failure_modes=(FailureModeConfig("dark_reds", "eval_sets/failure_modes/dark_reds", 0, 0.5),))
    result = evaluate(Swapped(), colour_dataset, cfg, tmp_path / "out")
    assert not result.passed
    assert "overall accuracy 0.000 < 0.900" in result.reasons
    assert "failure mode dark_reds accuracy 0.000 < 0.500" in result.reasons
    assert "template accuracy 0.000 < 0.900" in result.reasons
    assert result.metrics["eval/template/sensitivity"] == 1.0  # wrong, but consistently so
    assert result.failure_modes["dark_reds"]["predicted"] == {"green": 4}
    assert result.metrics["eval/passed"] == 0.0


def test_one_class_slice(colour_dataset, tmp_path):
    cfg = _colour_cfg(slices=(SliceConfig("reds", "eval_sets/failure_modes/dark_reds", 0.6, expected_class=0),
                              SliceConfig("not_blue", "evaluation/class_00", 0.6, expected_class=2)))
    result = evaluate(CentreColourModel(), colour_dataset, cfg, tmp_path / "out")
    assert result.slices["reds"]["accuracy"] == 1.0 and result.slices["not_blue"]["accuracy"] == 0.0
    assert result.reasons == ["slice not_blue accuracy 0.000 < 0.600"]


@pytest.mark.parametrize("change, message", [
    ({"slices": (SliceConfig("typo", "eval_sets/slices/nope", 0.5),)}, "slice 'typo'.*eval_sets/slices/nope"),
    ({"failure_modes": (FailureModeConfig("gone", "eval_sets/failure_modes/gone", 0, 0.5),)},
     "failure mode 'gone'.*eval_sets/failure_modes/gone"),
    ({"failure_modes": (FailureModeConfig("x", "eval_sets/failure_modes/dark_reds", 7, 0.5),)},
     "expected_class 7 is not a class"),
    ({"templates": TemplateConfig("eval_sets/no_templates")}, "eval_sets/no_templates does not exist"),
    ({"min_overall_accuracy": 85.0}, r"must be in \[0, 1\]: min_overall_accuracy"),
])
def test_bad_config_is_named(colour_dataset, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        evaluate(CentreColourModel(), colour_dataset, _colour_cfg(**change), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before any work


# -- the demo model: untrained fails, trained passes ------------------------------------------------

def _check_outputs(result: EvaluationResult, out: Path) -> None:
    png = out / "confusion_matrix.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 300
    again = EvaluationResult.from_json(out / "evaluation.json")
    assert again.to_dict() == result.to_dict()
    assert again.checks[0] == result.checks[0] and isinstance(again.checks[0].passed, bool)
    assert again.format_report() == result.format_report()


@pytest.fixture(scope="module")
def untrained_result(demo_dataset, tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config("demo")
        torch.manual_seed(0)
        spec = ModelSpec(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
                         cfg.model.image_size, cfg.model.arch, cfg.model.width_mult, cfg.model.dropout)
        out = tmp_path_factory.mktemp("eval_untrained")
        return evaluate(build_model(spec), demo_dataset, cfg.evaluation, out), out
    finally:
        torch.set_num_threads(before)


def test_untrained_demo_model_fails_with_reasons(untrained_result):
    result, out = untrained_result
    assert not result.passed
    assert result.n_images == sum(sum(row) for row in result.confusion_matrix) > 300
    assert result.metrics["eval/accuracy"] < 0.3
    gate = load_config("demo").evaluation.min_overall_accuracy
    assert any(re.fullmatch(rf"overall accuracy 0\.\d{{3}} < {gate:.3f}", r) for r in result.reasons)
    failed = {c.name for c in result.checks if not c.passed}
    assert {"overall accuracy", "slice dark_background accuracy", "template sensitivity"} <= failed
    assert len(result.reasons) == len(failed) >= 5
    report = result.format_report()
    assert "Verdict: FAILED" in report and "overall accuracy" in report and "faint_eights" in report
    for key in ("eval/class_accuracy/three", "eval/slice/dark_background/accuracy",
                "eval/failure_mode/faint_eights/accuracy", "eval/template/invariance", "eval/template/sensitivity"):
        assert key in result.metrics
    _check_outputs(result, out)


def test_the_report_gives_the_calibration_and_the_ood_thresholds_rates(untrained_result):
    """Not gated, reported: temperature, ECE before/after on the evaluation split with reliability
    tables, the OOD threshold's flagged share on held-back photos and on the demo's OOD sets."""
    result, out = untrained_result
    c = result.calibration
    assert c is not None and c["temperature"] > 0 and c["ece_bins"] == 15
    assert c["n_evaluation"] == result.n_images == sum(b["count"] for b in c["reliability_after"])
    assert 0 <= c["ece_after"] <= 1 and 0 <= c["ece_before"] <= 1
    assert list(c["ood"]) == ["evaluation (in distribution)", "blank_plates", "noise", "symbols"]
    assert [c["ood"][s]["n"] for s in ("blank_plates", "noise", "symbols")] == [60, 60, 60]
    # the threshold passes 95% of the validation photos; held-back photos of the same kind are
    # flagged about as rarely
    assert c["ood"]["evaluation (in distribution)"]["flagged"] <= 0.15
    report = result.format_report()
    assert "Calibration (temperature scaling fitted on validation (355 images)" in report
    assert "ECE before" in report and "Out-of-distribution threshold: energy score <=" in report
    assert re.search(r"  noise\s+60\s+\d\.\d{3}", report)
    for key in ("eval/calibration/temperature", "eval/calibration/ece_before", "eval/calibration/ece_after",
                "eval/ood/in_distribution/flagged", "eval/ood/symbols/flagged"):
        assert key in result.metrics
    assert EvaluationResult.from_json(out / "evaluation.json").calibration == c


def test_log_evaluation_to_mlflow(untrained_result, session_home):
    from gourmetgram.tracking import configure_mlflow

    result, _ = untrained_result
    mlflow = configure_mlflow()
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_metric("best_val_accuracy", 0.1)
    log_evaluation(result, run.info.run_id)
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.tags["evaluation.passed"] == "false"
    assert logged.data.metrics["eval/accuracy"] == pytest.approx(result.metrics["eval/accuracy"])
    assert "eval/class_accuracy/three" in logged.data.metrics and "best_val_accuracy" in logged.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/evaluation.json"} <= artifacts
    assert mlflow.active_run() is None


# What a shortened run reaches differs between CPU types (AVX2 vs AVX-512 kernels; training
# amplifies the difference): 6 epochs gave 0.755 here and a 12-epoch run 0.804 on another machine,
# where 20 epochs give 0.92-0.95 (benchmarks/training_margin.py). So a short run is only held to
# having learned, far above chance (0.1) and the untrained net; the demo's own thresholds are the
# full run's, asserted by the pipeline test.
SHORT_RUN_EPOCHS = 6
SHORT_RUN_MIN_ACCURACY = 0.4


@pytest.mark.slow
def test_a_short_training_run_learns(demo_dataset, tmp_path, one_thread, untrained_result):
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.model import load_checkpoint
    from gourmetgram.training import train

    cfg = override(load_config("demo"), "train", epochs=SHORT_RUN_EPOCHS, patience=SHORT_RUN_EPOCHS)
    report = validate_dataset(demo_dataset, progress=False)
    trained = train(demo_dataset, report, cfg, tmp_path / "model.pt", log_to_mlflow=False, progress=False)
    assert trained.epochs_run == SHORT_RUN_EPOCHS and trained.best_val_accuracy > SHORT_RUN_MIN_ACCURACY
    result = evaluate(load_checkpoint(trained.checkpoint), demo_dataset, cfg.evaluation, tmp_path / "out")
    untrained, _ = untrained_result
    assert result.metrics["eval/accuracy"] >= SHORT_RUN_MIN_ACCURACY, result.format_report()
    assert result.metrics["eval/accuracy"] >= untrained.metrics["eval/accuracy"] + 0.25
    assert result.n_images == untrained.n_images and set(result.metrics) == set(untrained.metrics)
    _check_outputs(result, tmp_path / "out")
