"""Re-training on production data: the merge of a `loop export` into the base dataset (with
provenance), the evaluation sets it yields (original / production), and the differential gate:
its verdict from the paired figures (pure), and, with real models, a real registry and real
bundles (local and in S3), a worse candidate rejected and a better one accepted."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from gourmetgram.config import DifferentialConfig, EvaluationConfig, load_config
from gourmetgram.data.merge import MERGED_LINEAGE, PROVENANCE_FILE, merge_production
from gourmetgram.errors import DatasetError
from gourmetgram.evaluation import differential as D
from gourmetgram.evaluation.paired import PairedCounts, mcnemar_p
from gourmetgram.evaluation.suite import EvaluationResult

CLASSES = ["bread", "dessert"]


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, (seed * 7) % 256, 3)).save(out, "PNG")
    return out.getvalue()


def _dataset(root: Path, n: int = 2, prefix: str = "img", seed: int = 0) -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for split in ("training", "validation", "evaluation"):
        for c in range(len(CLASSES)):
            d = root / split / f"class_{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{prefix}_{i}.png").write_bytes(_png(seed + 100 * c + 10 * i + len(split)))
    return root


def _export(root: Path) -> Path:
    """A `loop export`-shaped folder: prod_<hash> files and lineage.json."""
    _dataset(root, n=1, prefix="prod_abc", seed=7)
    samples = []
    for path in sorted(root.rglob("prod_*.png")):
        rel = str(path.relative_to(root))
        samples.append({"file": rel, "split": rel.split("/")[0], "label": CLASSES[int(rel.split("/")[1][-2:])],
                        "label_source": "annotator" if "class_00" in rel else "user",
                        "sample_id": f"s-{len(samples)}", "model_version": "1"})
    (root / "lineage.json").write_text(json.dumps({"created_at": "2026-12-01T00:00:00+00:00", "samples": samples}))
    return root


def test_merge_adds_production_images_with_provenance(tmp_path):
    base = _dataset(tmp_path / "base")
    prov = merge_production(base, _export(tmp_path / "export"), "file:///export", "file:///base", "fp-base")
    p = prov["production"]
    assert p["images"] == 6 and p["added"] == {"training": 2, "validation": 2, "evaluation": 2}
    assert p["label_sources"] == {"annotator": 3, "user": 3} and p["model_versions"] == {"1": 6}
    assert len(p["fingerprint"]) == 64 and prov["base"]["fingerprint"] == "fp-base"
    assert (base / "evaluation" / "class_01" / "prod_abc_0.png").is_file()
    assert json.loads((base / PROVENANCE_FILE).read_text()) == prov
    assert (base / MERGED_LINEAGE).is_file()
    sets = D.evaluation_sets(base)
    assert len(sets[D.ORIGINAL][0]) == 4 and len(sets[D.PRODUCTION_SET][0]) == 2
    assert sets[D.PRODUCTION_SET][1] == [0, 1]
    # merging the same export again (an export made with --base): equal files are skipped
    assert merge_production(base, tmp_path / "export")["production"]["already_in_base"] == 6


def test_merge_refuses_what_it_cannot_merge(tmp_path):
    base = _dataset(tmp_path / "base")
    with pytest.raises(DatasetError, match="lineage.json"):
        merge_production(base, _dataset(tmp_path / "plain"))
    other = _export(tmp_path / "other")
    (other / "classes.txt").write_text("soup\nrice\n")
    with pytest.raises(DatasetError, match="classes"):
        merge_production(base, other)
    clash = _export(tmp_path / "clash")
    (base / "training" / "class_00" / "prod_abc_0.png").write_bytes(_png(999))
    with pytest.raises(DatasetError, match="other content"):
        merge_production(base, clash)


CFG = DifferentialConfig(margin=0.02, confidence=0.95, gated_sets=(D.ORIGINAL, D.PRODUCTION_SET), min_images=5,
                         require_improvement=True, improvement_min_images=30)


def _counts(n: int, gains: int, losses: int, both_share: float = 0.9) -> PairedCounts:
    both = round((n - gains - losses) * both_share)
    return PairedCounts(both, gains, losses, n - gains - losses - both)


def test_a_candidate_confidently_worse_than_the_margin_is_rejected():
    # 368 images, 40 more wrong than production (-0.109): its interval lies far below -0.02
    c = D.judge_sets({D.ORIGINAL: _counts(368, 5, 45), D.PRODUCTION_SET: None}, "3", CFG)
    assert not c.passed
    (reason,) = c.reasons
    assert "original evaluation set (368 images)" in reason and "-0.109" in reason and "version 3" in reason
    assert "worse by more than the margin 0.020 with 95% confidence" in reason
    row = {s.name: s for s in c.sets}[D.ORIGINAL]
    assert row.test == D.NON_INFERIORITY and row.interval is not None and row.interval[1] < -0.02
    assert row.p_value == pytest.approx(mcnemar_p(PairedCounts(0, 5, 45, 0)))
    assert {s.name: s for s in c.sets}[D.PRODUCTION_SET].n_images == 0


def test_a_difference_within_the_noise_is_not_rejected():
    """3 images lost and none gained among 100 (-0.03): beyond a 0.02 tolerance on the point
    estimate, which rejected such candidates, but not a confident loss of more than the margin."""
    noisy = _counts(100, 0, 3)
    assert noisy.difference == pytest.approx(-0.03)
    c = D.judge_sets({D.ORIGINAL: noisy}, "3", CFG)
    assert c.passed, c.reasons
    row = c.sets[0]
    assert row.interval is not None and row.interval[0] < -0.02 < row.interval[1]
    # the same loss rate over 4000 images is no longer noise
    assert not D.judge_sets({D.ORIGINAL: _counts(4000, 0, 120)}, "3", CFG).passed


def test_the_production_set_must_show_an_improvement_when_it_is_large_enough():
    better = _counts(30, 12, 1, both_share=0.1)  # 12 fixed, 1 broken: one-sided p = 14/8192
    c = D.judge_sets({D.ORIGINAL: _counts(368, 2, 2), D.PRODUCTION_SET: better}, "3", CFG)
    assert c.passed, c.reasons
    row = {s.name: s for s in c.sets}[D.PRODUCTION_SET]
    assert row.test == D.IMPROVEMENT and row.p_better == pytest.approx(14 / 8192)
    # as many fixed as broken: no improvement, rejected with the test's figures
    same = _counts(30, 3, 3, both_share=0.1)
    c = D.judge_sets({D.ORIGINAL: _counts(368, 2, 2), D.PRODUCTION_SET: same}, "3", CFG)
    (reason,) = c.reasons
    assert "production evaluation set (30 images)" in reason and "not better with 95% confidence" in reason
    assert "exact McNemar, one-sided p = 0.656" in reason
    # without require_improvement the same figures only need non-inferiority
    lenient = dataclasses.replace(CFG, require_improvement=False)
    assert D.judge_sets({D.PRODUCTION_SET: same}, "3", lenient).passed


def test_a_small_production_set_is_judged_for_non_inferiority_and_says_why():
    small = _counts(12, 4, 0, both_share=0.0)
    row = D.judge(D.PRODUCTION_SET, small, CFG)
    assert row.test == D.NON_INFERIORITY and row.passed
    assert "12 images, fewer than the 30 an improvement test needs" in row.note
    tiny = D.judge(D.PRODUCTION_SET, _counts(3, 0, 3, both_share=0.0), CFG)  # all wrong, but 3 images
    assert not tiny.gated and tiny.passed and "fewer than 5 images" in tiny.note
    ungated = D.judge(D.PRODUCTION_SET, _counts(50, 0, 40), dataclasses.replace(CFG, gated_sets=(D.ORIGINAL,)))
    assert not ungated.gated and ungated.passed


def test_the_report_prints_the_difference_with_its_interval_and_p_value():
    c = D.judge_sets({D.ORIGINAL: _counts(368, 5, 45), D.PRODUCTION_SET: _counts(30, 12, 1, 0.1)}, "3", CFG)
    text = D.format_comparison(c.to_dict())
    assert "version 3" in text and "FAILED" in text and "margin 0.020" in text and "95% confidence" in text
    original = next(line for line in text.splitlines() if line.strip().startswith("original"))
    row = c.sets[0]
    assert row.interval is not None
    assert f"{row.delta:+.3f}" in original and f"[{row.interval[0]:+.3f}, {row.interval[1]:+.3f}]" in original
    assert f"{row.p_value:.3g}" in original and "5/45" in original and "non-inferiority: FAIL" in original
    production = next(line for line in text.splitlines() if line.strip().startswith("production"))
    assert "improvement (one-sided p 0.00171): pass" in production


def test_compare_pairs_the_predictions_image_by_image():
    files = [Path(f"img{i}") for i in range(10)]
    truth = [i % 2 for i in range(10)]
    production = [t if i < 8 else 1 - t for i, t in enumerate(truth)]  # wrong on 8, 9
    candidate = [t if i not in (0, 1, 2) else 1 - t for i, t in enumerate(truth)]  # wrong on 0, 1, 2
    c = D.compare({D.ORIGINAL: (files, truth)}, lambda f: candidate, lambda f: production, "3", CFG)
    row = c.sets[0]
    assert (row.gains, row.losses, row.n_images) == (2, 3, 10)
    assert row.candidate == pytest.approx(0.7) and row.production == pytest.approx(0.8)


def test_the_production_set_size_comes_from_the_power_argument():
    """30 images: the improvement test finds a retrain that fixes 35% of the production set and
    breaks 5% with 80% power at 5% (configs/demo.yaml). The run configs ask for it and the loop
    export reserves it: one number in three files, kept equal here."""
    from gourmetgram.evaluation.paired import images_for_power
    from gourmetgram.loop.settings import load_loop_settings

    needed = images_for_power(0.35, 0.05, 0.05, 0.8)
    assert needed == load_config("demo").evaluation.differential.improvement_min_images
    assert needed == load_config("food11").evaluation.differential.improvement_min_images
    assert needed == load_loop_settings().export.min_evaluation_images


def test_no_production_model_skips_the_gate(tmp_path, monkeypatch, capsys):
    """A real, empty registry (its own MLflow store): the first model has nothing to compare with."""
    from components import steps

    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = EvaluationResult(passed=True, reasons=[], checks=[], metrics={}, per_class_accuracy={},
                              confusion_matrix=[], class_names=CLASSES, n_images=0)
    steps.differential_gate(result, None, tmp_path, EvaluationConfig(), "m", "food11")
    assert result.passed and result.comparison is None and "first model" in capsys.readouterr().out


def test_differential_config_is_validated(tmp_path):
    from gourmetgram.errors import ConfigError

    d = load_config("demo").evaluation.differential
    assert (d.margin, d.confidence, d.require_improvement) == (0.02, 0.95, True)
    bad = tmp_path / "bad.yaml"
    base = (Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text()
    assert "    margin: 0.02\n" in base
    bad.write_text(base.replace("    margin: 0.02\n", "    margin: 2\n", 1))
    with pytest.raises(ConfigError, match=r"evaluation\.differential\.margin"):
        load_config(bad)
    bad.write_text(base.replace("    confidence: 0.95\n", "    confidence: 1.0\n", 1))
    with pytest.raises(ConfigError, match=r"evaluation\.differential\.confidence must be in \[0.5, 1\)"):
        load_config(bad)
    bad.write_text(base.replace("    margin: 0.02\n", "    tolerance: 0.02\n", 1))  # the old key: refused
    with pytest.raises(ConfigError, match=r"unknown key 'evaluation\.differential\.tolerance'"):
        load_config(bad)
    bad.write_text(base.replace("gated_sets: [original, production]", "gated_sets: [prod]", 1))
    with pytest.raises(ConfigError, match=r"evaluation\.differential\.gated_sets"):
        load_config(bad)


def test_ingest_merges_the_production_export_and_training_logs_its_provenance(tmp_path, monkeypatch):
    from components import steps
    from gourmetgram.tracking import configure_mlflow

    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = _dataset(tmp_path / "base")
    export = _export(tmp_path / "export")
    info = steps.ingest_step(str(base), tmp_path / "artifact", production_dataset_uri=str(export))
    assert info.images == {"training": 6, "validation": 6, "evaluation": 6}
    assert info.production is not None
    assert info.production["images"] == 6 and "sample_ids" not in info.production
    assert not (base / PROVENANCE_FILE).exists()  # the base dataset itself is untouched
    mlflow = configure_mlflow()
    with mlflow.start_run() as run:
        pass
    steps.training._log_provenance(run.info.run_id, tmp_path / "artifact")
    got = mlflow.MlflowClient().get_run(run.info.run_id)
    tags = got.data.tags
    assert tags["data.production.images"] == "6" and tags["data.production.source"] == str(export)
    assert json.loads(tags["data.production.label_sources"]) == {"annotator": 3, "user": 3}
    assert len(tags["data.base.fingerprint"]) == 64 and tags["data.production.fingerprint"] == info.production["fingerprint"]
    names = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "data")]
    assert names == ["data/provenance.json"]


# -- the real thing: trained models, a real registry, real bundles (slow) -------------------------

REAL_NAME = "differential-real"  # its own registered model in its own MLflow store


TWO_CLASSES = ("class_00", "class_01")  # a two-class cut of the demo data: learnt in a few epochs


@pytest.fixture(scope="module")
def real(demo_dataset, tmp_path_factory):
    """A private GOURMETGRAM_HOME; two classes of the demo dataset with 36 labelled production
    images merged in (re-encoded evaluation photos, through a `loop export`-shaped folder); the
    demo model trained for a few epochs and the untrained network, each trained, exported and
    registered by the pipeline's own steps. On two classes the trained model is right on nearly
    every image and the untrained one answers one class or so (about half right): "better" and
    "worse" hold on any CPU, no accuracy threshold involved."""
    import shutil

    import yaml

    from components.steps import export_step, register_step, train_step
    from gourmetgram.constants import REPO_ROOT, STAGING
    from gourmetgram_app.local.simulate import reencode

    root = tmp_path_factory.mktemp("differential-real")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOURMETGRAM_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        config = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
        # batch 8: more steps per epoch on the small two-class set (from scratch it takes off after ~60)
        config["train"].update(epochs=6, patience=6, batch_size=8, fine_tune={"epochs": 0, "lr": 0.0002})
        config["evaluation"] = {"batch_size": 64, "differential": {
            "margin": 0.02, "confidence": 0.95, "min_images": 5, "improvement_min_images": 30}}
        (root / "tiny.yaml").write_text(yaml.safe_dump(config))
        dataset = root / "dataset"
        for split in ("training", "validation", "evaluation"):
            for name in TWO_CLASSES:
                shutil.copytree(demo_dataset / split / name, dataset / split / name, copy_function=os.link)
        names = (demo_dataset / "classes.txt").read_text().split()[:2]
        (dataset / "classes.txt").write_text("\n".join(names) + "\n")
        export = root / "export"
        samples = []
        for k, path in enumerate(sorted((dataset / "evaluation").rglob("*.jpg"))[::2][:36]):
            rel = Path("evaluation") / path.parent.name / f"prod_{k:04d}.jpg"
            (export / rel).parent.mkdir(parents=True, exist_ok=True)
            (export / rel).write_bytes(reencode(path.read_bytes()))
            samples.append({"file": str(rel), "split": "evaluation", "label": names[TWO_CLASSES.index(path.parent.name)],
                            "label_source": "user", "sample_id": f"s{k}", "model_version": "1"})
        shutil.copy2(dataset / "classes.txt", export / "classes.txt")
        (export / "lineage.json").write_text(json.dumps({"samples": samples}))
        merge_production(dataset, export)
        versions = {}
        for name, epochs in (("trained", -1), ("untrained", 0)):
            trained = train_step(dataset, str(root / "tiny.yaml"), epochs, root / f"{name}.pt")
            bundle = root / f"{name}-bundle"
            export_step(trained.checkpoint, dataset, str(root / "tiny.yaml"), bundle, "food11")
            outcome = register_step(trained.mlflow_run_id or "", str(bundle), bundle, {}, STAGING, REAL_NAME,
                                    "food11", trained.best_val_accuracy, "fp")
            versions[name] = outcome.version
        yield {"root": root, "dataset": dataset, "config": str(root / "tiny.yaml"), "versions": versions}


def _gate(real, candidate: str, capsys) -> tuple[EvaluationResult, str]:
    from components.steps import differential_gate, resolve_config
    from gourmetgram.model import load_checkpoint

    result = EvaluationResult(passed=True, reasons=[], checks=[], metrics={}, per_class_accuracy={},
                              confusion_matrix=[], class_names=[], n_images=0)
    capsys.readouterr()
    differential_gate(result, load_checkpoint(real["root"] / f"{candidate}.pt"), real["dataset"],
                      resolve_config(real["config"]).evaluation, REAL_NAME, "food11")
    return result, capsys.readouterr().out


@pytest.mark.slow
def test_a_real_worse_candidate_is_rejected_and_a_better_one_accepted(real, capsys):
    """Nothing patched: the registry's production alias, the registered bundle's ONNX graph in
    ONNX Runtime, the candidate's checkpoint in PyTorch."""
    from gourmetgram import registry
    from gourmetgram.constants import PRODUCTION

    registry.set_stage(PRODUCTION, real["versions"]["trained"], REAL_NAME)
    worse, out = _gate(real, "untrained", capsys)
    assert not worse.passed
    sets = {s["name"]: s for s in worse.comparison["sets"]}
    assert sets["original"]["test"] == "non-inferiority" and not sets["original"]["passed"]
    assert sets["production"]["n_images"] == 36 and sets["production"]["test"] == "improvement"
    assert any("original evaluation set" in r and "worse by more than the margin" in r
               for r in worse.reasons)
    assert worse.comparison["production_version"] == str(real["versions"]["trained"])
    assert "Differential gate: candidate vs production" in out and "FAILED" in out

    registry.set_stage(PRODUCTION, real["versions"]["untrained"], REAL_NAME)
    better, out = _gate(real, "trained", capsys)
    assert better.passed, better.reasons
    sets = {s["name"]: s for s in better.comparison["sets"]}
    assert sets["production"]["test"] == "improvement" and sets["production"]["p_better"] < 0.05
    assert sets["original"]["interval"][0] > 0  # confidently better on the original set too
    assert {c.name for c in better.checks} == {
        "differential original vs production (upper bound of the difference)",
        "differential production better than production (1 - one-sided p)"}


@pytest.mark.slow
def test_the_gate_fetches_a_production_bundle_from_s3(real, capsys, tmp_path):
    """Registered the cluster's way (the register step copies the bundle to the models bucket of
    moto's S3 server): the gate downloads it and compares, instead of skipping."""
    from helpers import S3_CREDENTIALS, moto_s3

    from components.steps import register_step
    from gourmetgram import objectstore, registry
    from gourmetgram.constants import PRODUCTION

    with moto_s3(tmp_path / "moto.log") as url, pytest.MonkeyPatch.context() as mp:
        for key, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": url}.items():
            mp.setenv(key, value)
        for key in (objectstore.ENV_S3_ENDPOINT, "MLFLOW_S3_ENDPOINT_URL", objectstore.MODELS_BUCKET_ENV):
            mp.delenv(key, raising=False)
        run_id = registry.get_version(real["versions"]["trained"], REAL_NAME).run_id
        artifact = "minio://mlpipeline/v2/artifacts/gourmetgram-training/run-1/served_bundle"
        outcome = register_step(run_id or "", artifact, real["root"] / "trained-bundle", {}, PRODUCTION,
                                REAL_NAME, "food11", 0.9, "fp")
        assert outcome.bundle_uri.startswith("s3://")
        assert registry.bundle_for(PRODUCTION, REAL_NAME) == outcome.bundle_uri
        result, out = _gate(real, "untrained", capsys)
    assert f"fetching the production bundle {outcome.bundle_uri}" in out
    assert not result.passed and result.comparison["production_version"] == str(outcome.version)
    # the same figures as against the same model's local bundle: it really was compared
    registry.set_stage(PRODUCTION, real["versions"]["trained"], REAL_NAME)
    local, _ = _gate(real, "untrained", capsys)
    assert result.comparison["sets"] == local.comparison["sets"]


@pytest.mark.slow
def test_a_retrain_fine_tunes_the_production_model_and_records_its_parent(real, capsys):
    """Continual training through the pipeline's steps: the parent step names the version the
    production alias points at; the train step loads its logged PyTorch model from the registry
    (with 0 fine-tune epochs the result IS the parent, class head included) and tags the run with
    the lineage, which registration copies onto the new version."""
    import torch

    from components.steps import parent_step, register_step, train_step
    from gourmetgram import continual, registry
    from gourmetgram.constants import PRODUCTION, STAGING
    from gourmetgram.tracking import configure_mlflow

    parent = real["versions"]["trained"]
    registry.set_stage(PRODUCTION, parent, REAL_NAME)
    assert parent_step(real["config"], "", REAL_NAME) == str(parent)
    assert parent_step(real["config"], "scratch", REAL_NAME) == ""
    assert parent_step(real["config"], "production", "nothing-registered") == ""
    assert "no version of nothing-registered has the production alias yet (a first model)" in capsys.readouterr().out
    child = train_step(real["dataset"], real["config"], -1, real["root"] / "child.pt",
                       parent_version=str(parent), registered_model_name=REAL_NAME)
    mine = torch.load(child.checkpoint, weights_only=True)["state_dict"]
    theirs = torch.load(real["root"] / "trained.pt", weights_only=True)["state_dict"]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    tags = configure_mlflow().get_run(child.mlflow_run_id).data.tags
    info = registry.get_version(parent, REAL_NAME)
    assert tags[continual.TAG_INIT_FROM] == "production" and tags[continual.TAG_PARENT_VERSION] == str(parent)
    assert tags[continual.TAG_PARENT_RUN] == info.run_id
    assert tags[continual.TAG_PARENT_BUNDLE] == info.tags[registry.TAG_BUNDLE]
    outcome = register_step(child.mlflow_run_id or "", str(real["root"] / "trained-bundle"),
                            real["root"] / "trained-bundle", {}, STAGING, REAL_NAME, "food11", 0.9, "fp")
    assert registry.get_version(outcome.version, REAL_NAME).tags[continual.TAG_PARENT_VERSION] == str(parent)
    # the pipeline's epochs=0 keeps its meaning: the untrained network, not the parent
    untrained = train_step(real["dataset"], real["config"], 0, real["root"] / "zero.pt",
                           parent_version=str(parent), registered_model_name=REAL_NAME)
    zero = torch.load(untrained.checkpoint, weights_only=True)["state_dict"]
    assert not torch.equal(zero["classifier.1.weight"], theirs["classifier.1.weight"])
    assert configure_mlflow().get_run(untrained.mlflow_run_id).data.tags[continual.TAG_INIT_FROM] == "scratch"
