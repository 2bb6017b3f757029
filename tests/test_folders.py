import os

import numpy as np
import pytest
from PIL import Image

from deepclust.data import find_images, load_image
from deepclust.errors import DeepclustError


def _png(path, color=(10, 20, 30), size=(4, 3)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_find_images_searches_recursively_in_sorted_order_with_any_case_extension(tmp_path):
    _png(tmp_path / "b" / "two.PNG")
    _png(tmp_path / "a" / "deep" / "one.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "three.JpEg", format="JPEG")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "four.tif", format="TIFF")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "five.webp", format="WEBP")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "six.BMP", format="BMP")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    records = find_images(tmp_path)
    assert [r.relpath for r in records] == [
        "a/deep/one.jpg", "a/five.webp", "a/four.tif", "a/six.BMP", "a/three.JpEg", "b/two.PNG",
    ]
    assert [r.folder for r in records] == ["deep", "a", "a", "a", "a", "b"]
    assert all(os.path.isfile(r.path) and r.size > 0 for r in records)


def test_find_images_handles_non_ascii_names_and_skips_hidden_entries(tmp_path):
    _png(tmp_path / "Noctua_pronuba_ä" / "Élan vital – 蛾.png")
    _png(tmp_path / ".thumbnails" / "x.png")
    _png(tmp_path / "ok" / ".hidden.png")
    records = find_images(tmp_path)
    assert [r.relpath for r in records] == ["Noctua_pronuba_ä/Élan vital – 蛾.png"]
    assert np.asarray(load_image(records[0].path)).shape == (3, 4, 3)


def test_find_images_follows_folder_links_detects_loops_and_keeps_each_file_once(tmp_path):
    data = tmp_path / "data"
    _png(data / "cats" / "c1.png")
    _png(data / "dogs" / "d1.png")
    os.symlink(data / "cats", data / "also_cats", target_is_directory=True)  # same folder twice
    os.symlink(data, data / "dogs" / "loop", target_is_directory=True)  # a loop to an ancestor
    os.link(data / "dogs" / "d1.png", data / "dogs" / "d1_hardlink.png")  # same file twice
    outside = tmp_path / "outside"
    _png(outside / "birds" / "b1.png")
    os.symlink(outside / "birds", data / "birds", target_is_directory=True)
    with pytest.warns(UserWarning, match="reached twice"):
        records = find_images(data)
    assert [r.relpath for r in records] == ["also_cats/c1.png", "birds/b1.png", "dogs/d1.png"]


def test_find_images_excludes_a_run_folder_inside_the_image_folder(tmp_path):
    _png(tmp_path / "a" / "x.png")
    _png(tmp_path / "run" / "cluster_0" / "x.png")
    assert [r.relpath for r in find_images(tmp_path, exclude=[tmp_path / "run"])] == ["a/x.png"]


def test_find_images_keeps_only_the_classes_asked_for_and_names_missing_ones(tmp_path):
    _png(tmp_path / "a" / "1.png")
    _png(tmp_path / "b" / "2.png")
    assert [r.folder for r in find_images(tmp_path, classes=["b"])] == ["b"]
    with pytest.raises(DeepclustError, match="1 of 2 classes have no images.*: zzz"):
        find_images(tmp_path, classes=["b", "zzz"])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nope", "does not exist"),
        (lambda p: _png(p / "single.png"), "is a file, not a folder"),
        (lambda p: p, "has no images"),
    ],
)
def test_find_images_explains_a_bad_folder(tmp_path, make, message):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DeepclustError, match=message):
        find_images(make(tmp_path))


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_load_image_converts_every_mode_to_8bit_rgb(tmp_path):
    gray = _save(Image.new("L", (2, 2), 77), tmp_path / "gray.png")
    bits = _save(Image.new("1", (2, 2), 1), tmp_path / "bits.png")
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette = _save(palette, tmp_path / "palette.png")
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent: composited on white
    rgba = _save(rgba, tmp_path / "rgba.png")
    cmyk = _save(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100)
    deep = Image.fromarray(np.array([[0, 65535], [32896, 257]], dtype=np.uint16))
    deep = _save(deep, tmp_path / "deep16.png")
    expected = {
        gray: (77, 77, 77),
        bits: (255, 255, 255),
        palette: (200, 100, 50),
        rgba: (255, 0, 0),
        cmyk: (255, 0, 0),
        deep: (0, 0, 0),
    }
    for path, first_pixel in expected.items():
        img = load_image(path)
        assert img.mode == "RGB", path.name
        assert np.allclose(np.asarray(img)[0, 0], first_pixel, atol=3), (path.name, np.asarray(img)[0, 0])
    assert tuple(np.asarray(load_image(rgba))[0, 1]) == (255, 255, 255)
    assert np.asarray(load_image(deep))[:, :, 0].tolist() == [[0, 255], [128, 1]]


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (2, 4)


def test_load_image_raises_on_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    assert load_image(good).size == (64, 64)
    for bad in (truncated, garbage):
        with pytest.raises(OSError):
            load_image(bad)
