"""Malformed data files are refused with a message that names the problem.

Every case writes a file in place of a real one (no paper data needed) and
checks that loading it raises `DataError` naming the file, the array, what was
found and what is expected, and the command that writes a correct file.
"""
import gzip
import pathlib

import numpy as np
import pytest

from rebar_jax import data
from rebar_jax.data import formats

RNG = np.random.default_rng(0)


def _packed(rows: int) -> np.ndarray:
  return RNG.integers(0, 256, (rows, 98), dtype=np.uint8)


def _binarized(**overrides) -> dict[str, np.ndarray]:
  arrays = {"train": _packed(50000), "valid": _packed(10000),
            "test": _packed(10000)}
  return {**arrays, **overrides}


def _grey(rows: int) -> np.ndarray:
  return RNG.integers(0, 256, (rows, 28, 28), dtype=np.uint8)


def _mnist(**overrides) -> dict[str, np.ndarray]:
  arrays = {"train_images": _grey(60000),
            "train_labels": RNG.integers(0, 10, 60000, dtype=np.uint8),
            "test_images": _grey(10000),
            "test_labels": RNG.integers(0, 10, 10000, dtype=np.uint8)}
  return {**arrays, **overrides}


def _unpacked_bits(rows: int) -> np.ndarray:
  return RNG.integers(0, 2, (rows, 784), dtype=np.uint8)


# (case, dataset, file written, arrays or raw bytes, what the message names)
NPZ_CASES = [
    ("unpacked 0/1 bytes where packbits are expected", "binarized_mnist",
     _binarized(train=_unpacked_bits(50000)),
     ["'train'", "(50000, 784)", "expected (50000, 98)", "packbits"]),
    ("packbits-wide rows holding only 0/1 bytes", "binarized_mnist",
     _binarized(valid=RNG.integers(0, 2, (10000, 98), dtype=np.uint8)),
     ["'valid'", "unpacked pixels", "np.packbits"]),
    ("a 50-byte-wide file", "binarized_mnist",
     _binarized(test=RNG.integers(0, 256, (10000, 50), dtype=np.uint8)),
     ["'test'", "(10000, 50)", "expected (10000, 98)"]),
    ("a split of the wrong size", "binarized_mnist",
     _binarized(train=_packed(49000)),
     ["'train'", "(49000, 98)", "expected (50000, 98)"]),
    ("a wrong dtype", "binarized_mnist",
     _binarized(train=_packed(50000).astype(np.int32)),
     ["'train'", "dtype int32", "expected uint8"]),
    ("a missing array", "binarized_mnist",
     {"train": _packed(50000), "test": _packed(10000)},
     ["lacks the array(s) ['valid']", "holds ['train', 'test']"]),
    ("MNIST already scaled to [0, 1] (float)", "mnist",
     _mnist(train_images=_grey(60000).astype(np.float32) / 255),
     ["'train_images'", "dtype float32", "expected uint8", "grey levels"]),
    ("MNIST binarized to 0/1 bytes", "mnist",
     _mnist(test_images=(_grey(10000) > 127).astype(np.uint8)),
     ["'test_images'", "maximum is 1", "already divided by 255"]),
    ("MNIST images of the wrong width", "mnist",
     _mnist(train_images=RNG.integers(0, 256, (60000, 784), dtype=np.uint8)),
     ["'train_images'", "(60000, 784)", "expected (60000, 28, 28)"]),
    ("MNIST labels out of range", "mnist",
     _mnist(test_labels=np.full(10000, 12, np.uint8)),
     ["'test_labels'", "labels span 12..12"]),
]

FILE_OF = {"binarized_mnist": "binarized_mnist.npz", "mnist": "mnist.npz"}


@pytest.mark.parametrize("case, name, arrays, needles", NPZ_CASES,
                         ids=[c[0] for c in NPZ_CASES])
def test_malformed_npz_is_refused(tmp_path, case, name, arrays, needles):
  path = tmp_path / FILE_OF[name]
  np.savez(path, **arrays)
  with pytest.raises(data.DataError) as e:
    data.load_dataset(name, "local", tmp_path)
  message = str(e.value)
  for needle in [str(path), "python -m rebar_jax.data.prepare"] + needles:
    assert needle in message, (case, needle, message)


def _truncated(path: pathlib.Path) -> None:
  np.savez(path, **_binarized())
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])


def _flipped(path: pathlib.Path) -> None:
  np.savez(path, **_binarized())
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 3] ^= 0xFF  # inside the 'train' member: its CRC fails
  path.write_bytes(bytes(raw))


BROKEN_FILES = [
    ("an empty file", lambda p: p.write_bytes(b"")),
    ("a truncated archive", _truncated),
    ("a flipped byte", _flipped),
    ("not an archive at all", lambda p: p.write_text("train,valid,test\n")),
]


@pytest.mark.parametrize("case, write", BROKEN_FILES,
                         ids=[c[0] for c in BROKEN_FILES])
def test_unreadable_npz_names_the_file_and_format(tmp_path, case, write):
  path = tmp_path / "binarized_mnist.npz"
  write(path)
  with pytest.raises(data.DataError) as e:
    data.load_dataset("binarized_mnist", "local", tmp_path)
  message = str(e.value)
  for needle in (str(path), "truncated or corrupt", "train: uint8 (50000, 98)",
                 "python -m rebar_jax.data.prepare"):
    assert needle in message, (case, needle, message)


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(
      array.shape, ">i4").tobytes()
  return header + array.tobytes()


IDX_CASES = [
    ("a truncated IDX file", lambda: _idx(_grey(60000))[:-100],
     ["header says shape (60000, 28, 28)", "truncated"]),
    ("a damaged gzip stream", lambda: gzip.compress(_idx(_grey(10)))[:-9],
     ["damaged gzip"]),
    ("float pixels in an IDX header", lambda: bytes([0, 0, 0x0D, 3]),
     ["not a uint8 IDX file"]),
    ("the wrong number of images", lambda: _idx(_grey(5000)),
     ["(5000, 28, 28)", "expected (60000, 28, 28)"]),
]


@pytest.mark.parametrize("case, raw, needles", IDX_CASES,
                         ids=[c[0] for c in IDX_CASES])
def test_malformed_fashion_mnist_idx_is_refused(tmp_path, case, raw, needles):
  (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(raw())
  (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(_grey(10000)))
  with pytest.raises(data.DataError) as e:
    data.load_dataset("fashion_mnist", "local", tmp_path)
  for needle in ["train-images-idx3-ubyte"] + needles:
    assert needle in str(e.value), (case, needle, str(e.value))


def test_inverted_omniglot_is_refused():
  images = np.zeros((3, 20, 105, 105), bool)  # strokes True: inverted
  images[..., :5] = True
  fmt = formats.NPZ_FORMATS["omniglot_background.npz"]["images"]
  with pytest.raises(data.DataError, match="look inverted"):
    formats.check_array("omniglot_background.npz", "images", images, fmt,
                        published=False)
  formats.check_array("omniglot_background.npz", "images", ~images, fmt,
                      published=False)
  with pytest.raises(data.DataError, match=r"expected \(964, 20, 105, 105\)"):
    formats.check_array("omniglot_background.npz", "images", ~images, fmt)


def test_a_well_formed_file_loads(tmp_path):
  np.savez(tmp_path / "binarized_mnist.npz", **_binarized())
  ds = data.load_dataset("binarized_mnist", "local", tmp_path)
  assert ds.train.shape == (50000, 784) and ds.source == "local"
  assert len(ds.fingerprint) == 64
