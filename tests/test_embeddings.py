import os

import numpy as np
import pytest
import torch
from PIL import Image

from deepclust.data import find_images
from deepclust.features.extract import EmbeddingStore, extract_embeddings


def _image_folder(root, n=10):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return root


class _Interrupting(torch.nn.Module):
    """Wraps a backbone and raises KeyboardInterrupt on the given forward call."""

    def __init__(self, backbone, fail_on_call):
        super().__init__()
        self.inner = backbone
        self.num_features = backbone.num_features
        self.calls = 0
        self.fail_on_call = fail_on_call

    def transform(self):
        return self.inner.transform()

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        return self.inner(x)


def test_embeddings_match_a_direct_forward_pass(tmp_path, tiny_backbone):
    records = find_images(_image_folder(tmp_path / "img", 6))
    result = extract_embeddings(records, tiny_backbone, batch_size=4, progress=False)
    assert result.vectors.shape == (6, tiny_backbone.num_features) and result.vectors.dtype == np.float32
    assert result.indices.tolist() == list(range(6)) and result.skipped == []
    x = torch.stack([tiny_backbone.transform()(Image.open(r.path).convert("RGB")) for r in records])
    with torch.no_grad():
        direct = tiny_backbone(x).numpy()
    np.testing.assert_allclose(result.vectors, direct, rtol=1e-4, atol=1e-5)


def test_a_second_extraction_reuses_the_cache_and_recomputes_only_changed_files(tmp_path, tiny_backbone):
    records = find_images(_image_folder(tmp_path / "img"))
    store = EmbeddingStore(tmp_path / "cache", tiny_backbone.signature())
    first = extract_embeddings(records, tiny_backbone, batch_size=4, store=store, progress=False)
    assert (first.n_reused, first.n_computed) == (0, 10)

    store = EmbeddingStore(tmp_path / "cache", tiny_backbone.signature())
    again = extract_embeddings(records, tiny_backbone, batch_size=4, store=store, progress=False)
    assert (again.n_reused, again.n_computed) == (10, 0)
    np.testing.assert_array_equal(first.vectors, again.vectors)

    changed = records[3].path
    Image.new("RGB", (20, 24), (255, 255, 255)).save(changed)
    os.utime(changed, ns=(records[3].mtime_ns + 10**9, records[3].mtime_ns + 10**9))
    records = find_images(tmp_path / "img")
    third = extract_embeddings(records, tiny_backbone, store=EmbeddingStore(tmp_path / "cache", tiny_backbone.signature()), progress=False)
    assert (third.n_reused, third.n_computed) == (9, 1)
    assert not np.allclose(third.vectors[3], first.vectors[3])


def test_another_backbone_signature_does_not_reuse_vectors(tmp_path, tiny_backbone):
    from deepclust.features.backbones import create_backbone

    records = find_images(_image_folder(tmp_path / "img", 4))
    extract_embeddings(records, tiny_backbone, store=EmbeddingStore(tmp_path / "c", tiny_backbone.signature()), progress=False)
    other = create_backbone("test_efficientnet", weights="random", image_size=40)
    result = extract_embeddings(records, other, store=EmbeddingStore(tmp_path / "c", other.signature()), progress=False)
    assert (result.n_reused, result.n_computed) == (0, 4)


def test_an_interrupted_extraction_resumes_where_it_stopped(tmp_path, tiny_backbone):
    records = find_images(_image_folder(tmp_path / "img", 12))
    reference = extract_embeddings(records, tiny_backbone, batch_size=3, progress=False)
    store = EmbeddingStore(tmp_path / "cache", tiny_backbone.signature())
    failing = _Interrupting(tiny_backbone, fail_on_call=3)  # two batches of 3 done, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(records, failing, batch_size=3, store=store, flush_every=100, progress=False)
    resumed = extract_embeddings(
        records, tiny_backbone, batch_size=3, store=EmbeddingStore(tmp_path / "cache", tiny_backbone.signature()), progress=False
    )
    assert (resumed.n_reused, resumed.n_computed) == (6, 6)
    np.testing.assert_allclose(resumed.vectors, reference.vectors, rtol=1e-5, atol=1e-6)


def test_unreadable_files_are_skipped_with_a_reason_and_remembered(tmp_path, tiny_backbone):
    root = _image_folder(tmp_path / "img", 4)
    (root / "class0" / "broken.jpg").write_bytes(b"a text file renamed to .jpg")
    good = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    good.save(root / "class1" / "whole.jpg")
    data = (root / "class1" / "whole.jpg").read_bytes()
    (root / "class1" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    records = find_images(root)
    store = EmbeddingStore(tmp_path / "cache", tiny_backbone.signature())
    result = extract_embeddings(records, tiny_backbone, batch_size=2, store=store, progress=False)
    skipped = {records[i].relpath: reason for i, reason in result.skipped}
    assert set(skipped) == {"class0/broken.jpg", "class1/truncated.jpg"}
    assert "UnidentifiedImageError" in skipped["class0/broken.jpg"]
    assert "truncated" in skipped["class1/truncated.jpg"].lower()
    assert len(result.vectors) == 5 and set(result.indices.tolist()).isdisjoint(i for i, _ in result.skipped)
    again = extract_embeddings(records, tiny_backbone, store=EmbeddingStore(tmp_path / "cache", tiny_backbone.signature()), progress=False)
    assert again.n_computed == 0 and {records[i].relpath for i, _ in again.skipped} == set(skipped)


def test_decoding_in_worker_processes_gives_the_same_vectors(tmp_path, tiny_backbone):
    records = find_images(_image_folder(tmp_path / "img", 8))
    inline = extract_embeddings(records, tiny_backbone, batch_size=3, num_workers=0, progress=False)
    workers = extract_embeddings(records, tiny_backbone, batch_size=3, num_workers=2, progress=False)
    np.testing.assert_allclose(inline.vectors, workers.vectors, rtol=1e-5, atol=1e-6)


def test_a_cache_folder_whose_name_is_a_glob_pattern_is_still_read(tmp_path):
    store = EmbeddingStore(tmp_path / "runs[2]" / "cache", "sig")
    store.add(["a", "b"], np.eye(2, dtype=np.float32), {"c": "broken"})
    vectors, failures = EmbeddingStore(tmp_path / "runs[2]" / "cache", "sig").load()
    assert sorted(vectors) == ["a", "b"] and failures == {"c": "broken"}


def test_fast_decode_reads_camera_sized_jpegs_smaller_with_nearly_the_same_features(tmp_path, lite0_small):
    from conftest import MOTHS

    from deepclust.data import load_image
    from deepclust.features.extract import decode_size, embedding_signature

    if not (MOTHS / "images").is_dir():
        pytest.skip("EU moths not found")
    moth = find_images(MOTHS / "images")[0]
    (tmp_path / "a").mkdir()
    load_image(moth.path).resize((1600, 1200)).save(tmp_path / "a" / "photo.jpg", quality=90)
    os.symlink(moth.path, tmp_path / "a" / "small.jpg")  # 256 px: no smaller decode keeps 2x the input size
    size = decode_size(lite0_small)
    assert size == 2 * round(128 / lite0_small.data_config["crop_pct"])
    drafted = load_image(tmp_path / "a" / "photo.jpg", draft_size=size)
    assert min(drafted.size) >= size and drafted.size[0] < 1600  # decoded at 1/2 or 1/4
    records = find_images(tmp_path)
    full = extract_embeddings(records, lite0_small, progress=False)
    fast = extract_embeddings(records, lite0_small, progress=False, fast_decode=True)
    photo, small = [r.relpath for r in records].index("a/photo.jpg"), [r.relpath for r in records].index("a/small.jpg")
    assert np.array_equal(full.vectors[small], fast.vectors[small])
    assert not np.array_equal(full.vectors[photo], fast.vectors[photo])
    cosine = float(full.vectors[photo] @ fast.vectors[photo]
                   / np.linalg.norm(full.vectors[photo]) / np.linalg.norm(fast.vectors[photo]))
    assert cosine > 0.99
    assert embedding_signature(lite0_small, True) != embedding_signature(lite0_small) == lite0_small.signature()


def test_one_shared_cache_serves_every_run_and_deepclust_cache_lists_and_clears_it(tmp_path, monkeypatch, capsys):
    """Two runs of one folder into two run folders: the second embeds nothing. A run made
    before the cache was shared (its own cache/) is read too."""
    import json
    import shutil

    from deepclust.cli import main

    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path / "user"))
    images = _image_folder(tmp_path / "img", 10)
    tiny = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32", "--no-progress",
            "--n-clusters", "2", "--runtime", "torch"]

    def counts(run):
        return json.loads((tmp_path / run / "summary.json").read_text())["counts"]

    assert main(["-q", "cluster", str(images), "--out", str(tmp_path / "a"), *tiny]) == 0
    assert main(["-q", "cluster", str(images), "--out", str(tmp_path / "b"), "--algorithm", "agglomerative", *tiny]) == 0
    assert counts("a")["embeddings_computed"] == 10 and counts("b")["embeddings_reused"] == 10
    assert counts("b")["embeddings_computed"] == 0
    assert not (tmp_path / "a" / "cache").exists()  # nothing cached inside the run folders

    capsys.readouterr()
    assert main(["cache"]) == 0
    listing = capsys.readouterr().out
    assert str(tmp_path / "user" / "embeddings") in listing and "1 backbone signature(s), 10 vectors" in listing
    assert "test_efficientnet" in listing
    assert main(["cache", "--clear-older-than", "1"]) == 0 and "removed 0 backbone" in capsys.readouterr().out
    # an older run's own cache/ is read when the shared one has nothing
    user = tmp_path / "user" / "embeddings"
    shutil.move(str(user), str(tmp_path / "a" / "cache"))
    assert main(["-q", "cluster", str(images), "--out", str(tmp_path / "a"), *tiny]) == 0
    assert counts("a")["embeddings_reused"] == 10
    assert main(["cache", "--clear"]) == 0 and "removed 1 backbone folder(s), 10 vectors" in capsys.readouterr().out
    assert main(["cache"]) == 0 and "0 backbone signature(s)" in capsys.readouterr().out


def test_the_size_limit_removes_the_least_recently_used_backbone_and_writers_never_collide(tmp_path):
    from deepclust.features.cache import cache_entries, parse_size, prune_cache

    vectors = np.ones((50, 64), np.float32)
    old, new = EmbeddingStore(tmp_path, "old backbone"), EmbeddingStore(tmp_path, "new backbone")
    old.add([f"o{i}" for i in range(50)], vectors, {})
    new.add([f"n{i}" for i in range(50)], vectors, {})
    twin = EmbeddingStore(tmp_path, "new backbone")  # a second job writing the same signature at once
    twin.add([f"t{i}" for i in range(50)], vectors, {})
    assert len(list((tmp_path / os.path.basename(new.folder)).glob("shard-000000-*.npz"))) == 2  # side by side
    assert len(EmbeddingStore(tmp_path, "new backbone").load()[0]) == 100
    past = 1_000_000_000
    for f in os.listdir(old.folder):
        os.utime(os.path.join(old.folder, f), (past, past))
    rows = cache_entries(tmp_path)
    assert [r["signature"] for r in rows] == ["new backbone", "old backbone"] and rows[0]["vectors"] == 100
    size = {r["signature"]: r["bytes"] for r in rows}
    assert prune_cache(tmp_path, sum(size.values())) == []  # within the limit: nothing goes
    removed = prune_cache(tmp_path, size["new backbone"] + 1)
    assert [r["signature"] for r in removed] == ["old backbone"] and not os.path.exists(old.folder)
    assert prune_cache(tmp_path, 0, keep=[new.folder]) == [] and os.path.exists(new.folder)
    assert parse_size("20G") == 20 * 2**30 and parse_size("1.5M") == int(1.5 * 2**20) and parse_size("123") == 123
    with pytest.raises(Exception, match="20G"):
        parse_size("lots")


def test_decode_workers_by_default_none_on_small_cpus_and_more_on_large_ones():
    from deepclust.features.extract import default_workers

    cpu = torch.device("cpu")
    assert [default_workers(cpu, n) for n in (1, 2, 4, 8, 16, 64)] == [0, 0, 0, 2, 4, 8]
    assert default_workers(torch.device("cuda"), 2) == 2 and default_workers(torch.device("cuda"), 32) == 4


def test_jpegs_are_draft_decoded_by_default_and_a_full_decode_is_keyed_apart(tmp_path, monkeypatch):
    import json

    from deepclust.cli import main

    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path / "user"))
    rng = np.random.default_rng(0)
    for i in range(6):  # camera-sized JPEGs: the draft decode reads them at 1/8
        (tmp_path / "img" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(tmp_path / "img" / f"c{i % 2}" / f"{i}.jpg")
    tiny = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32", "--no-progress",
            "--n-clusters", "2", "--runtime", "torch"]
    assert main(["-q", "cluster", str(tmp_path / "img"), "--out", str(tmp_path / "a"), *tiny]) == 0
    assert main(["-q", "cluster", str(tmp_path / "img"), "--out", str(tmp_path / "b"), "--no-fast-decode", *tiny]) == 0
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert a["config"]["fast_decode"] is True and b["config"]["fast_decode"] is False
    assert b["counts"]["embeddings_computed"] == 6  # the full decode's vectors are not the draft's
    va, vb = np.load(tmp_path / "a" / "embeddings.npy"), np.load(tmp_path / "b" / "embeddings.npy")
    assert not np.array_equal(va, vb)


def test_prefetched_batches_keep_their_order_raise_the_readers_error_and_stop_early():
    from deepclust.features.extract import prefetched

    assert list(prefetched(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(broken()):
            got.append(item)
    assert got == [1]
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    for item in prefetched(counting(), depth=2):
        if item == 3:
            break  # the consumer stops (Ctrl-C, an error): the reader stops soon after
    import time

    time.sleep(0.5)
    assert len(produced) < 10
