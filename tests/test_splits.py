import json

import pytest

from conftest import MOTHS, needs_moths
from deepclust.data import find_images, list_splits, load_split
from deepclust.errors import DeepclustError


def _lines(path):
    return [line.strip() for line in open(path, encoding="utf-8") if line.strip()]


def test_eu_moths_split_ships_with_the_package():
    assert "eu-moths" in list_splits()
    split = load_split("eu-moths")
    sizes = {name: len(classes) for name, classes in split.subsets.items()}
    assert sizes == {"train": 100, "val": 50, "test": 50}
    assert len(set().union(*map(set, split.subsets.values()))) == 200


@needs_moths
def test_eu_moths_split_follows_the_rule_of_the_issue():
    split = load_split("eu-moths")
    assert set(split.classes("train")) == set(_lines(MOTHS / "subset1_class_names.txt"))
    rest = sorted(set(_lines(MOTHS / "class_names.txt")) - set(_lines(MOTHS / "subset1_class_names.txt")))
    assert list(split.classes("val")) == rest[:50]
    assert list(split.classes("test")) == rest[50:]
    records = find_images(MOTHS / "images", classes=split.classes("test"))
    assert len({r.folder for r in records}) == 50 and len(records) == 555


def test_load_split_reads_a_split_file_by_path(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "subsets": {"train": ["a", "b"], "test": ["c"]}}))
    split = load_split(path)
    assert split.name == "mine" and split.classes("test") == ("c",)
    with pytest.raises(DeepclustError, match="no subset 'val'; choose one of: train, test"):
        split.classes("val")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"subsets": {"train": ["a"], "test": ["a"]}}', "share 1 classes"),
        ('{"classes": []}', "is not valid"),
        ("not json", "is not valid"),
    ],
)
def test_load_split_rejects_bad_split_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DeepclustError, match=message):
        load_split(path)


def test_load_split_lists_shipped_splits_for_an_unknown_name():
    with pytest.raises(DeepclustError, match="shipped splits: eu-moths"):
        load_split("eu-mothz")
