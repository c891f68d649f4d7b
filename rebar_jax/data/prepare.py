r"""Downloads the official data files, checks them and writes the local files.

Usage::

  python -m rebar_jax.data.prepare --data_dir=DIR \
      [--datasets=binarized_mnist,mnist,omniglot,fashion_mnist] \
      [--mirror=URL] [--noprogress]

`--data_dir` defaults to $REBAR_JAX_DATA_DIR when that is set; `--datasets`
defaults to all four. Afterwards `load_dataset(name, "local", DIR)` (and
`data_source=local` with `data_dir=DIR`) reads them.

What is downloaded, from where (`REMOTE_FILES`), and what is written into DIR
(in the formats of `rebar_jax.data.formats`):

* binarized_mnist: binarized_mnist_{train,valid,test}.amat from
  http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/
  -> binarized_mnist.npz.
* mnist: {train,t10k}-images-idx3-ubyte.gz and {train,t10k}-labels-idx1-ubyte.gz
  from https://storage.googleapis.com/cvdf-datasets/mnist/ -> mnist.npz.
* omniglot: images_background.zip and images_evaluation.zip from
  https://github.com/brendenlake/omniglot/raw/master/python/
  -> omniglot_background.npz and omniglot_evaluation.npz.
* fashion_mnist: the same four IDX .gz names as MNIST, from
  http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ -> the four
  .gz files, as they are.

The arrays:

* binarized_mnist.npz: `train` (50000, 98), `valid` and `test` (10000, 98)
  uint8; each row is `np.packbits` of the 784 0/1 pixels of one line of the
  .amat file (784 space-separated "0"/"1", in file order).
* mnist.npz: `train_images` (60000, 28, 28), `train_labels` (60000,),
  `test_images` (10000, 28, 28), `test_labels` (10000,), uint8, the IDX
  contents as they are.
* omniglot_background.npz / omniglot_evaluation.npz: `images` (964 / 659, 20,
  105, 105) bool, the PNG pixels as they are (True = white paper, False =
  stroke), and `labels` (964 / 659, 20) int64, the character's index. The
  characters are ordered by alphabet name, then by character name within an
  alphabet; the 20 drawings of a character by file name.

Every file is downloaded into DIR/downloads/<dataset>/ as `<name>.part` (MNIST
and Fashion-MNIST share file names) and renamed to `<name>` once complete and
its sha256 matches the published one (the sums tensorflow-datasets registers).
An MNIST .gz whose own sha256 differs (for example re-compressed by a mirror)
is also accepted when the sha256 of its decompressed content is that of the
official uncompressed file. A `.part` left by an interrupted run is resumed
with an HTTP Range request (from zero when the server ignores Range); a dropped
connection is retried `RETRIES` times with a short backoff, resuming from the
bytes already on disk (the count starts afresh whenever bytes arrive); an HTTP
error such as 404 is not retried. DIR/downloads/ may be deleted once the files
are written.

The command is idempotent: a verified download is not fetched again, and a
written file that is present and valid is left alone ("up to date"), without
downloading anything for it. Written files are checked with
`rebar_jax.data.formats` in a temporary directory inside DIR and then moved in
place (`os.replace`), so DIR never holds a partial or invalid file.

`--mirror=URL` fetches every file from `URL/<name>` (e.g. an http:// server or
a file:///path/ directory holding the same file names) instead of its
canonical address; the same checksums are checked. MNIST and Fashion-MNIST
files have the same names, so one mirror serves one of the two: prepare the
other in a second run with its own --mirror (or none).

On failure the command exits with status 1 and one paragraph per failed file
on stderr, without a traceback (status 2 for a wrong command line); the other
data sets are still prepared:

* checksum mismatch: the bad download is moved aside to
  `DIR/downloads/<dataset>/<name>.corrupt`; the message names the URL, the
  expected and the found sha256, and the fix (run again; or download the file
  by hand to the exact path given; or use --mirror). Nothing is written for
  that data set.
* network failure (after the retries): the message names the URL, the cause
  and the fix (check the connection or proxy; --mirror; or put the file by
  hand at the exact path given).

The Python API is `prepare(datasets, data_dir, mirror=...)`; it raises
`PrepareError` for these failures.
"""
import gzip
import hashlib
import http.client
import io
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Callable, Mapping, NamedTuple, NoReturn, Optional, Sequence
import urllib.error
import urllib.request
import zipfile

from absl import app
from absl import flags
import numpy as np
import tqdm

from rebar_jax.data import datasets as datasets_lib
from rebar_jax.data import formats

PathLike = os.PathLike | str


class RemoteFile(NamedTuple):
  """One file to download.

  Attributes:
    name: its file name (in DIR/downloads/<dataset>/, and under a
      --mirror).
    url: its canonical address.
    size: its size in bytes as published (for the progress bar only).
    sha256: the sha256 of the file as served.
    content_sha256: for a .gz file, the sha256 of its decompressed content;
      a file with another `sha256` is accepted when its content has this one.
  """
  name: str
  url: str
  size: Optional[int]
  sha256: str
  content_sha256: Optional[str] = None


_LAROCHELLE = ("http://www.cs.toronto.edu/~larocheh/public/datasets/"
               "binarized_mnist/")
_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_OMNIGLOT = "https://github.com/brendenlake/omniglot/raw/master/python/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

REMOTE_FILES: dict[str, tuple[RemoteFile, ...]] = {
    # URLs, sizes and sha256: tensorflow_datasets/datasets/binarized_mnist/
    # checksums.tsv (also datasets_lib.BINARIZED_MNIST_AMAT_SHA256).
    "binarized_mnist": tuple(
        RemoteFile(f"binarized_mnist_{split}.amat",
                   f"{_LAROCHELLE}binarized_mnist_{split}.amat", size,
                   datasets_lib.BINARIZED_MNIST_AMAT_SHA256[split])
        for split, size in (("train", 78400000), ("valid", 15680000),
                            ("test", 15680000))),
    # URLs, sizes and sha256 of the .gz files: tensorflow_datasets/
    # url_checksums/mnist.txt. content_sha256: the sha256 of the official
    # uncompressed IDX files (47040016, 60008, 7840016 and 10008 bytes), as
    # published with yann.lecun.com's MNIST and reproduced by mnist.npz.
    "mnist": (
        RemoteFile(
            "train-images-idx3-ubyte.gz", _MNIST + "train-images-idx3-ubyte.gz",
            9912422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        RemoteFile(
            "train-labels-idx1-ubyte.gz", _MNIST + "train-labels-idx1-ubyte.gz",
            28881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz", _MNIST + "t10k-images-idx3-ubyte.gz",
            1648877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        RemoteFile(
            "t10k-labels-idx1-ubyte.gz", _MNIST + "t10k-labels-idx1-ubyte.gz",
            4542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
    # URLs, sizes and sha256: tensorflow_datasets/url_checksums/omniglot.txt.
    "omniglot": (
        RemoteFile(
            "images_background.zip", _OMNIGLOT + "images_background.zip",
            9464212,
            "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640"),
        RemoteFile(
            "images_evaluation.zip", _OMNIGLOT + "images_evaluation.zip",
            6462886,
            "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee"),
    ),
    # URLs, sizes and sha256: tensorflow_datasets/url_checksums/
    # fashion_mnist.txt.
    "fashion_mnist": (
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            _FASHION + "train-images-idx3-ubyte.gz", 26421880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        RemoteFile(
            "train-labels-idx1-ubyte.gz",
            _FASHION + "train-labels-idx1-ubyte.gz", 29515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            _FASHION + "t10k-images-idx3-ubyte.gz", 4422102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            _FASHION + "t10k-labels-idx1-ubyte.gz", 5148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ),
}

# The files written into DIR for each data set.
OUTPUT_FILES: dict[str, tuple[str, ...]] = {
    "binarized_mnist": ("binarized_mnist.npz",),
    "mnist": ("mnist.npz",),
    "omniglot": ("omniglot_background.npz", "omniglot_evaluation.npz"),
    "fashion_mnist": tuple(f"{stem}.gz" for stem in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
}

DOWNLOADS = "downloads"  # DIR/downloads/<dataset>/ holds the downloads
RETRIES = 3              # further attempts after a transient network error
RETRY_BACKOFF_S = 1.0    # sleep before retry k (k = 0, 1, ...): this * 2**k
TIMEOUT_S = 60.0         # socket timeout of one request
_CHUNK = 1 << 20
_TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)
_USER_AGENT = "rebar_jax-prepare/0.1 (Python urllib)"


class PrepareError(RuntimeError):
  """An expected failure (network, checksum, content), with its fix.

  Attributes:
    written: {dataset: files written} for the data sets that succeeded.
  """

  def __init__(self, message: str,
               written: Optional[dict[str, list[pathlib.Path]]] = None):
    super().__init__(message)
    self.written = written or {}


def _say(message: str) -> None:
  print(message, flush=True)


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      h.update(chunk)
  return h.hexdigest()


def _content_sha256(path: pathlib.Path) -> Optional[str]:
  """sha256 of the decompressed content of a gzip file; None if not gzip."""
  h = hashlib.sha256()
  try:
    with gzip.open(path, "rb") as f:
      for chunk in iter(lambda: f.read(_CHUNK), b""):
        h.update(chunk)
  except (OSError, EOFError):  # not gzip, or damaged
    return None
  return h.hexdigest()


def _verify(path: pathlib.Path, remote: RemoteFile) -> Optional[str]:
  """None if `path` is `remote`'s file, else what was found (for messages)."""
  found = _sha256(path)
  if found == remote.sha256:
    return None
  if remote.content_sha256 is not None:
    content = _content_sha256(path)
    if content == remote.content_sha256:
      return None
    return (f"found sha256 {found} (decompressed content: "
            f"{content or 'not a readable gzip file'})")
  return f"found sha256 {found}"


def _expected(remote: RemoteFile) -> str:
  if remote.content_sha256 is None:
    return f"expected sha256 {remote.sha256}"
  return (f"expected sha256 {remote.sha256} (or a .gz whose decompressed "
          f"content has sha256 {remote.content_sha256})")


def _source_url(remote: RemoteFile, mirror: Optional[str]) -> str:
  if mirror:
    return mirror.rstrip("/") + "/" + remote.name
  return remote.url


class _Transient(Exception):
  """A network error worth retrying."""


class _Permanent(Exception):
  """A network error not worth retrying (404, a malformed URL, ...)."""


def _fetch_once(url: str, part: pathlib.Path, remote: RemoteFile,
                progress: bool) -> None:
  """One request: appends to `part` (Range) or rewrites it from zero.

  Raises:
    _Transient: a connection error, or a transfer cut short.
    _Permanent: an HTTP error such as 404, a malformed URL, a missing file://.
  """
  have = part.stat().st_size if part.exists() else 0
  headers = {"User-Agent": _USER_AGENT}
  if have:
    headers["Range"] = f"bytes={have}-"
  try:
    request = urllib.request.Request(url, headers=headers)
    response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 416 and have:  # nothing past `have`: the .part is complete
      return
    error = _Transient if e.code in _TRANSIENT_HTTP else _Permanent
    raise error(f"HTTP error {e.code}: {e.reason}") from e
  except urllib.error.URLError as e:
    # A str reason: "unknown url type", "no host given", ...; a file://
    # path that is missing, a directory or unreadable.
    permanent = isinstance(e.reason, (str, FileNotFoundError,
                                      IsADirectoryError, PermissionError))
    raise (_Permanent if permanent else _Transient)(str(e.reason)) from e
  except ValueError as e:  # e.g. a URL without a scheme
    raise _Permanent(str(e)) from e
  except (OSError, http.client.HTTPException) as e:
    raise _Transient(f"{type(e).__name__}: {e}") from e
  with response:
    status = response.status or 200  # None for file:// URLs
    start = 0
    if status == 206:
      # Content-Range: bytes START-END/TOTAL
      content_range = response.headers.get("Content-Range", "")
      try:
        start = int(content_range.split()[1].split("-")[0])
      except (IndexError, ValueError):
        start = -1
      if start != have:
        part.unlink()
        raise _Transient(f"the server resumed at byte {start} of "
                         f"{content_range!r}, not at {have}; restarting")
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None else None
    total = start + length if length is not None else remote.size
    received = 0
    with open(part, "ab" if start else "wb") as f, tqdm.tqdm(
        total=total, initial=start, unit="B", unit_scale=True,
        unit_divisor=1024, desc=remote.name, file=sys.stderr, leave=False,
        disable=not progress) as bar:
      while True:
        try:
          chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as e:
          raise _Transient(f"{type(e).__name__}: {e}") from e
        if not chunk:
          break
        f.write(chunk)
        received += len(chunk)
        bar.update(len(chunk))
    if length is not None and received < length:
      raise _Transient(f"the connection closed after {start + received} of "
                       f"{start + length} bytes")


def _download(remote: RemoteFile, downloads: pathlib.Path,
              mirror: Optional[str], progress: bool) -> pathlib.Path:
  """Downloads and verifies one file into `downloads`; returns its path.

  Raises:
    PrepareError: the network failed after the retries, or the checksum does
      not match (the file is moved aside to `<name>.corrupt`).
  """
  path = downloads / remote.name
  part = downloads / (remote.name + ".part")
  url = _source_url(remote, mirror)
  if path.exists():  # downloaded by an earlier run, or put there by hand
    problem = _verify(path, remote)
    if problem is None:
      _say(f"  {remote.name}: already downloaded and verified")
      part.unlink(missing_ok=True)
      return path
    _corrupt(path, remote, url, problem, downloaded=False)
  if part.exists():
    _say(f"  {remote.name}: resuming {url} at byte {part.stat().st_size}")
  else:
    _say(f"  {remote.name}: downloading {url}")
  failures, attempts = 0, 0
  best = part.stat().st_size if part.exists() else 0  # bytes on disk
  while True:
    attempts += 1
    try:
      _fetch_once(url, part, remote, progress)
      break
    except _Transient as e:
      cause = str(e)
    except _Permanent as e:
      raise _network_error(url, path, str(e), attempts) from None
    size = part.stat().st_size if part.exists() else 0
    if size > best:  # progress: the retry budget starts afresh
      best, failures = size, 0
    else:
      failures += 1
    if failures > RETRIES:
      raise _network_error(url, path, cause, attempts)
    _say(f"  {remote.name}: {cause}; retrying")
    time.sleep(RETRY_BACKOFF_S * 2 ** max(failures - 1, 0))
  problem = _verify(part, remote)
  if problem is not None:
    _corrupt(part, remote, url, problem)
  os.replace(part, path)
  return path


def _corrupt(bad: pathlib.Path, remote: RemoteFile, url: str, problem: str,
             downloaded: bool = True) -> NoReturn:
  """Moves `bad` aside to `<name>.corrupt` and raises the PrepareError."""
  path = bad.with_name(remote.name)
  aside = bad.with_name(remote.name + ".corrupt")
  os.replace(bad, aside)
  what = (f"for {url}" if downloaded else
          f"for {path}, found in place of the download of {url}")
  raise PrepareError(
      f"Checksum mismatch {what}: {_expected(remote)}, {problem}. The file "
      f"is damaged or is not the official one; it was moved aside to {aside}. "
      f"Fix: run the command again to download it afresh; or download {url} "
      f"by hand to exactly {path} and run the command again; or pass "
      "--mirror=URL naming a server that serves the same file names "
      f"(URL/{remote.name}).")


def _network_error(url: str, path: pathlib.Path, cause: str,
                   attempts: int) -> PrepareError:
  if url.startswith("file:"):
    return PrepareError(
        f"Could not read {url} ({cause}; {attempts} attempt"
        f"{'s' if attempts > 1 else ''}). Fix: put the file {path.name} "
        "(the file itself, not a directory) in the --mirror directory; or "
        f"download it by hand to exactly {path} and run the command again.")
  return PrepareError(
      f"Could not download {url} ({cause}; {attempts} attempt"
      f"{'s' if attempts > 1 else ''}). Fix: check the internet connection "
      "or the proxy ($https_proxy / $http_proxy) and run the command again "
      "(it resumes what is already downloaded); or pass --mirror=URL naming a "
      f"server that serves the same file names (URL/{path.name}); or "
      f"download the file by hand from {url} to exactly {path} and run the "
      "command again.")


# ----------------------------------------------------------------------------
# Conversions: downloads -> arrays.


def _read_amat(path: pathlib.Path) -> np.ndarray:
  """A Larochelle .amat file -> (N, 784) uint8 of 0/1.

  Raises:
    DataError: a line is not 784 space-separated "0"/"1" and "\\n".
  """
  width = 2 * datasets_lib.DATA_DIM
  raw = np.frombuffer(path.read_bytes(), np.uint8)
  rows = raw.size // width
  text = raw[:rows * width].reshape(rows, width)
  values = text[:, 0::2]
  ok = ((values == ord("0")) | (values == ord("1"))).all(axis=1)
  ok &= (text[:, 1:-1:2] == ord(" ")).all(axis=1) & (text[:, -1] == ord("\n"))
  if raw.size % width or not rows or not ok.all():
    line = int(np.argmin(ok)) + 1 if rows and not ok.all() else rows + 1
    raise formats.DataError(
        f"{path}: line {line} is not {datasets_lib.DATA_DIM} space-separated "
        "'0'/'1' characters ending in '\\n' (the Larochelle .amat layout).")
  return values - np.uint8(ord("0"))


def _binarized_mnist(files: dict[str, pathlib.Path]
                     ) -> dict[str, dict[str, np.ndarray]]:
  arrays = {}
  for split in ("train", "valid", "test"):
    bits = _read_amat(files[f"binarized_mnist_{split}.amat"])
    arrays[split] = np.packbits(bits, axis=1)
  return {"binarized_mnist.npz": arrays}


def _idx_pair(images: pathlib.Path, labels: pathlib.Path
              ) -> tuple[np.ndarray, np.ndarray]:
  x, y = formats.read_idx(images), formats.read_idx(labels)
  if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
    raise formats.DataError(
        f"{images} holds {x.shape} and {labels} holds {y.shape}; expected "
        "(N, 28, 28) images and (N,) labels.")
  return x, y


def _mnist(files: dict[str, pathlib.Path]) -> dict[str, dict[str, np.ndarray]]:
  arrays = {}
  for split, stem in (("train", "train"), ("test", "t10k")):
    images, labels = _idx_pair(files[f"{stem}-images-idx3-ubyte.gz"],
                               files[f"{stem}-labels-idx1-ubyte.gz"])
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
  return {"mnist.npz": arrays}


def _decode_png(data: bytes, where: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as image:
    if image.mode == "1":
      pixels = np.asarray(image, dtype=bool)
    else:
      pixels = np.asarray(image.convert("L")) >= 128
  if pixels.shape != (105, 105):
    raise formats.DataError(f"{where}: a {pixels.shape} image; Omniglot "
                            "images are 105 x 105.")
  return pixels


def _read_omniglot_zip(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """images_<half>.zip -> images (C, 20, 105, 105) bool, labels (C, 20)."""
  tree: dict[str, dict[str, list[str]]] = {}
  with zipfile.ZipFile(path) as z:
    for name in z.namelist():
      parts = name.split("/")
      if (not name.lower().endswith(".png") or len(parts) != 4 or
          any(p.startswith((".", "__MACOSX")) for p in parts)):
        continue
      _, alphabet, character, _ = parts
      tree.setdefault(alphabet, {}).setdefault(character, []).append(name)
    characters = [sorted(tree[a][c]) for a in sorted(tree)
                  for c in sorted(tree[a])]
    if not characters:
      raise formats.DataError(
          f"{path} holds no <top>/<alphabet>/<character>/<drawing>.png files.")
    wrong = [c[0].rsplit("/", 1)[0] for c in characters if len(c) != 20]
    if wrong:
      raise formats.DataError(
          f"{path}: {len(wrong)} character(s), e.g. {wrong[0]}, do not have "
          "20 drawings.")
    _say(f"  {path.name}: decoding {20 * len(characters)} PNG images")
    images = np.empty((len(characters), 20, 105, 105), bool)
    for i, drawings in enumerate(characters):
      for j, name in enumerate(drawings):
        images[i, j] = _decode_png(z.read(name), f"{path}:{name}")
  labels = np.repeat(np.arange(len(characters), dtype=np.int64)[:, None], 20,
                     axis=1)
  return images, labels


def _omniglot(files: dict[str, pathlib.Path]
              ) -> dict[str, dict[str, np.ndarray]]:
  out = {}
  for half in ("background", "evaluation"):
    images, labels = _read_omniglot_zip(files[f"images_{half}.zip"])
    out[f"omniglot_{half}.npz"] = {"images": images, "labels": labels}
  return out


_CONVERTERS: dict[str, Callable[[dict[str, pathlib.Path]],
                                dict[str, dict[str, np.ndarray]]]] = {
    "binarized_mnist": _binarized_mnist,
    "mnist": _mnist,
    "omniglot": _omniglot,
}


# ----------------------------------------------------------------------------
# Outputs.


def _check_output(path: pathlib.Path, dataset: str, published: bool,
                  remote: Optional[RemoteFile] = None) -> None:
  """Raises DataError unless `path` is a valid output file."""
  if dataset != "fashion_mnist":
    formats.read_npz(path, published=published)
    return
  stem = path.name[:-len(".gz")]
  if stem in formats.IDX_FORMATS:
    formats.read_idx_images(path, stem, published=published)
  else:
    labels = formats.read_idx(path)
    if labels.ndim != 1 or not labels.size or labels.max() > 9:
      raise formats.DataError(f"{path}: {labels.shape} values up to "
                              f"{labels.max(initial=0)}; expected labels 0..9.")
  if remote is not None and _verify(path, remote) is not None:
    raise formats.DataError(f"{path} is not the file of {remote.url}.")


def _up_to_date(dataset: str, data_dir: pathlib.Path, published: bool,
                remotes: dict[str, RemoteFile]) -> bool:
  for name in OUTPUT_FILES[dataset]:
    path = data_dir / name
    if not path.is_file():
      return False
    try:
      _check_output(path, dataset, published, remotes.get(name))
    except formats.DataError as e:
      _say(f"  {path} is present but not valid, so it is written again: {e}")
      return False
  return True


def _save_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """`np.savez_compressed` at zlib level 1: twice as fast, files ~15% larger.
  """
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
    for name, array in arrays.items():
      with z.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def _write_outputs(dataset: str, files: dict[str, pathlib.Path],
                   data_dir: pathlib.Path, published: bool,
                   remotes: dict[str, RemoteFile]) -> list[pathlib.Path]:
  """Writes and checks the outputs in a temporary directory, then moves them."""
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=".prepare-", dir=data_dir))
  try:
    staged = []
    if dataset == "fashion_mnist":
      for name in OUTPUT_FILES[dataset]:
        shutil.copyfile(files[name], tmp / name)
        staged.append(tmp / name)
    else:
      for name, arrays in _CONVERTERS[dataset](files).items():
        _save_npz(tmp / name, arrays)
        staged.append(tmp / name)
    for path in staged:
      _check_output(path, dataset, published, remotes.get(path.name))
    written = []
    for path in staged:
      os.replace(path, data_dir / path.name)
      written.append(data_dir / path.name)
      _say(f"  wrote {data_dir / path.name}")
    return written
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def prepare(datasets: Sequence[str], data_dir: PathLike, *,
            mirror: Optional[str] = None,
            remote_files: Mapping[str, Sequence[RemoteFile]] = REMOTE_FILES,
            published_sizes: bool = True,
            progress: bool = True) -> dict[str, list[pathlib.Path]]:
  """Downloads, verifies and writes the local files of `datasets`.

  Each data set is handled on its own: one that fails does not stop the
  others, and the failures are raised together at the end.

  Args:
    datasets: names among `datasets_lib.DATASETS`.
    data_dir: the directory to write into (created if absent); downloads go
      to its subdirectory `downloads/<dataset>/`.
    mirror: fetch every file from `mirror/<file name>` instead of its URL.
    remote_files: the files to download per data set (default
      `REMOTE_FILES`); the tests pass their own.
    published_sizes: require the published number of examples in the written
      files (False accepts any, for small test files).
    progress: show a progress bar per download (only when stderr is a
      terminal).

  Returns:
    {dataset: the files written into data_dir by this call}; an empty list
    for a data set whose files were already present and valid.

  Raises:
    ValueError: an unknown data set name.
    PrepareError: a download failed or did not match its checksum, or its
      content is not in the expected format; the message names the URL and
      the fix, and `.written` holds what the other data sets wrote.
  """
  unknown = [d for d in datasets if d not in datasets_lib.DATASETS]
  if unknown:
    raise ValueError(f"Unknown data set(s) {unknown}; choose among "
                     f"{', '.join(datasets_lib.DATASETS)}.")
  data_dir = pathlib.Path(data_dir).expanduser()
  if data_dir.exists() and not data_dir.is_dir():
    raise PrepareError(f"--data_dir={str(data_dir)!r} is a file; give a "
                       "directory to write the data files into (it is "
                       "created if absent).")
  if mirror and "://" not in mirror:
    where = pathlib.Path(mirror).expanduser().absolute()
    raise PrepareError(
        f"--mirror={mirror!r} is not a URL; "
        + (f"for this directory of downloaded files pass "
           f"--mirror={where.as_uri()}" if where.is_dir() else
           "pass an http(s):// URL, or file:///path/to/dir for a directory "
           "of downloaded files") + ".")
  data_dir.mkdir(parents=True, exist_ok=True)
  progress = progress and sys.stderr.isatty()
  written: dict[str, list[pathlib.Path]] = {}
  errors: list[str] = []
  for dataset in dict.fromkeys(datasets):  # in order, without repeats
    remotes = {r.name: r for r in remote_files[dataset]}
    _say(f"{dataset}:")
    if _up_to_date(dataset, data_dir, published_sizes, remotes):
      names = ", ".join(OUTPUT_FILES[dataset])
      _say(f"  up to date ({names} in {data_dir})")
      written[dataset] = []
      continue
    downloads = data_dir / DOWNLOADS / dataset
    downloads.mkdir(parents=True, exist_ok=True)
    files, failed = {}, []
    for remote in remotes.values():
      try:
        files[remote.name] = _download(remote, downloads, mirror, progress)
      except PrepareError as e:
        failed.append(str(e))
    if failed:
      errors.extend(failed)
      _say(f"  failed: nothing written for {dataset}")
      continue
    try:
      written[dataset] = _write_outputs(dataset, files, data_dir,
                                        published_sizes, remotes)
    except formats.DataError as e:
      errors.append(
          f"The downloads of {dataset} match their checksums but cannot be "
          f"converted: {e} Nothing was written for {dataset}.")
  if errors:
    raise PrepareError("\n\n".join(errors), written)
  return written


# ----------------------------------------------------------------------------
# Command line.

_FLAGS: dict[str, flags.FlagHolder] = {}


def _define_flags() -> None:
  """Defines the command's flags (only when run as a command)."""
  _FLAGS["datasets"] = flags.DEFINE_list(
      "datasets", list(datasets_lib.DATASETS),
      "Data sets to prepare, comma-separated, among "
      f"{','.join(datasets_lib.DATASETS)}.")
  _FLAGS["data_dir"] = flags.DEFINE_string(
      "data_dir", None,
      f"Directory to write into (default: ${datasets_lib.DATA_DIR_ENV}).")
  _FLAGS["mirror"] = flags.DEFINE_string(
      "mirror", None,
      "Fetch every file from MIRROR/<file name> instead of its canonical URL "
      "(the same checksums are checked).")
  _FLAGS["progress"] = flags.DEFINE_bool(
      "progress", True,
      "Progress bars (only when stderr is a terminal); --noprogress hides "
      "them.")


def _fail(message: str, status: int = 1) -> NoReturn:
  print(f"prepare: error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; use --datasets, --data_dir and "
          "--mirror.", 2)
  data_dir = (_FLAGS["data_dir"].value or
              os.environ.get(datasets_lib.DATA_DIR_ENV))
  if not data_dir:
    _fail(f"--data_dir is required (or set ${datasets_lib.DATA_DIR_ENV}): the "
          "directory to write the data files into.", 2)
  names = [d.strip() for d in _FLAGS["datasets"].value if d.strip()]
  unknown = [d for d in names if d not in datasets_lib.DATASETS]
  if unknown or not names:
    _fail(f"--datasets: unknown data set(s) {unknown or names}; choose among "
          f"{','.join(datasets_lib.DATASETS)}.", 2)
  try:
    prepare(names, data_dir, mirror=_FLAGS["mirror"].value,
            progress=_FLAGS["progress"].value)
  except PrepareError as e:
    _fail(str(e))
  except OSError as e:  # e.g. a full disk, or data_dir not writable
    _fail(f"{e}")
  except KeyboardInterrupt:
    _fail("interrupted; run the command again to resume the downloads.", 130)
  _say(f"Done: load with rebar_jax.data.load_dataset(name, 'local', "
       f"{str(data_dir)!r}).")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
