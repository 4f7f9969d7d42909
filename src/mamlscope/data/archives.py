"""Low-level readers behind the sources: checksums, IDX files, archives, images.

Kept apart from the per-source logic so each piece can be tested on tiny files and so every
failure is turned into a `DataError` that names the file, never a bare traceback.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mamlscope.data import images
from mamlscope.data.images import to_array
from mamlscope.errors import DataError
from mamlscope.io import atomic_path, md5sum

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

#: md5 of files as stored, by file name (torchvision's lists; Omniglot's small sets).
KNOWN_MD5: dict[str, str] = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
    "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

#: md5 of the *decompressed* official MNIST test files: a re-compressed .gz is still accepted.
KNOWN_DECOMPRESSED_MD5: dict[str, str] = {
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _mismatch(what: str, expected: str, actual: str, source: str) -> DataError:
    return DataError(
        f"{what}: md5 {actual} does not match the expected {expected} ({source}); the file is "
        "corrupt or not the one expected: delete it and download it again, or fix `checksums`"
    )


def verify_file(path: Path, checksums: Mapping[str, str]) -> None:
    """Check a stored file against the known md5 for its name and the configured `checksums`."""
    given = [(KNOWN_MD5.get(path.name), "known md5"), (checksums.get(path.name), "`checksums`")]
    expected = [(md5, src) for md5, src in given if md5]
    if not expected:
        return
    actual = md5sum(path)
    for md5, src in expected:
        if actual != md5.lower():
            raise _mismatch(str(path), md5, actual, src)


def read_maybe_gzip(path: Path) -> bytes:
    """Whole file contents, decompressed when the name ends in .gz; corruption is a DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc}); the file is truncated or corrupt") from exc


def parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (MNIST's format): magic 0x0000_08_ndim, big-endian dims."""
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != ndim:
        raise DataError(
            f"{name}: not an unsigned-byte IDX file with {ndim} dimensions "
            f"(magic {data[:4].hex() or 'missing'}, expected 000008{ndim:02x})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: IDX header truncated ({len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) + header
    if len(data) != expected:
        raise DataError(f"{name}: IDX dims {dims} need {expected} bytes but it has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, ndim: int, checksums: Mapping[str, str]) -> np.ndarray:
    """Read an IDX file (plain or .gz) after checking stored and decompressed md5 sums."""
    verify_file(path, checksums)
    data = read_maybe_gzip(path)
    plain = path.name.removesuffix(".gz")
    if plain in KNOWN_DECOMPRESSED_MD5:
        actual = hashlib.md5(data).hexdigest()
        if actual != KNOWN_DECOMPRESSED_MD5[plain]:
            what = f"{path} (decompressed)" if path.suffix == ".gz" else str(path)
            raise _mismatch(what, KNOWN_DECOMPRESSED_MD5[plain], actual, "official MNIST file")
    return parse_idx(data, str(path), ndim)


def find_idx(folders: list[Path], prefix: str) -> tuple[Path, Path] | None:
    """The images and labels IDX files of one split, plain preferred over .gz, same folder."""
    for folder in folders:
        pair = []
        for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
            hits = [folder / n for n in (stem, f"{stem}.gz") if (folder / n).is_file()]
            if not hits:
                break
            pair.append(hits[0])
        else:
            return pair[0], pair[1]
    return None


def read_zip_members(path: Path, checksums: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """(member name, bytes) of every image in a zip, sorted by name; skips macOS metadata."""
    verify_file(path, checksums)
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(
                info.filename
                for info in archive.infolist()
                if not info.is_dir()
                and info.filename.lower().endswith(IMAGE_EXTENSIONS)
                and "__MACOSX" not in info.filename
            )
            return [(name, archive.read(name)) for name in names]
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc}); delete it and retry") from exc


def extract_tar(tarball: Path, target: Path, checksums: Mapping[str, str], inner: str = "") -> Path:
    """Extract safely (filter "data") into `target` atomically; `inner` picks one top folder."""
    verify_file(tarball, checksums)
    try:
        with atomic_path(target) as tmp:
            stage = tmp.parent / "stage" if inner else tmp
            with tarfile.open(tarball) as archive:
                archive.extractall(stage, filter="data")
            if inner:
                if not (stage / inner).is_dir():
                    raise DataError(f"{tarball}: has no top folder {inner!r}")
                (stage / inner).rename(tmp)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{tarball}: cannot extract into {target} ({exc})") from exc
    return target


def read_tar_images(tarball: Path, checksums: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """(member name, bytes) of every regular image file in a tarball, read in one stream.

    Nothing is written to disk, so a hostile member name cannot escape anywhere; names with
    ".." or a leading "/" are skipped all the same. Streaming 60,000 CIFAR JPEGs this way takes
    ~2 s, where extracting them (tarfile's "data" filter, 60,000 files) took 9-55 s here.
    """
    verify_file(tarball, checksums)
    found = []
    try:
        with tarfile.open(tarball) as archive:
            for member in archive:
                parts = member.name.split("/")
                if (
                    member.isfile()
                    and member.name.lower().endswith(IMAGE_EXTENSIONS)
                    and not member.name.startswith("/")
                    and ".." not in parts
                    and not parts[-1].startswith(".")
                ):
                    handle = archive.extractfile(member)
                    found.append((member.name.removeprefix("./"), handle.read()))  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{tarball}: not a readable tar archive ({exc}); delete it and retry"
        ) from exc
    return sorted(found)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted; hidden files are skipped (scandir: no stat)."""
    with os.scandir(folder) as entries:
        names = [
            e.name
            for e in entries
            if e.name.lower().endswith(IMAGE_EXTENSIONS)
            and not e.name.startswith(".")
            and e.is_file()
        ]
    return [folder / n for n in sorted(names)]


def list_dirs(folder: Path) -> list[Path]:
    """Sub-folders of `folder`, sorted; hidden ones are skipped."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    return [folder / n for n in sorted(names)]


def scan_tree(folder: Path, levels: int) -> list[tuple[Path, str, str]]:
    """(image, group, class name) for `folder/CLASS/img` (levels 1) or `GROUP/CLASS/img` (2)."""
    found: list[tuple[Path, str, str]] = []
    if levels == 1:
        for cls in list_dirs(folder):
            found += [(p, cls.name, cls.name) for p in list_images(cls)]
    else:
        for group in list_dirs(folder):
            for cls in list_dirs(group):
                name = f"{group.name}/{cls.name}"
                found += [(p, group.name, name) for p in list_images(cls)]
    return found


def read_pickle(path: Path, checksums: Mapping[str, str]) -> dict:
    """A CIFAR-10 python batch (a pickled dict with bytes keys), md5-checked first."""
    if not path.is_file():
        raise DataError(f"{path}: missing; delete {path.parent} and read again")
    verify_file(path, checksums)
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CIFAR-10 batch ({exc})") from exc


def tree_root(folder: Path, sets: list[str]) -> Path | None:
    """`folder`, or else its first sub-folder, that holds a folder for every requested set."""
    if not folder.is_dir():
        return None
    for candidate in [folder, *list_dirs(folder)]:
        if all((candidate / s).is_dir() for s in sets):
            return candidate
    return None


def _workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _run_chunks(
    n: int,
    shape: tuple[int, int, int],
    fill: Callable[[np.ndarray, int, int], None],
    show_progress: bool,
    desc: str,
    chunk: int = 512,
) -> np.ndarray:
    """Fill a preallocated [n, *shape] array chunk by chunk on a thread pool, with a bar."""
    out = np.empty((n, *shape), dtype=np.uint8)
    starts = range(0, n, chunk)
    with (
        tqdm(total=n, desc=desc, unit="img", disable=not show_progress) as bar,
        ThreadPoolExecutor(_workers()) as pool,
    ):
        futures = [pool.submit(fill, out, s, min(s + chunk, n)) for s in starts]
        for future in futures:
            future.result()
            bar.update(min(chunk, n - bar.n))
    return out


def decode_images(
    items: Sequence[Path | bytes],
    names: Sequence[str],
    size: int,
    channels: int,
    show_progress: bool = True,
    desc: str = "decoding",
) -> np.ndarray:
    """Decode image files or bytes with PIL into uint8 [N, C, size, size]; `names` for errors.

    Each goes through `mamlscope.data.images.read_pixels`: 16-bit and alpha images are
    converted faithfully, an image too large or undecodable is a DataError naming it.

    Chunks of images go to a thread pool: PIL drops the GIL while decoding and resizing, which
    pays off for large images; for tiny ones (32x32 JPEG, ~0.1 ms each) PIL's own Python
    header parsing dominates, and chunking keeps our overhead to one loop step per image.
    """

    def fill(out: np.ndarray, start: int, stop: int) -> None:
        for i in range(start, stop):
            item = items[i]
            source = io.BytesIO(item) if isinstance(item, bytes) else item
            out[i] = images.read_pixels(source, name=names[i], size=size, channels=channels)

    with images.bomb_warnings_silenced():  # here, not in the threads: see its docstring
        return _run_chunks(len(items), (channels, size, size), fill, show_progress, desc)


def finish_arrays(
    images: np.ndarray, size: int, channels: int, show_progress: bool = True, desc: str = "resizing"
) -> np.ndarray:
    """uint8 [N, H, W] (grey) or [N, H, W, 3] (RGB) as [N, C, size, size], through PIL if needed."""
    grey = images.ndim == 3
    if images.shape[1:3] == (size, size) and (channels == 1) == grey:
        return np.ascontiguousarray(images[:, None] if grey else images.transpose(0, 3, 1, 2))

    def fill(out: np.ndarray, start: int, stop: int) -> None:
        for i in range(start, stop):
            out[i] = to_array(Image.fromarray(images[i]), size, channels)

    return _run_chunks(len(images), (channels, size, size), fill, show_progress, desc)
