"""Images a user hands in: repeated within an episode, 16-bit, alpha, palette, too large,
corrupt. Each is read faithfully or refused with one line naming the file, the same way by
`mamlscope evaluate`'s `load_image`, the image-folder reader and the figure stacking."""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from job_tools import train_job
from PIL import Image

from mamlscope.cli import main
from mamlscope.data import episode_table
from mamlscope.data.episode_table import load_image, read_episode_table
from mamlscope.data.prepared import PreparedDataset
from mamlscope.data.sources import read_source
from mamlscope.errors import DataError
from mamlscope.features.studies.extremes import stack_vertically

SIZE = 12


pytestmark = pytest.mark.usefixtures("one_thread")


def pattern(seed: int = 0, shape: tuple[int, ...] = (SIZE, SIZE)) -> np.ndarray:
    """uint8 pixels over the whole 0..255 range (both ends present)."""
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    pixels.flat[:2] = (0, 255)
    return pixels


def read(path: Path, channels: int = 1, size: int = SIZE) -> np.ndarray:
    return load_image(str(path), size=size, channels=channels, invert=False)


def read_folder(root: Path, channels: int = 1, size: int = SIZE) -> np.ndarray:
    """Every image of ``root/CLASS/*`` through the imagefolder source, in sorted order."""
    cfg = {"source": "imagefolder", "path": str(root), "image_size": size, "channels": channels}
    return read_source(cfg, ".", False).images


def one_image_folder(root: Path, image: Image.Image, name: str = "x.png") -> Path:
    (root / "cls").mkdir(parents=True)
    image.save(root / "cls" / name)
    return root / "cls" / name


# --- 16-bit, 32-bit and float pixels are scaled, not clipped ------------------------------


@pytest.mark.parametrize("size", [SIZE, 7])  # native, and resized after the conversion
@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_png_reads_as_its_8_bit_twin_in_both_readers(tmp_path, size, channels):
    pixels = pattern()
    sixteen = Image.fromarray(pixels.astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I")
    one_image_folder(tmp_path / "eight", Image.fromarray(pixels))
    one_image_folder(tmp_path / "sixteen", sixteen)
    expected = read(tmp_path / "eight" / "cls" / "x.png", channels, size)
    assert expected.std() > 25  # a real range of greys, so clipping would show
    got = read(tmp_path / "sixteen" / "cls" / "x.png", channels, size)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(read_folder(tmp_path / "sixteen", channels, size)[0], expected)
    np.testing.assert_array_equal(read_folder(tmp_path / "eight", channels, size)[0], expected)


def test_16_bit_values_that_are_not_multiples_of_257_round_to_the_nearest_grey(tmp_path):
    values = np.array([[0, 128, 129, 385, 65535, 65407, 300, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "odd.png")
    got = load_image(str(tmp_path / "odd.png"), size=8, channels=1, invert=False)
    # Resized from 8x1 to 8x8 with LANCZOS: every row is the 8-bit row, rounded from v/257.
    expected = np.rint(values / 257).astype(np.uint8)
    assert np.abs(got[0].astype(int) - expected.astype(int)).max() <= 1
    assert got[0, 0, 4] == 255 and got[0, 0, 0] == 0


def test_32_bit_integer_and_float_tiffs_are_scaled_by_their_range(tmp_path):
    pixels = pattern(1)
    int32 = (pixels.astype(np.int64) * (2**31 - 1) // 255).astype(np.int32)
    Image.fromarray(int32).save(tmp_path / "int32.tiff")
    Image.fromarray(pixels.astype(np.float32) / 255).save(tmp_path / "float.tiff")
    for name in ("int32.tiff", "float.tiff"):
        got = read(tmp_path / name)[0]
        assert np.abs(got.astype(int) - pixels.astype(int)).max() <= 1, name


@pytest.mark.parametrize(
    "values, words",
    [
        (np.full((4, 4), 200.0, dtype=np.float32), ["0..1", "200"]),
        (np.full((4, 4), -5, dtype=np.int32), ["-5", "outside"]),
    ],
)
def test_pixels_outside_their_range_are_refused_naming_the_file(tmp_path, values, words):
    """A TIFF (PNG holds neither) named .png, so the folder reader takes it too."""
    (tmp_path / "cls").mkdir()
    path = tmp_path / "cls" / "bad.png"
    Image.fromarray(values).save(path, format="TIFF")
    for reader in (lambda: read(path), lambda: read_folder(tmp_path)):
        with pytest.raises(DataError) as caught:
            reader()
        message = str(caught.value)
        assert str(path) in message and "\n" not in message
        for word in words:
            assert word in message


# --- alpha and palettes: composited on white, the same in both readers --------------------


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The reference: straight alpha over a white background, in integers."""
    colour, alpha = colour.astype(np.int64), alpha.astype(np.int64)
    return (colour * alpha + 255 * (255 - alpha)) / 255


def alpha_images() -> dict[str, tuple[Image.Image, np.ndarray]]:
    """Images with transparency over BLACK colour, and the grey each pixel must read as."""
    grey, alpha = pattern(2), pattern(3)
    alpha[:4] = 0  # fully transparent rows: black underneath, white when shown
    alpha[4:6] = 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    expected = on_white(grey, alpha)
    cases = {
        "LA": (Image.fromarray(np.stack([grey, alpha], axis=2)), expected),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha])), expected),
    }
    # A palette of 16 greys, index 0 (black) transparent: a tRNS chunk in the PNG.
    index = (grey // 16).astype(np.uint8)
    palette = Image.fromarray(index).convert("P")
    palette.putpalette([v for i in range(16) for v in (i * 17,) * 3])
    palette.info["transparency"] = 0
    cases["P+tRNS"] = (palette, np.where(index == 0, 255, index * 17))
    # One grey value marked transparent (tRNS of a greyscale PNG); 0 also appears opaque.
    cases["L+tRNS"] = (Image.fromarray(grey), np.where(grey == grey[0, 2], 255, grey))
    cases["L+tRNS"][0].info["transparency"] = int(grey[0, 2])
    opaque = palette.copy()
    del opaque.info["transparency"]
    cases["P"] = (opaque, index * 17)
    return cases


@pytest.mark.parametrize("case", ["LA", "RGBA", "P+tRNS", "L+tRNS", "P"])
@pytest.mark.parametrize("channels", [1, 3])
def test_alpha_and_palettes_are_composited_on_white_in_both_readers(tmp_path, case, channels):
    image, expected = alpha_images()[case]
    path = one_image_folder(tmp_path, image)
    with Image.open(path) as saved:  # the PNG kept what the case is about
        assert saved.mode == image.mode
        assert ("transparency" in saved.info) == case.endswith("tRNS")
    for got in (read(path, channels), read_folder(tmp_path, channels)[0]):
        assert got.shape == (channels, SIZE, SIZE)
        for channel in got:
            assert np.abs(channel.astype(float) - expected).max() <= 1, case


# --- an image repeated within an episode ---------------------------------------------------


@pytest.fixture(scope="module")
def maml_checkpoint(tiny_digits, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("untrusted-maml")
    train_job(tiny_digits, tiny_digits["cfg"], "maml", folder)
    return folder / "model.pt"


@pytest.fixture(scope="module")
def episode_files(tiny_digits, tmp_path_factory) -> dict:
    """The first three fixed test episodes as 8-bit and as 16-bit PNGs, and their table."""
    folder = tmp_path_factory.mktemp("untrusted-episodes")
    data = PreparedDataset.load(tiny_digits["data_dir"])
    episodes = pd.read_parquet(tiny_digits["split_dir"] / "episodes_test.parquet")
    episodes = episodes[episodes["episode"] < 3].sort_values(["episode", "role", "label"])
    for bits in ("8", "16"):
        (folder / bits).mkdir()
        for example in episodes["example_id"].unique():
            pixels = data.images[example, 0]
            image = pixels if bits == "8" else pixels.astype(np.uint16) * 257
            Image.fromarray(image).save(folder / bits / f"{example}.png")
    table = pd.DataFrame(
        {
            "episode": episodes["episode"].to_numpy(),
            "role": episodes["role"].to_numpy(),
            "image": [f"8/{e}.png" for e in episodes["example_id"]],
            "label": episodes["label"].to_numpy(),
        }
    ).reset_index(drop=True)
    return {"folder": folder, "table": table}


def write_table(files: dict, table: pd.DataFrame, name: str) -> Path:
    path = files["folder"] / name
    table.to_csv(path, index=False)
    return path


def evaluate(capsys, checkpoint: Path, table: Path) -> tuple[int, str, str]:
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--episodes", str(table), "--json"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(result: tuple[int, str, str], *words: str) -> str:
    code, out, err = result
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("mamlscope: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    return err


def queries_repeat_support(table: pd.DataFrame, episode: int, image) -> pd.DataFrame:
    """The first query of each label of ``episode`` points at ``image(its support image)``."""
    table = table.copy()
    rows = table[table["episode"] == episode]
    support = rows[rows["role"] == "support"].set_index("label")["image"]
    queries = rows[rows["role"] == "query"].drop_duplicates("label").index
    table.loc[queries, "image"] = [image(support[label]) for label in rows.loc[queries, "label"]]
    return table


def test_a_query_repeating_its_support_image_is_refused(capsys, maml_checkpoint, episode_files):
    table = queries_repeat_support(episode_files["table"], 1, lambda p: p)
    path = write_table(episode_files, table, "repeats.csv")
    err = one_line_error(evaluate(capsys, maml_checkpoint, path), "episode 1", "same file")
    first = table.index[(table["episode"] == 1) & (table["role"] == "query")][0]  # repeats
    label = table.at[first, "label"]
    support = table.index[(table["episode"] == 1) & (table["role"] == "support")]
    twin = support[table.loc[support, "label"] == label][0]
    assert f"data row {twin + 1} (support, " in err and f"data row {first + 1} (query, " in err
    assert table.at[first, "image"] in err


@pytest.mark.parametrize("spelling", ["dotdot", "absolute", "symlink"])
def test_the_same_file_spelt_differently_is_the_same_image(
    capsys, maml_checkpoint, episode_files, spelling
):
    folder = episode_files["folder"]

    def respell(image: str) -> str:
        if spelling == "dotdot":
            return f"8/../8/{Path(image).name}"
        if spelling == "absolute":
            return str(folder / image)
        link = folder / "links" / Path(image).name
        link.parent.mkdir(exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(folder / image)
        return f"links/{link.name}"

    table = queries_repeat_support(episode_files["table"], 2, respell)
    path = write_table(episode_files, table, f"respelt-{spelling}.csv")
    one_line_error(evaluate(capsys, maml_checkpoint, path), "episode 2", "same file")


def test_a_copied_file_is_the_same_image(capsys, maml_checkpoint, episode_files):
    folder = episode_files["folder"]
    (folder / "copies").mkdir(exist_ok=True)

    def copy(image: str) -> str:
        target = folder / "copies" / f"copy-{Path(image).name}"
        shutil.copyfile(folder / image, target)
        return f"copies/{target.name}"

    table = queries_repeat_support(episode_files["table"], 0, copy)
    path = write_table(episode_files, table, "copies.csv")
    err = one_line_error(
        evaluate(capsys, maml_checkpoint, path), "episode 0", "identical bytes", "copies/copy-"
    )
    assert "(support, " in err and "(query, " in err


def test_each_file_is_hashed_at_most_once_and_only_when_sizes_meet(
    episode_files, tmp_path, monkeypatch
):
    """Same-size distinct files are compared by content, each hashed once over the table;
    a repeated path is refused without hashing anything."""
    hashed: list[str] = []
    real_sha256 = episode_table._sha256
    monkeypatch.setattr(episode_table, "_sha256", lambda f: hashed.append(f) or real_sha256(f))
    rng = np.random.default_rng(5)
    files = []
    for i in range(4):  # raw 8-bit greys at one size: equal sizes, different bytes
        files.append(tmp_path / f"{i}.pgm")
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(files[-1])
    assert len({f.stat().st_size for f in files}) == 1
    rows = [
        (episode, role, f"{files[(episode + k) % 4].name}", label)
        for episode in range(6)
        for k, (role, label) in enumerate(
            [("support", 0), ("support", 1), ("query", 0), ("query", 1)]
        )
    ]
    table = pd.DataFrame(rows, columns=["episode", "role", "image", "label"])
    table.to_csv(tmp_path / "t.csv", index=False)
    assert len(read_episode_table(tmp_path / "t.csv")) == 24
    assert sorted(hashed) == sorted(os.path.realpath(f) for f in files)  # each once
    hashed.clear()
    table.loc[2, "image"] = table.loc[0, "image"]
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="episode 0: data row 1 .* and data row 3 .* same file"):
        read_episode_table(tmp_path / "t.csv")
    assert hashed == []


def test_16_bit_episodes_score_as_their_8_bit_twins(capsys, maml_checkpoint, episode_files):
    table = episode_files["table"]
    eight = write_table(episode_files, table, "eight.csv")
    sixteen = write_table(
        episode_files, table.assign(image=table["image"].str.replace("8/", "16/")), "sixteen.csv"
    )
    results = []
    for path in (eight, sixteen):
        code, out, err = evaluate(capsys, maml_checkpoint, path)
        assert code == 0, err
        results.append(json.loads(out))
    assert results[0]["episodes"] == results[1]["episodes"] == 3
    assert results[1]["mean"] == pytest.approx(results[0]["mean"], abs=1e-9)
    assert results[1]["std"] == pytest.approx(results[0]["std"], abs=1e-9)


# --- a header claiming a huge image, corrupt files ----------------------------------------


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): no pixels allocated."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [30000, 10000])  # past Pillow's error, in its warning band
def test_a_huge_header_is_one_clear_error_in_both_readers(tmp_path, side):
    path = png_claiming(tmp_path / "bomb.png", side, side)
    (tmp_path / "tree" / "cls").mkdir(parents=True)
    shutil.copy(path, tmp_path / "tree" / "cls" / "bomb.png")
    for target, reader in ((path, read), (tmp_path / "tree" / "cls" / "bomb.png", None)):
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with pytest.raises(DataError) as caught:
                read(target) if reader else read_folder(tmp_path / "tree")
        message = str(caught.value)
        assert str(target) in message and "decompression bomb" in message, message
        assert "\n" not in message
        assert not [w for w in shown if "decompression" in str(w.message).lower()]


def test_a_huge_header_through_the_cli(capsys, maml_checkpoint, episode_files):
    folder = episode_files["folder"]
    png_claiming(folder / "bomb.png", 30000, 30000)
    table = episode_files["table"].copy()
    table.loc[0, "image"] = "bomb.png"
    path = write_table(episode_files, table, "bomb.csv")
    one_line_error(evaluate(capsys, maml_checkpoint, path), "bomb.png", "decompression bomb")


def test_figure_parts_are_stacked_with_alpha_on_white(tmp_path):
    parts = [tmp_path / "a.png", tmp_path / "b.png"]
    Image.fromarray(pattern(6, (5, 9, 3))).save(parts[0])
    Image.fromarray(np.dstack([pattern(7, (4, 6, 3)), np.zeros((4, 6), np.uint8)])).save(parts[1])
    stack_vertically(parts, tmp_path / "out.png")
    stacked = np.asarray(Image.open(tmp_path / "out.png"))
    assert stacked.shape == (9, 9, 3)
    np.testing.assert_array_equal(stacked[:5], pattern(6, (5, 9, 3)))
    assert (stacked[5:] == 255).all()  # transparent part on white, white canvas beside it


def test_a_corrupt_figure_part_is_named(tmp_path):
    parts = [tmp_path / "a.png"]
    Image.fromarray(pattern(6, (5, 9, 3))).save(parts[0])
    whole = parts[0].read_bytes()
    for name, data in (("truncated.png", whole[: len(whole) // 2]), ("junk.png", b"no png")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError) as caught:
            stack_vertically([parts[0], tmp_path / name], tmp_path / "bad.png")
        assert str(tmp_path / name) in str(caught.value)
        assert not (tmp_path / "bad.png").exists()
