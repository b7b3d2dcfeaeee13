"""Re-training on production data: the merge of a `loop export` into the base dataset (with
provenance), the evaluation sets it yields (original / production), and the differential gate
(a candidate worse than production on a gated set is rejected; the comparison is in the report)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from gourmetgram.config import DifferentialConfig, EvaluationConfig, load_config
from gourmetgram.data.merge import MERGED_LINEAGE, PROVENANCE_FILE, merge_production
from gourmetgram.errors import DatasetError
from gourmetgram.evaluation import differential as D
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


def _sets(n_orig=10, n_prod=10):
    return {D.ORIGINAL: ([Path(f"o{i}") for i in range(n_orig)], [i % 2 for i in range(n_orig)]),
            D.PRODUCTION_SET: ([Path(f"p{i}") for i in range(n_prod)], [i % 2 for i in range(n_prod)])}


def _predictor(wrong: set[str]):
    """Right on every file except those named in ``wrong``."""
    def predict(files):
        return [(int(f.name[1:]) % 2) ^ (f.name in wrong) for f in files]
    return predict


def test_a_candidate_worse_than_production_is_rejected():
    production = _predictor(set())
    candidate = _predictor({"p0", "p1", "p2"})  # 0.7 on the production set vs 1.0
    c = D.compare(_sets(), candidate, production, "3", tolerance=0.02)
    assert not c.passed
    (reason,) = c.reasons
    assert "production evaluation set (10 images)" in reason and "0.700" in reason and "1.000" in reason
    row = {s.name: s for s in c.sets}[D.PRODUCTION_SET]
    assert row.delta == pytest.approx(-0.3) and not row.passed
    assert {s.name: s for s in c.sets}[D.ORIGINAL].passed
    text = D.format_comparison(c.to_dict())
    assert "FAILED" in text and "-0.300" in text and "version 3" in text


def test_the_gate_allows_the_tolerance_and_ungated_or_tiny_sets():
    production = _predictor({"o0"})  # 0.9 on original
    assert D.compare(_sets(), _predictor({"o0", "o1"}), production, "3", tolerance=0.1).passed  # 0.8 vs 0.9
    assert not D.compare(_sets(), _predictor({"o0", "o1"}), production, "3", tolerance=0.05).passed
    assert D.compare(_sets(), _predictor({"p0", "p1"}), _predictor(set()), "3", 0.02, gated=(D.ORIGINAL,)).passed
    assert D.compare(_sets(n_prod=3), _predictor({"p0"}), _predictor(set()), "3", 0.02, min_images=5).passed
    empty = D.compare(_sets(n_prod=0), production, production, "3", 0.02)
    assert empty.passed and {s.name: s for s in empty.sets}[D.PRODUCTION_SET].n_images == 0


def test_the_evaluate_step_fails_a_worse_candidate_and_reports_it(tmp_path, monkeypatch):
    """components.steps.differential_gate with the real candidate model (untrained) against a
    production model that is always right: rejected, with checks, reasons and the report section."""
    from components import steps
    from gourmetgram import registry
    from gourmetgram.model import ModelSpec, build_model

    base = _dataset(tmp_path / "base", n=3)
    merge_production(base, _export(tmp_path / "export"))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = ModelSpec(class_names=tuple(CLASSES), image_size=32, width_mult=0.35)
    (bundle / "model_spec.json").write_text(json.dumps(spec.to_dict()))
    monkeypatch.setattr(registry, "version_for", lambda stage, name: 7)
    monkeypatch.setattr(registry, "bundle_for", lambda version, name: str(bundle))

    def oracle(bundle_dir, model_name):
        def predict(files):
            return [int(Path(f).parent.name[-2:]) for f in files]
        return predict

    monkeypatch.setattr(D, "onnx_predictor", oracle)
    model = build_model(spec)
    model.eval()
    # the candidate: always "bread" -> half right on each set; production always right
    monkeypatch.setattr("gourmetgram.evaluation.suite.predict_files", lambda m, files, size, bs: [0] * len(files))
    result = EvaluationResult(passed=True, reasons=[], checks=[], metrics={}, per_class_accuracy={},
                              confusion_matrix=[], class_names=CLASSES, n_images=0)
    ecfg = EvaluationConfig(differential=DifferentialConfig(tolerance=0.02, min_images=2))
    steps.differential_gate(result, model, base, ecfg, "gourmetgram-food11", "food11")
    assert not result.passed and result.comparison["production_version"] == "7"
    assert any("differential gate: on the production evaluation set" in r for r in result.reasons)
    assert {c.name for c in result.checks} == {"differential original vs production",
                                               "differential production vs production"}
    report = EvaluationResult.from_dict(json.loads(result.to_json())).format_report()
    assert "Differential gate: candidate vs production (version 7)" in report and "FAIL" in report


def test_no_production_model_skips_the_gate(tmp_path, monkeypatch, capsys):
    from components import steps
    from gourmetgram import registry

    monkeypatch.setattr(registry, "version_for", lambda stage, name: None)
    result = EvaluationResult(passed=True, reasons=[], checks=[], metrics={}, per_class_accuracy={},
                              confusion_matrix=[], class_names=CLASSES, n_images=0)
    steps.differential_gate(result, None, tmp_path, EvaluationConfig(), "m", "food11")
    assert result.passed and result.comparison is None and "first model" in capsys.readouterr().out


def test_differential_config_is_validated(tmp_path):
    from gourmetgram.errors import ConfigError

    assert load_config("demo").evaluation.differential.tolerance == 0.02
    bad = tmp_path / "bad.yaml"
    base = (Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text()
    assert "    tolerance: 0.02\n" in base
    bad.write_text(base.replace("    tolerance: 0.02\n", "    tolerance: 2\n", 1))
    with pytest.raises(ConfigError, match=r"evaluation\.differential\.tolerance"):
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
