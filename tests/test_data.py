"""Tests of rebar_jax.data against the real data sets.

The tests that read the paper data find it in the directory named by
$REBAR_JAX_DATA_DIR, or in ../shared/data beside the repository when that
exists (the development tree and CI); elsewhere they are skipped with the
reason. The TFDS test prepares binarized_mnist offline from a manual directory
written by `write_binarized_mnist_amat` (capped at $REBAR_JAX_TFDS_EXAMPLES rows
per split, default 2000; 0 prepares all 70000, which takes a minute more).
"""
import functools
import gzip
import hashlib
import importlib.resources
import os
import pathlib
import sys

import numpy as np
import pytest

from rebar_jax import data
from rebar_jax.data import datasets
import paper_data

DATA_DIR = paper_data.DATA_DIR
TFDS_EXAMPLES = int(os.environ.get("REBAR_JAX_TFDS_EXAMPLES", "2000"))
THREE_WAYS = ("data_source=local", "data_source=tfds", "data_source=embedded",
              'pip install -e ".[tfds]"', "python -m rebar_jax.data.prepare")


@pytest.fixture
def data_dir() -> pathlib.Path:
  return paper_data.require()  # per test: each one is counted


@pytest.fixture(scope="module")
def _binarized_mnist() -> data.Dataset:
  return data.load_dataset("binarized_mnist", "local", paper_data.require())


@pytest.fixture
def binarized_mnist(data_dir, _binarized_mnist) -> data.Dataset:
  return _binarized_mnist


def _byte_rows(x: np.ndarray) -> np.ndarray:
  """The rows of a 2-D array as sorted opaque byte strings (a multiset)."""
  x = np.ascontiguousarray(x)
  return np.sort(x.view(np.dtype((np.void, x.shape[1] * x.itemsize))).ravel())


def _row_multiset(x: np.ndarray) -> np.ndarray:
  """Sorted rows of a 0/1 array, each packed to bytes: order-free equality."""
  return _byte_rows(np.packbits(x.astype(np.uint8), axis=1))


def _assert_splits(ds, name, source, sizes, dynamic):
  assert (ds.name, ds.source, ds.dynamic_binarization) == (name, source,
                                                           dynamic)
  for split, n in zip(("train", "valid", "test"), sizes):
    x = getattr(ds, split)
    assert x.shape == (n, 784) and x.dtype == np.float32, (split, x.shape)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert not x.flags.writeable
  assert ds.data_dim == 784
  mean = ds.train_mean
  assert mean.shape == (784,) and mean.dtype == np.float32
  np.testing.assert_allclose(mean, ds.train.mean(axis=0, dtype=np.float64),
                             atol=1e-6)


# ---------------------------------------------------------------------------
# source="local".


def test_binarized_mnist_local_is_the_packbits_decode(data_dir,
                                                      binarized_mnist):
  ds = binarized_mnist
  _assert_splits(ds, "binarized_mnist", "local", (50000, 10000, 10000),
                 dynamic=False)
  with np.load(data_dir / "binarized_mnist.npz") as z:
    for split in ("train", "valid", "test"):
      x = getattr(ds, split)
      assert np.all((x == 0) | (x == 1))
      bits = np.unpackbits(z[split], axis=1)[:, :784]
      np.testing.assert_array_equal(x, bits.astype(np.float32))
  assert 0.1 < ds.train_mean.mean() < 0.16  # MNIST ink, ~0.13


def test_mnist_local_grey_levels_and_split(data_dir):
  ds = data.load_dataset("mnist", "local", data_dir)
  _assert_splits(ds, "mnist", "local", (55000, 5000, 10000), dynamic=True)
  assert not np.all((ds.train == 0) | (ds.train == 1))  # grey levels
  with np.load(data_dir / "mnist.npz") as z:
    official = z["train_images"].reshape(60000, 784).astype(np.float32) / 255
    np.testing.assert_array_equal(ds.train, official[:55000])
    np.testing.assert_array_equal(ds.valid, official[55000:])
    test = z["test_images"].reshape(10000, 784).astype(np.float32) / 255
    np.testing.assert_array_equal(ds.test, test)
  assert 0.1 < ds.train_mean.mean() < 0.16


def test_omniglot_local_resized_strokes_and_split(data_dir):
  ds = data.load_dataset("omniglot", "local", data_dir)
  _assert_splits(ds, "omniglot", "local", (23000, 1345, 8115), dynamic=True)
  # Strokes are the high values: little ink on average, none at the border.
  assert 0.05 < ds.train_mean.mean() < 0.3
  images = ds.train.reshape(-1, 28, 28)
  assert images[:, 0, :].mean() < 0.01 and images[:, :, 0].mean() < 0.01
  assert not np.all((ds.test == 0) | (ds.test == 1))  # antialiased grey
  # test = drawings 15..19 of every character, background alphabets first.
  with np.load(data_dir / "omniglot_background.npz") as z:
    first = z["images"][0]  # (20, 105, 105), True = paper
  expected = data.area_resize(~first[15:]).reshape(5, 784)
  np.testing.assert_array_equal(ds.test[:5], expected)
  # The ink is the resized drawing's: area averaging preserves the mean.
  np.testing.assert_allclose(ds.test[:5].mean(axis=1),
                             (~first[15:]).mean(axis=(1, 2)), rtol=1e-5)
  # Three disjoint sets of drawings: all 32460 images are distinct except
  # drawings 2 and 18 of background character 191, identical in the source.
  assert len(np.unique(np.concatenate(
      [_byte_rows(ds.train), _byte_rows(ds.valid), _byte_rows(ds.test)]))) == (
          23000 + 1345 + 8115 - 1)


def _write_idx(path: pathlib.Path, array: np.ndarray, compress: bool):
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(
      array.shape, ">i4").tobytes()
  raw = header + array.astype(np.uint8).tobytes()
  path.write_bytes(gzip.compress(raw) if compress else raw)


def test_fashion_mnist_local_reads_plain_and_gzipped_idx(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8)
  test = rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8)
  _write_idx(tmp_path / "train-images-idx3-ubyte", train, compress=False)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test, compress=True)
  np.testing.assert_array_equal(
      data.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), test)
  ds = data.load_dataset("fashion_mnist", "local", tmp_path)
  _assert_splits(ds, "fashion_mnist", "local", (55000, 5000, 10000),
                 dynamic=True)
  np.testing.assert_array_equal(
      ds.valid, train[55000:].reshape(5000, 784).astype(np.float32) / 255)
  np.testing.assert_array_equal(
      ds.test, test.reshape(10000, 784).astype(np.float32) / 255)


def test_area_resize_is_a_block_mean():
  x = np.random.default_rng(0).random((3, 8, 12)).astype(np.float32)
  out = data.area_resize(x, size=4)
  h = x.reshape(3, 4, 2, 4, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(out, h, rtol=1e-6)
  ones = data.area_resize(np.ones((2, 105, 105), bool))
  np.testing.assert_allclose(ones, 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# source="embedded".


def test_embedded_splits_deterministic_static_binarization():
  ds = data.load_dataset("binarized_mnist", "embedded")
  _assert_splits(ds, "binarized_mnist", "embedded", (4000, 500, 500),
                 dynamic=False)
  again = data.load_dataset("binarized_mnist", "embedded")
  other_seed = data.load_dataset("binarized_mnist", "embedded", seed=1)
  for split in ("train", "valid", "test"):
    x = getattr(ds, split)
    assert np.all((x == 0) | (x == 1))
    np.testing.assert_array_equal(x, getattr(again, split))
    assert not np.array_equal(x, getattr(other_seed, split))
  # b ~ Bernoulli(grey / 255): black pixels stay 0, full-white ones stay 1.
  grey = data.load_dataset("mnist", "embedded")
  _assert_splits(grey, "mnist", "embedded", (4000, 500, 500), dynamic=True)
  assert not np.all((grey.train == 0) | (grey.train == 1))
  for split in ("train", "valid", "test"):
    b, x = getattr(ds, split), getattr(grey, split)
    assert np.all(b[x == 0] == 0) and np.all(b[x == 1] == 1)
    assert abs(b.mean() - x.mean()) < 0.01
  # The three splits are disjoint sets of digits.
  rows = [_byte_rows(getattr(grey, s)) for s in ("train", "valid", "test")]
  assert len(np.unique(np.concatenate(rows))) == 5000


# ---------------------------------------------------------------------------
# source="tfds", offline from a manual directory (one test: TF is slow).


def test_tfds_binarized_mnist_from_manual_dir_matches_local(
    data_dir, binarized_mnist, tmp_path, monkeypatch):
  written = data.write_binarized_mnist_amat(data_dir / "binarized_mnist.npz",
                                            tmp_path / "manual")
  # Names and bytes are the ones TFDS registers for binarized_mnist.
  registered = {}
  tsv = importlib.resources.files("tensorflow_datasets").joinpath(
      "datasets/binarized_mnist/checksums.tsv").read_text()
  for line in tsv.strip().splitlines():
    _, size, sha256, filename = line.split("\t")
    registered[filename] = (int(size), sha256)
  assert {p.name for p in written.values()} == set(registered)
  for path in written.values():
    assert registered[path.name] == (
        path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())

  # TFDS's preparation of all 70000 examples (PNG-encoding each one) takes a
  # minute; by default it stops after TFDS_EXAMPLES rows per split (TFDS still
  # checks the sha256 of the whole files). REBAR_JAX_TFDS_EXAMPLES=0: all.
  tfds = datasets._import_tfds()  # pylint: disable=protected-access
  if TFDS_EXAMPLES:
    monkeypatch.setattr(tfds.download, "DownloadConfig", functools.partial(
        tfds.download.DownloadConfig, max_examples_per_split=TFDS_EXAMPLES))
  ds = data.load_dataset("binarized_mnist", "tfds", tmp_path / "manual",
                         tfds_data_dir=tmp_path / "tfds")
  sizes = (50000, 10000, 10000)
  _assert_splits(ds, "binarized_mnist", "tfds",
                 [min(n, TFDS_EXAMPLES or n) for n in sizes], dynamic=False)
  # TFDS stores examples in its own (fixed, hashed) order: the same rows as the
  # local loader's (the first rows of each file when capped), so the sorted
  # rows are exactly equal.
  for split in ("train", "valid", "test"):
    x = getattr(ds, split)
    np.testing.assert_array_equal(
        _row_multiset(x),
        _row_multiset(getattr(binarized_mnist, split)[:len(x)]))


# ---------------------------------------------------------------------------
# Errors.


def test_unknown_name_and_source_list_the_valid_ones():
  with pytest.raises(ValueError, match="Unknown dataset 'cifar10'") as e:
    data.load_dataset("cifar10", "local", "unused")
  assert all(name in str(e.value) for name in data.DATASETS)
  with pytest.raises(ValueError, match="Unknown data source 'web'") as e:
    data.load_dataset("mnist", "web", "unused")
  assert all(source in str(e.value) for source in data.SOURCES)


@pytest.mark.parametrize("name, files", [
    ("binarized_mnist", ["binarized_mnist.npz"]),
    ("mnist", ["mnist.npz"]),
    ("omniglot", ["omniglot_background.npz", "omniglot_evaluation.npz"]),
    ("fashion_mnist", ["train-images-idx3-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz"]),
])
def test_missing_local_file_names_dataset_path_and_three_ways(
    tmp_path, name, files):
  with pytest.raises(FileNotFoundError) as e:
    data.load_dataset(name, "local", tmp_path)
  message = str(e.value)
  assert repr(name) in message
  for f in files:
    assert str(tmp_path / f) in message
  for way in THREE_WAYS:
    assert way in message


def test_local_without_data_dir_is_an_error_not_a_fallback(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  with pytest.raises(FileNotFoundError, match="no data_dir given") as e:
    data.load_dataset("binarized_mnist", "local")
  assert all(way in str(e.value) for way in THREE_WAYS)


def test_local_data_dir_defaults_to_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  with pytest.raises(FileNotFoundError) as e:
    data.load_dataset("binarized_mnist", "local")
  assert str(tmp_path / "binarized_mnist.npz") in str(e.value)


def test_names_a_source_does_not_serve():
  with pytest.raises(ValueError, match="embedded serves"):
    data.load_dataset("omniglot", "embedded")
  with pytest.raises(ValueError, match="embedded serves"):
    data.load_dataset("fashion_mnist", "embedded")
  with pytest.raises(ValueError, match="tfds serves"):
    data.load_dataset("omniglot", "tfds")


def test_tfds_missing_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r'pip install -e "\.\[tfds\]"'):
    data.load_dataset("binarized_mnist", "tfds")


def test_dataset_checks_its_arrays():
  x = np.full((2, 784), 0.5, np.float32)
  with pytest.raises(ValueError, match="dynamic_binarization=True"):
    data.Dataset("toy", "local", x, x, x, dynamic_binarization=False)
  with pytest.raises(ValueError, match="float32"):
    data.Dataset("toy", "local", x.astype(np.float64), x, x, True)
  with pytest.raises(ValueError, match="outside"):
    data.Dataset("toy", "local", x * 255, x, x, True)
  ds = data.Dataset("toy", "local", x.copy(), x.copy(), x.copy(), True)
  with pytest.raises(ValueError, match="read-only"):
    ds.train[0, 0] = 1.0
