"""Source readers on tiny archives built here: layouts, labels, conversions and every failure."""

from __future__ import annotations

import gzip
import io
import pickle
import re
import shutil
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlscope.data import archives
from mamlscope.data.sources import RawDataset, read_source
from mamlscope.errors import ConfigError, DataError
from mamlscope.io import md5sum

ALPHABETS = ("Alpha", "Beta")
CHARACTERS = ("character01", "character02", "character03")


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def make_omniglot_zip(
    path: Path, top: str, seed: int = 0, alphabets: tuple[str, ...] = ALPHABETS
) -> dict[str, np.ndarray]:
    """2 alphabets x 3 characters x 4 bilevel 105x105 PNGs; returns member -> pixels (0/255)."""
    rng = np.random.default_rng(seed)
    drawings = {}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/", b"")
        for alphabet in alphabets:
            for character in CHARACTERS:
                for k in range(4):
                    pixels = np.where(rng.random((105, 105)) < 0.8, 255, 0).astype(np.uint8)
                    member = f"{top}/{alphabet}/{character}/{k:04d}_{k + 1:02d}.png"
                    archive.writestr(member, png_bytes(pixels, "1"))
                    drawings[member] = pixels
    return drawings


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_idx_pair(folder: Path, prefix: str, n: int, gz: bool, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


def make_class_tree(root: Path, sets=("train", "test"), classes=("dog", "airplane", "cat"), n=2):
    """root/SET/CLASS/NNNN.png, RGB 32x32; returns {(set, class, i): pixels HWC}."""
    rng = np.random.default_rng(1)
    pixels = {}
    for s in sets:
        for c in classes:
            (root / s / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                (root / s / c / f"{i:04d}.png").write_bytes(png_bytes(arr))
                pixels[(s, c, i)] = arr
    return pixels


def omniglot_cfg(root: Path, sets: list[str], **extra) -> dict:
    return {"source": "omniglot", "root": str(root), "sets": sets, "download": False, **extra}


# --- Omniglot ---------------------------------------------------------------------------------


def test_omniglot_zip_labels_and_lanczos_resize(tmp_path: Path) -> None:
    drawings = make_omniglot_zip(tmp_path / "images_custom.zip", "images_custom")
    raw = read_source(omniglot_cfg(tmp_path, ["images_custom"]), show_progress=False)
    assert isinstance(raw, RawDataset)
    assert raw.images.shape == (24, 1, 28, 28) and raw.images.dtype == np.uint8
    assert Counter(raw.class_names) == {f"{a}/{c}": 4 for a in ALPHABETS for c in CHARACTERS}
    assert raw.class_names == sorted(raw.class_names)
    assert [n.split("/")[0] for n in raw.class_names] == raw.groups
    assert set(raw.origins) == {"images_custom"}
    first = drawings["images_custom/Alpha/character01/0000_01.png"]
    expected = np.asarray(Image.fromarray(first).resize((28, 28), Image.LANCZOS))
    np.testing.assert_array_equal(raw.images[0, 0], expected)


def test_omniglot_native_size_keeps_bilevel_pixels(tmp_path: Path) -> None:
    drawings = make_omniglot_zip(tmp_path / "images_custom.zip", "images_custom")
    raw = read_source(
        omniglot_cfg(tmp_path, ["images_custom"], image_size=105), show_progress=False
    )
    expected = np.stack([drawings[m] for m in sorted(drawings)])
    np.testing.assert_array_equal(raw.images[:, 0], expected)


@pytest.mark.parametrize("layout", ["{S}", "omniglot-py/{S}"])
def test_omniglot_extracted_folders_match_the_zip(tmp_path: Path, layout: str) -> None:
    (tmp_path / "zip").mkdir()
    make_omniglot_zip(tmp_path / "zip" / "images_custom.zip", "images_custom")
    with zipfile.ZipFile(tmp_path / "zip" / "images_custom.zip") as archive:
        archive.extractall(tmp_path / "tree")
    target = tmp_path / "root" / layout.format(S="images_custom")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(tmp_path / "tree" / "images_custom", target)
    from_zip = read_source(omniglot_cfg(tmp_path / "zip", ["images_custom"]), show_progress=False)
    from_dir = read_source(omniglot_cfg(tmp_path / "root", ["images_custom"]), show_progress=False)
    np.testing.assert_array_equal(from_zip.images, from_dir.images)
    assert (from_zip.class_names, from_zip.groups) == (from_dir.class_names, from_dir.groups)
    assert from_zip.origins == from_dir.origins


def test_invert_and_three_channels(tmp_path: Path) -> None:
    make_omniglot_zip(tmp_path / "images_custom.zip", "images_custom")
    plain = read_source(omniglot_cfg(tmp_path, ["images_custom"]), show_progress=False)
    inverted = read_source(
        omniglot_cfg(tmp_path, ["images_custom"], invert=True), show_progress=False
    )
    rgb = read_source(
        omniglot_cfg(tmp_path, ["images_custom"], channels=3, image_size=20), show_progress=False
    )
    np.testing.assert_array_equal(inverted.images, 255 - plain.images)
    assert rgb.images.shape == (24, 3, 20, 20)
    np.testing.assert_array_equal(rgb.images[:, 0], rgb.images[:, 2])
    assert rgb.images.std() > 0


def test_omniglot_two_sets_concatenate_in_order(tmp_path: Path) -> None:
    make_omniglot_zip(tmp_path / "set_b.zip", "set_b", seed=1, alphabets=("Gamma", "Delta"))
    make_omniglot_zip(tmp_path / "set_a.zip", "set_a", seed=2)
    raw = read_source(omniglot_cfg(tmp_path, ["set_b", "set_a"]), show_progress=False)
    assert raw.origins == ["set_b"] * 24 + ["set_a"] * 24
    assert raw.groups == ["Delta"] * 12 + ["Gamma"] * 12 + ["Alpha"] * 12 + ["Beta"] * 12
    alone = read_source(omniglot_cfg(tmp_path, ["set_a"]), show_progress=False)
    np.testing.assert_array_equal(raw.images[24:], alone.images)


def test_omniglot_drawings_in_two_sets_are_read_once(tmp_path: Path) -> None:
    # images_background_small1 and small2 share Greek and Latin drawings, file for file.
    make_omniglot_zip(tmp_path / "small_a.zip", "small_a", alphabets=("Greek", "Alpha"))
    make_omniglot_zip(tmp_path / "small_b.zip", "small_b", alphabets=("Greek", "Beta"))
    raw = read_source(omniglot_cfg(tmp_path, ["small_a", "small_b"]), show_progress=False)
    assert len(raw) == 36 and Counter(raw.class_names)["Greek/character01"] == 4
    assert Counter(raw.origins) == {"small_a": 24, "small_b": 12}
    assert set(zip(raw.groups, raw.origins, strict=True)) == {
        ("Alpha", "small_a"),
        ("Greek", "small_a"),
        ("Beta", "small_b"),
    }


def test_corrupt_zip_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "images_custom.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="images_custom.zip"):
        read_source(omniglot_cfg(tmp_path, ["images_custom"]), show_progress=False)


def test_corrupt_png_inside_zip_names_the_member(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "images_custom.zip", "w") as archive:
        archive.writestr("images_custom/A/character01/0001_01.png", b"\x89PNG broken")
    with pytest.raises(DataError, match="character01/0001_01.png"):
        read_source(omniglot_cfg(tmp_path, ["images_custom"]), show_progress=False)


def test_known_zip_name_with_wrong_md5_is_rejected(tmp_path: Path) -> None:
    make_omniglot_zip(tmp_path / "images_background_small1.zip", "images_background_small1")
    actual = md5sum(tmp_path / "images_background_small1.zip")
    with pytest.raises(DataError) as err:
        read_source(omniglot_cfg(tmp_path, ["images_background_small1"]), show_progress=False)
    message = str(err.value)
    assert "images_background_small1.zip" in message
    assert "e704a628b5459e08445c13499850abc4" in message and actual in message


def test_configured_checksums_are_enforced(tmp_path: Path) -> None:
    make_omniglot_zip(tmp_path / "images_custom.zip", "images_custom")
    good = {"images_custom.zip": md5sum(tmp_path / "images_custom.zip")}
    assert (
        len(
            read_source(
                omniglot_cfg(tmp_path, ["images_custom"], checksums=good), show_progress=False
            )
        )
        == 24
    )
    bad = {"images_custom.zip": "0" * 32}
    with pytest.raises(DataError, match=r"images_custom\.zip.*0{32}"):
        read_source(omniglot_cfg(tmp_path, ["images_custom"], checksums=bad), show_progress=False)


def test_missing_set_without_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"images_evaluation\.zip.*download: true"):
        read_source(omniglot_cfg(tmp_path, ["images_evaluation"]), show_progress=False)


def test_default_root_is_data_root_slash_source(tmp_path: Path) -> None:
    (tmp_path / "omniglot").mkdir()
    make_omniglot_zip(tmp_path / "omniglot" / "images_custom.zip", "images_custom")
    cfg = {"source": "omniglot", "sets": ["images_custom"], "download": False}
    assert len(read_source(cfg, data_root=tmp_path, show_progress=False)) == 24


@pytest.mark.parametrize("source", ["omniglot", "mnist", "cifar10"])
def test_configured_root_that_does_not_exist(tmp_path: Path, source: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"root.*{re.escape(str(missing))}"):
        read_source({"source": source, "root": str(missing), "download": False}, tmp_path, False)


# --- MNIST IDX --------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", [".", "MNIST/raw"])
def test_mnist_reads_idx_files(tmp_path: Path, gz: bool, layout: str) -> None:
    images, labels = make_idx_pair(tmp_path / layout, "train", 12, gz)
    cfg = {"source": "mnist", "root": str(tmp_path), "sets": ["train"], "download": False}
    raw = read_source(cfg, show_progress=False)
    np.testing.assert_array_equal(raw.images[:, 0], images)
    assert raw.class_names == [str(y) for y in labels] == raw.groups
    assert raw.origins == ["train"] * 12


def test_mnist_resize_and_channels(tmp_path: Path) -> None:
    images, _ = make_idx_pair(tmp_path, "train", 5, gz=True)
    cfg = {"source": "mnist", "root": str(tmp_path), "sets": ["train"], "download": False}
    raw = read_source({**cfg, "image_size": 14, "channels": 3}, show_progress=False)
    assert raw.images.shape == (5, 3, 14, 14)
    expected = np.asarray(Image.fromarray(images[3]).resize((14, 14), Image.LANCZOS))
    np.testing.assert_array_equal(raw.images[3, 1], expected)


def test_unofficial_t10k_fails_the_official_md5(tmp_path: Path) -> None:
    make_idx_pair(tmp_path, "t10k", 4, gz=True)
    cfg = {"source": "mnist", "root": str(tmp_path), "sets": ["test"], "download": False}
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*2646ac647ad5339dbf"):
        read_source(cfg, show_progress=False)


def test_truncated_gz_names_the_file(tmp_path: Path) -> None:
    make_idx_pair(tmp_path, "train", 6, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    cfg = {"source": "mnist", "root": str(tmp_path), "sets": ["train"], "download": False}
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        read_source(cfg, show_progress=False)


@pytest.mark.parametrize(
    "damage", [lambda b: b"\x00\x00\x09\x03" + b[4:], lambda b: b[:-5], lambda b: b[:6]]
)
def test_corrupt_idx_names_the_file(tmp_path: Path, damage) -> None:
    make_idx_pair(tmp_path, "train", 6, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    cfg = {"source": "mnist", "root": str(tmp_path), "sets": ["train"], "download": False}
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        read_source(cfg, show_progress=False)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    make_idx_pair(tmp_path, "train", 6, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    cfg = {"source": "mnist", "root": str(tmp_path), "sets": ["train"], "download": False}
    with pytest.raises(DataError, match="6 images but"):
        read_source(cfg, show_progress=False)


def test_idx_checksums_checked_on_stored_file(tmp_path: Path) -> None:
    make_idx_pair(tmp_path, "train", 6, gz=True)
    cfg = {"source": "mnist", "root": str(tmp_path), "sets": ["train"], "download": False}
    bad = {"train-labels-idx1-ubyte.gz": "f" * 32}
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*f{32}"):
        read_source({**cfg, "checksums": bad}, show_progress=False)


def test_mnist_missing_files_without_download(tmp_path: Path) -> None:
    cfg = {"source": "mnist", "root": str(tmp_path), "download": False}
    with pytest.raises(DataError) as err:
        read_source(cfg, show_progress=False)
    message = str(err.value)
    assert str(tmp_path) in message and "t10k-images-idx3-ubyte" in message
    assert "download: true" in message and "root" in message


def test_mnist_download_goes_through_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torchvision = pytest.importorskip("torchvision")
    calls = []

    def fake_mnist(root, download):  # writes what torchvision would, without the network
        calls.append((Path(root), download))
        make_idx_pair(Path(root) / "MNIST" / "raw", "train", 7, gz=False)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    cfg = {"source": "mnist", "root": str(tmp_path / "new"), "sets": ["train"], "download": True}
    assert len(read_source(cfg, show_progress=False)) == 7
    assert calls == [(tmp_path / "new", True)]
    assert len(read_source(cfg, show_progress=False)) == 7 and len(calls) == 1  # now local

    def offline(root, download):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match="network is unreachable.*download: false"):
        read_source({**cfg, "root": str(tmp_path / "other")}, show_progress=False)


def test_mnist_rejects_unknown_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sets"):
        read_source({"source": "mnist", "root": str(tmp_path), "sets": ["val"]}, tmp_path, False)


# --- offline digit sources --------------------------------------------------------------------


@pytest.mark.slow
def test_mnist5k_has_500_real_digits_per_class() -> None:
    raw = read_source({"source": "mnist5k"}, show_progress=False)
    assert raw.images.shape == (5000, 1, 28, 28)
    assert Counter(raw.class_names) == {str(d): 500 for d in range(10)}
    assert set(raw.origins) == {"train"} and raw.groups == raw.class_names
    assert raw.images.max() == 255 and 0.05 < (raw.images > 127).mean() < 0.3


def test_mnist5k_test_images_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"test_images.*{re.escape(str(tmp_path / 'absent'))}"):
        read_source({"source": "mnist5k", "test_images": str(tmp_path / "absent")}, ".", False)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        read_source({"source": "mnist5k", "test_images": str(tmp_path)}, ".", False)
    make_idx_pair(tmp_path, "t10k", 3, gz=False)
    with pytest.raises(DataError, match="27ae3e4e09519cfbb04c329615203637|2646ac647ad5339dbf"):
        read_source({"source": "mnist5k", "test_images": str(tmp_path)}, ".", False)


def test_digits_scaled_to_bytes() -> None:
    from sklearn.datasets import load_digits

    native = read_source({"source": "digits", "image_size": 8}, show_progress=False)
    digits = load_digits()
    assert native.images.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(native.images[:, 0], np.rint(digits.images * 255 / 16))
    assert native.class_names == [str(t) for t in digits.target]
    resized = read_source({"source": "digits"}, show_progress=False)
    assert resized.images.shape == (1797, 1, 28, 28)
    upsized = Image.fromarray(native.images[5, 0]).resize((28, 28), Image.LANCZOS)
    np.testing.assert_array_equal(resized.images[5, 0], np.asarray(upsized))


# --- CIFAR-10 ---------------------------------------------------------------------------------


def cifar_cfg(root: Path, **extra) -> dict:
    return {"source": "cifar10", "root": str(root), "download": False, "image_size": 32, **extra}


def check_tree_result(raw: RawDataset, pixels: dict) -> None:
    keys = sorted(pixels, key=lambda k: (k[0] != "train", k[1], k[2]))
    assert raw.images.shape == (len(keys), 3, 32, 32)
    assert raw.class_names == [c for _, c, _ in keys] == raw.groups
    assert raw.origins == [s for s, _, _ in keys]
    for i, key in enumerate(keys):
        np.testing.assert_array_equal(raw.images[i], pixels[key].transpose(2, 0, 1))


def test_cifar_class_tree(tmp_path: Path) -> None:
    pixels = make_class_tree(tmp_path)
    check_tree_result(read_source(cifar_cfg(tmp_path, channels=3), show_progress=False), pixels)
    grey = read_source(cifar_cfg(tmp_path, sets=["test"]), show_progress=False)
    first = pixels[("test", "airplane", 0)]
    np.testing.assert_array_equal(
        grey.images[0, 0], np.asarray(Image.fromarray(first).convert("L"))
    )
    assert set(grey.origins) == {"test"}


def tar_of(tarball: Path, entries: dict[str, bytes]) -> None:
    with tarfile.open(tarball, "w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("top", ["", "cifar10-jpg/", "./"])
def test_cifar_tarball_is_read_in_place(tmp_path: Path, top: str) -> None:
    pixels = make_class_tree(tmp_path / "tree")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar10-jpg.tar.gz", "w:gz") as archive:
        for s in ("test", "train"):
            archive.add(tmp_path / "tree" / s, arcname=f"{top}{s}")
    check_tree_result(read_source(cifar_cfg(root, channels=3), show_progress=False), pixels)
    assert [p.name for p in root.iterdir()] == ["cifar10-jpg.tar.gz"]  # nothing extracted
    only_test = read_source(cifar_cfg(root, sets=["test"]), show_progress=False)
    assert set(only_test.origins) == {"test"} and len(only_test) == 6


def test_cifar_tarball_ignores_escaping_and_hidden_members(tmp_path: Path) -> None:
    image = png_bytes(np.zeros((32, 32, 3), np.uint8))
    entries = {"train/cat/0.png": image, "../../train/dog/1.png": image}
    entries |= {"train/cat/._0.png": b"macOS metadata", "/train/cat/2.png": image}
    tar_of(tmp_path / "evil.tar.gz", entries)
    raw = read_source(cifar_cfg(tmp_path, sets=["train"]), show_progress=False)
    assert raw.class_names == ["cat"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.tar.gz"]


def test_cifar_tarball_without_a_requested_set(tmp_path: Path) -> None:
    tar_of(tmp_path / "c.tar.gz", {"train/cat/0.png": png_bytes(np.zeros((4, 4), np.uint8))})
    with pytest.raises(DataError, match=r"c\.tar\.gz.*\['test'\]"):
        read_source(cifar_cfg(tmp_path), show_progress=False)


def test_official_tarball_is_extracted_safely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archives, "KNOWN_MD5", {})
    tar_of(tmp_path / "cifar-10-python.tar.gz", {"cifar-10-batches-py/../../../escaped": b"x"})
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*outside the destination"):
        read_source(cifar_cfg(tmp_path), show_progress=False)
    assert not list(tmp_path.parent.rglob("escaped"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


def test_cifar_truncated_tarball(tmp_path: Path) -> None:
    make_class_tree(tmp_path / "tree")
    with tarfile.open(tmp_path / "full.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "tree" / "train", arcname="train")
    (tmp_path / "root").mkdir()
    data = (tmp_path / "full.tar.gz").read_bytes()
    (tmp_path / "root" / "c.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="c.tar.gz"):
        read_source(cifar_cfg(tmp_path / "root", sets=["train"]), show_progress=False)


def write_cifar_batches(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    rng = np.random.default_rng(3)
    data = {}
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        arr = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 3, 2)]
        (folder / batch).write_bytes(pickle.dumps({b"data": arr, b"labels": labels}))
        data[batch] = (arr, labels)
    return data


def test_cifar_pickled_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match="batches.meta.*5ff9c542aee3614f3951f8cda6e48888"):
        read_source(cifar_cfg(tmp_path), show_progress=False)
    monkeypatch.setattr(archives, "KNOWN_MD5", {})  # the fake batches are not the official ones
    raw = read_source(cifar_cfg(tmp_path, channels=3, sets=["test"]), show_progress=False)
    arr, labels = data["test_batch"]
    np.testing.assert_array_equal(raw.images, arr.reshape(2, 3, 32, 32))
    assert raw.class_names == [["airplane", "automobile", "bird"][y] for y in labels]
    both = read_source(cifar_cfg(tmp_path), show_progress=False)
    assert Counter(both.origins) == {"train": 10, "test": 2} and both.images.shape[1] == 1


def test_cifar_official_tarball_is_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_cifar_batches(tmp_path / "build" / "cifar-10-batches-py")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    with pytest.raises(DataError, match="cifar-10-python.tar.gz.*c58f30108f718f92721af3b95e74349a"):
        read_source(cifar_cfg(root), show_progress=False)
    monkeypatch.setattr(archives, "KNOWN_MD5", {})
    raw = read_source(cifar_cfg(root, channels=3, sets=["train"]), show_progress=False)
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    np.testing.assert_array_equal(raw.images[:2], data["data_batch_1"][0].reshape(2, 3, 32, 32))


def test_cifar_nothing_found_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*download: true"):
        read_source(cifar_cfg(tmp_path), show_progress=False)


# --- image folders ----------------------------------------------------------------------------


def make_imagefolder(root: Path, levels: int) -> None:
    rng = np.random.default_rng(4)
    prefixes = ["g1/", "g2/"] if levels == 2 else [""]
    for prefix in prefixes:
        for cls, ext in (("b", ".PNG"), ("a", ".jpg")):
            folder = root / f"{prefix}{cls}"
            folder.mkdir(parents=True)
            for i in range(3):
                arr = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}{ext}")
            (folder / "notes.txt").write_text("ignored")


def test_imagefolder_one_level(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, 1)
    raw = read_source(
        {"source": "imagefolder", "path": str(tmp_path), "image_size": 16}, ".", False
    )
    assert raw.images.shape == (6, 1, 16, 16)
    assert raw.class_names == ["a"] * 3 + ["b"] * 3 == raw.groups
    assert raw.origins == [""] * 6


def test_imagefolder_two_levels(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, 2)
    cfg = {"source": "imagefolder", "path": str(tmp_path), "levels": 2, "channels": 3}
    raw = read_source(cfg, show_progress=False)
    assert raw.images.shape == (12, 3, 28, 28)
    assert raw.class_names == [f"{g}/{c}" for g in ("g1", "g2") for c in "ab" for _ in range(3)]
    assert raw.groups == [n.split("/")[0] for n in raw.class_names]


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="path"):
        read_source({"source": "imagefolder"}, show_progress=False)
    with pytest.raises(DataError, match=rf"path.*{re.escape(str(tmp_path / 'nope'))}"):
        read_source({"source": "imagefolder", "path": str(tmp_path / "nope")}, ".", False)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "empty"))):
        read_source({"source": "imagefolder", "path": str(tmp_path / "empty")}, ".", False)
    (tmp_path / "empty" / "cls" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        read_source({"source": "imagefolder", "path": str(tmp_path / "empty")}, ".", False)


def test_unknown_source_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="source"):
        read_source({"source": "imagenet"}, show_progress=False)


def test_reader_defaults_are_the_schemas():
    """A reader given a bare dataset entry fills what validation would: one default each."""
    from mamlscope.config import data_section, validate_config
    from mamlscope.data.sources import resolve_config

    entry = {
        "source": "digits",
        "split": {"protocol": "examples"},
        "episodes": {"way": 2, "shot": 1},
    }
    validated = validate_config({"datasets": {"d": entry}}, check_paths=False)["datasets"]["d"]
    resolved = resolve_config({"source": "digits"})
    assert resolved == data_section(validated)
