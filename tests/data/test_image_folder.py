"""Image-folder sources over directories and zips (tiny PIL fixtures) and the CIFAR-10 zip."""

import pickle
import zipfile

import numpy as np
import pytest
from data_helpers import (
    CIFAR10_ZIP,
    class_color,
    image_bytes,
    layout,
    needs_cifar10_zip,
    write_folder,
    write_zip,
)
from PIL import Image

from dkvb_jax.data import CIFAR10_CLASSES, ImageFolderSource


@pytest.mark.parametrize("split, per_class", [("train", 3), ("test", 2)])
def test_labels_follow_sorted_folders_and_files_are_read(make_root, split, per_class):
    src = ImageFolderSource(make_root(layout()), split)
    assert src.class_names == ("ant", "bird", "cat")
    assert len(src) == 3 * per_class
    batch = src.read(np.arange(len(src)))
    for img, label, i in zip(batch["image"], batch["label"], batch["id"], strict=True):
        k = int(i) % per_class  # Examples are ordered by (label, path).
        assert label == i // per_class
        assert img.shape == (5, 6, 3)  # PIL size (6, 5) is width 6, height 5.
        np.testing.assert_array_equal(img[0, 0], class_color(label, k))
    assert src.members[0] == f"{split}/ant/0000.png"


def test_explicit_class_names_fix_the_order(make_root):
    src = ImageFolderSource(make_root(layout()), "test", class_names=["cat", "dog", "ant", "bird"])
    assert src.num_classes == 4
    np.testing.assert_array_equal(src.labels, [0, 0, 2, 2, 3, 3])  # No 'dog' images: no label 1.
    with pytest.raises(ValueError, match=r"\['bird', 'cat'\].*not in class_names"):
        ImageFolderSource(make_root(layout()), "test", class_names=["ant"])


def test_no_split_level_and_a_wrapping_folder(tmp_path):
    flat = {rel.split("/", 1)[1]: b for rel, b in layout(("train",), per_class=(2,)).items()}
    for files in (flat, {f"faces/{k}": v for k, v in flat.items()}):
        path = write_zip(tmp_path / f"{len(files)}{id(files)}.zip", files)
        src = ImageFolderSource(path, split=None)
        assert src.class_names == ("ant", "bird", "cat") and len(src) == 6
    wrapped = write_zip(tmp_path / "w.zip", {f"cifar/{k}": v for k, v in layout().items()})
    assert len(ImageFolderSource(wrapped, "train")) == 9


def test_non_images_and_hidden_files_are_ignored(make_root):
    files = layout() | {
        "train/ant/notes.txt": b"x",
        "train/.DS_Store": b"x",
        "train/cat/.hidden.png": b"x",
        "train/README.md": b"x",
        "__MACOSX/train/ant/0000.png": b"x",
    }
    assert len(ImageFolderSource(make_root(files), "train")) == 9


@pytest.mark.parametrize(
    "files, split, error, match",
    [
        ({"train/readme.txt": b"x"}, "train", FileNotFoundError, "No split folder 'train'"),
        ({"train/0000.png": image_bytes((1, 2, 3))}, "train", ValueError, "No class folders"),
        (layout(), "valid", FileNotFoundError, r"No split folder 'valid'.*\['test', 'train'\]"),
    ],
)
def test_missing_split_or_classes(make_root, files, split, error, match):
    with pytest.raises(error, match=match):
        ImageFolderSource(make_root(files), split)


def test_missing_root_and_bad_zip(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope", "train")
    good = write_zip(tmp_path / "good.zip", layout()).read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a readable zip archive.*truncated"):
        ImageFolderSource(truncated, "train")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_undecodable_image_is_named(make_root, damage):
    jpeg = image_bytes((9, 9, 9), size=(16, 16), fmt="JPEG")
    bad = b"not an image" if damage == "garbage" else jpeg[: len(jpeg) // 2]
    src = ImageFolderSource(make_root(layout() | {"train/bird/0001.png": bad}), "train")
    src.read([0, 1, 2])  # Other images still read.
    with pytest.raises(ValueError, match=r"Cannot decode image 'train/bird/0001.png'"):
        src.read([4])


@pytest.mark.parametrize(
    "mode, color, rgb, fmt",
    [
        ("L", 77, (77, 77, 77), "PNG"),  # Grayscale: replicated.
        ("RGBA", (1, 2, 3, 0), (1, 2, 3), "PNG"),  # Alpha dropped, not composited.
        ("LA", (50, 128), (50, 50, 50), "PNG"),
        ("P", 0, (0, 0, 0), "PNG"),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255), "JPEG"),
    ],
)
def test_non_rgb_images_convert_or_error(make_root, mode, color, rgb, fmt):
    files = layout() | {"train/ant/0000.png": image_bytes(color, mode=mode, fmt=fmt)}
    src = ImageFolderSource(make_root(files), "train")
    img = src.read([0])["image"][0]
    np.testing.assert_allclose(img, np.broadcast_to(rgb, img.shape), atol=2)
    with pytest.raises(ValueError, match=f"mode '{mode}', not RGB"):
        ImageFolderSource(make_root(files), "train", non_rgb="error").read([0])


def test_inconsistent_sizes_error_or_resize(make_root):
    files = layout() | {"train/cat/0002.png": image_bytes((1, 1, 1), size=(9, 9))}
    src = ImageFolderSource(make_root(files), "train")
    with pytest.raises(ValueError, match=r"'train/cat/0002.png'.*image_size="):
        src.read(np.arange(9))
    resized = ImageFolderSource(make_root(files), "train", image_size=(4, 4))
    assert resized.read(np.arange(9))["image"].shape == (9, 4, 4, 3)


def test_pickles_without_the_open_zip(tmp_path):
    src = ImageFolderSource(write_zip(tmp_path / "d.zip", layout()), "train")
    first = src.read([3])
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.read([3])["image"], first["image"])


@needs_cifar10_zip
@pytest.mark.shared
@pytest.mark.parametrize("split, n", [("train", 50_000), ("test", 10_000)])
def test_reads_the_shared_cifar10_zip_in_canonical_label_order(split, n):
    src = ImageFolderSource(CIFAR10_ZIP, split)
    assert src.class_names == CIFAR10_CLASSES  # Sorted folder names are CIFAR-10's order.
    assert len(src) == n
    np.testing.assert_array_equal(np.bincount(src.labels), [n // 10] * 10)
    picks = np.array([0, n // 2, n - 1])
    batch = src.read(picks)
    assert batch["image"].shape == (3, 32, 32, 3)
    for i, label in zip(picks, batch["label"], strict=True):
        assert src.members[i].split("/")[1] == CIFAR10_CLASSES[label]


def test_oversized_image_is_refused_on_read(make_root):
    src = ImageFolderSource(
        make_root(layout() | {"train/ant/0001.png": b"\0" * 5000}), "train", max_image_bytes=4096
    )
    src.read([0, 2, 3])  # Small images still read.
    with pytest.raises(ValueError, match=r"'train/ant/0001.png'.*5000 bytes.*max_image_bytes=4096"):
        src.read([1])


def test_compressed_member_is_capped_before_it_expands(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for rel, data in (layout() | {"train/ant/0001.png": b"\0" * (1 << 20)}).items():
            z.writestr(rel, data)  # the 1 MiB of zeros compresses to about 1 KiB
    assert path.stat().st_size < 10_000
    src = ImageFolderSource(path, "train", max_image_bytes=1 << 16)
    with pytest.raises(ValueError, match=r"'train/ant/0001.png'.*1048576 bytes"):
        src.read([1])


def test_symlink_loop_is_refused_and_other_links_are_followed(tmp_path):
    root = write_folder(tmp_path / "folder", layout())
    (root / "train/dog").symlink_to(root / "train/cat", target_is_directory=True)
    assert ImageFolderSource(root, "train").class_names == ("ant", "bird", "cat", "dog")
    (root / "train/ant/loop").symlink_to(root / "train", target_is_directory=True)
    with pytest.raises(ValueError, match=r"train/ant/loop'.*symlink loop"):
        ImageFolderSource(root, "train")


def test_decompression_bomb_names_the_file(make_root, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # the 6 x 5 fixtures exceed twice that
    src = ImageFolderSource(make_root(layout()), "train")
    with pytest.raises(ValueError, match=r"Image 'train/ant/0000.png'.*decompression bomb"):
        src.read([0])
