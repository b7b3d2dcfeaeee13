"""Dataset layout validation: each kind of bad dataset gets an error naming the problem."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from gourmetgram.data.demo import build_demo_dataset
from gourmetgram.data.ingest import ingest
from gourmetgram.data.layout import validate_dataset
from gourmetgram.errors import DatasetError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("pristine") / "ds", with_eval_sets=False)


@pytest.fixture()
def dataset(pristine, tmp_path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(pristine, copy)
    return copy


def test_demo_dataset_is_valid(pristine):
    report = validate_dataset(pristine, progress=False)
    assert report.num_classes == 10
    assert report.class_names[3] == "three"
    assert report.total("training") > report.total("evaluation") > 300
    assert all(n > 0 for counts in report.counts.values() for n in counts)


def test_fingerprint_changes_with_content(dataset, pristine):
    before = validate_dataset(pristine, progress=False).fingerprint
    img = next((dataset / "evaluation" / "class_00").iterdir())
    img.write_bytes((dataset / "evaluation" / "class_01").joinpath(
        next((dataset / "evaluation" / "class_01").iterdir()).name).read_bytes())
    assert validate_dataset(dataset, progress=False).fingerprint != before


def test_missing_split(dataset):
    shutil.rmtree(dataset / "validation")
    with pytest.raises(DatasetError, match="missing split folder.*validation"):
        validate_dataset(dataset, progress=False)


def test_empty_class(dataset):
    for p in (dataset / "training" / "class_04").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="class_04 is empty"):
        validate_dataset(dataset, progress=False)


def test_class_sets_differ(dataset):
    shutil.rmtree(dataset / "evaluation" / "class_09")
    with pytest.raises(DatasetError, match="differ between splits.*evaluation lacks.*class_09"):
        validate_dataset(dataset, progress=False)


def test_truncated_image(dataset):
    img = next((dataset / "validation" / "class_02").iterdir())
    img.write_bytes(img.read_bytes()[:300])
    with pytest.raises(DatasetError, match=f"(?s)unreadable.*{img.name}.*truncated"):
        validate_dataset(dataset, progress=False)


def test_non_image_file(dataset):
    (dataset / "training" / "class_01" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="non-image.*notes.txt"):
        validate_dataset(dataset, progress=False)


def test_image_that_is_not_an_image(dataset):
    (dataset / "training" / "class_01" / "fake.jpg").write_text("not a jpeg")
    with pytest.raises(DatasetError, match="fake.jpg.*not a JPEG or PNG"):
        validate_dataset(dataset, progress=False)


def test_class_names_must_match(dataset):
    (dataset / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match="names 2 classes but the dataset has 10"):
        validate_dataset(dataset, progress=False)


def test_ingest_flat_food11_archive(pristine, tmp_path):
    """The public Food-11 archive keeps `<split>/<class>_<n>.jpg` flat; ingest sorts it."""
    archive = tmp_path / "Food-11.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("training", "validation", "evaluation"):
            for cls in range(11):
                src = next((pristine / split / f"class_{cls % 10:02d}").iterdir())
                zf.write(src, f"Food-11/{split}/{cls}_{0}.jpg")
    root = ingest(str(archive), tmp_path / "work")
    report = validate_dataset(root, progress=False)
    assert report.num_classes == 11
    assert report.class_names[2] == "Dessert"  # Food-11's own names when no classes.txt


def test_ingest_rejects_unknown_scheme(tmp_path):
    with pytest.raises(DatasetError, match="unsupported dataset URI scheme 'ftp'"):
        ingest("ftp://example/x.zip", tmp_path)
