r"""The on-disk formats of the data sets, and their validation.

`data_source=local` reads a directory of files in exactly these formats (the
files `python -m rebar_jax.data.prepare` writes):

| file                      | array          | dtype | shape               | values                          |
| ------------------------- | -------------- | ----- | ------------------- | ------------------------------- |
| binarized_mnist.npz       | train          | uint8 | (50000, 98)         | np.packbits rows of 784 pixels  |
|                           | valid, test    | uint8 | (10000, 98)         |                                 |
| mnist.npz                 | train_images   | uint8 | (60000, 28, 28)     | grey levels 0..255              |
|                           | train_labels   | uint8 | (60000,)            | 0..9                            |
|                           | test_images    | uint8 | (10000, 28, 28)     | grey levels 0..255              |
|                           | test_labels    | uint8 | (10000,)            | 0..9                            |
| omniglot_background.npz   | images         | bool  | (964, 20, 105, 105) | True = paper (white background) |
|                           | labels         | int   | (964, 20)           | character index                 |
| omniglot_evaluation.npz   | images, labels |       | (659, 20, ...)      | as above                        |
| Fashion-MNIST IDX files   | train / t10k   | uint8 | (60000 / 10000, 28, 28) | grey levels 0..255          |

The row counts are those of the published data sets: a file that claims to be
one of them (by its name) must have them. Anything else is refused with a
`DataError` naming the file, the array, what was found and what is expected,
never trained on: an unpacked 0/1 file where packbits are expected, grey
levels already divided by 255, an image width that is not 28 x 28, a truncated
archive, a missing array, a wrong dtype.
"""  # noqa: E501 (the table above: wider than 80 columns by nature)
import dataclasses
import gzip
import os
import pathlib
from typing import Callable, Optional
import zipfile

import numpy as np

PathLike = os.PathLike | str

PREPARE_HINT = ("Write it again with `python -m rebar_jax.data.prepare "
                "--data_dir=DIR` (downloads and checks the official files).")


class DataError(ValueError):
  """A data file that is not in the format its name promises."""


@dataclasses.dataclass(frozen=True)
class ArrayFormat:
  """One array of a data file.

  Attributes:
    dtype: the numpy dtype kind and size, e.g. "uint8", "bool", "int".
    shape: the published shape; the first axis may differ only when the
      caller does not ask for the published sizes.
    values: what the values are, for messages.
    check: values -> a problem (str) or None.
  """
  dtype: str
  shape: tuple[int, ...]
  values: str
  check: Optional[Callable[[np.ndarray], Optional[str]]] = None

  def describe(self) -> str:
    return f"{self.dtype} {self.shape}, {self.values}"


def _packbits(x: np.ndarray) -> Optional[str]:
  if x.size and int(x.max()) <= 1:
    return ("every byte is 0 or 1: these look like unpacked pixels, not "
            "np.packbits rows (pack them with np.packbits(bits, axis=1))")
  return None


def _grey_levels(x: np.ndarray) -> Optional[str]:
  if x.size and int(x.max()) <= 1:
    return (f"the maximum is {int(x.max())}: these look binarized or already "
            "divided by 255, not grey levels 0..255")
  return None


def _digit_labels(x: np.ndarray) -> Optional[str]:
  if x.size and not (int(x.min()) >= 0 and int(x.max()) <= 9):
    return f"labels span {int(x.min())}..{int(x.max())}, not 0..9"
  return None


def _paper_is_true(x: np.ndarray) -> Optional[str]:
  paper = float(np.mean(x[:16]))
  if paper < 0.5:
    return (f"only {paper:.0%} of the pixels are True: in the official "
            "Omniglot images the background (paper) is True and the strokes "
            "False; these look inverted")
  return None


_PACKED = "np.packbits rows of 784 binary pixels"
_GREY = "grey levels 0..255"

NPZ_FORMATS: dict[str, dict[str, ArrayFormat]] = {
    "binarized_mnist.npz": {
        "train": ArrayFormat("uint8", (50000, 98), _PACKED, _packbits),
        "valid": ArrayFormat("uint8", (10000, 98), _PACKED, _packbits),
        "test": ArrayFormat("uint8", (10000, 98), _PACKED, _packbits),
    },
    "mnist.npz": {
        "train_images": ArrayFormat("uint8", (60000, 28, 28), _GREY,
                                    _grey_levels),
        "train_labels": ArrayFormat("uint8", (60000,), "labels 0..9",
                                    _digit_labels),
        "test_images": ArrayFormat("uint8", (10000, 28, 28), _GREY,
                                   _grey_levels),
        "test_labels": ArrayFormat("uint8", (10000,), "labels 0..9",
                                   _digit_labels),
    },
    "omniglot_background.npz": {
        "images": ArrayFormat("bool", (964, 20, 105, 105),
                              "True = paper, False = stroke", _paper_is_true),
        "labels": ArrayFormat("int", (964, 20), "character indices"),
    },
    "omniglot_evaluation.npz": {
        "images": ArrayFormat("bool", (659, 20, 105, 105),
                              "True = paper, False = stroke", _paper_is_true),
        "labels": ArrayFormat("int", (659, 20), "character indices"),
    },
}

# Fashion-MNIST as distributed (IDX, plain or .gz); labels are not read.
IDX_FORMATS: dict[str, ArrayFormat] = {
    "train-images-idx3-ubyte": ArrayFormat("uint8", (60000, 28, 28), _GREY,
                                           _grey_levels),
    "t10k-images-idx3-ubyte": ArrayFormat("uint8", (10000, 28, 28), _GREY,
                                          _grey_levels),
}


def _dtype_ok(array: np.ndarray, dtype: str) -> bool:
  if dtype == "int":
    return np.issubdtype(array.dtype, np.integer)
  return array.dtype == np.dtype(dtype)


def check_array(path: PathLike, name: str, array: np.ndarray,
                fmt: ArrayFormat, published: bool = True) -> np.ndarray:
  """Returns `array` if it has the format `fmt`, else raises a DataError.

  Args:
    path: the file it came from (for the message).
    name: the array's name in the file.
    array: the array.
    fmt: its expected format.
    published: require the published row count (the first axis of
      fmt.shape); otherwise any number >= 1 of rows of the right shape.
  """
  where = f"{path}: array {name!r}"
  expected = fmt.shape if published else ("N",) + fmt.shape[1:]
  if not _dtype_ok(array, fmt.dtype):
    raise DataError(f"{where} has dtype {array.dtype}; expected "
                    f"{fmt.dtype} ({fmt.values}). {PREPARE_HINT}")
  shape_ok = (array.shape == fmt.shape if published else
              array.ndim == len(fmt.shape) and array.shape[1:] == fmt.shape[1:]
              and array.shape[0] >= 1)
  if not shape_ok:
    raise DataError(f"{where} has shape {array.shape}; expected "
                    f"{tuple(expected)} ({fmt.values}). {PREPARE_HINT}")
  problem = fmt.check(array) if fmt.check else None
  if problem:
    raise DataError(f"{where}: {problem}; expected {fmt.describe()}. "
                    f"{PREPARE_HINT}")
  return array


def read_npz(path: PathLike, published: bool = True) -> dict[str, np.ndarray]:
  """Reads and validates one of the `NPZ_FORMATS` files (chosen by its name).

  Raises:
    DataError: the file is not a readable .npz archive, lacks an array, or an
      array has another dtype, shape or range of values than its format.
  """
  path = pathlib.Path(path)
  formats = NPZ_FORMATS[path.name]
  expected = ", ".join(f"{k}: {f.describe()}" for k, f in formats.items())
  arrays = {}
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in formats if k not in z.files]
      if missing:
        raise DataError(
            f"{path} lacks the array(s) {missing} (it holds {z.files}); "
            f"expected {expected}. {PREPARE_HINT}")
      for name in formats:
        arrays[name] = z[name]
  except DataError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(
        f"{path} cannot be read as a .npz archive ({type(e).__name__}: {e}); "
        f"it is truncated or corrupt. Expected {expected}. {PREPARE_HINT}"
    ) from e
  for name, fmt in formats.items():
    check_array(path, name, arrays[name], fmt, published)
  return arrays


def read_idx(path: PathLike) -> np.ndarray:
  """Reads an IDX file (the MNIST / Fashion-MNIST format), plain or gzipped.

  Layout: two zero bytes, a type byte (0x08 = uint8), the number of dimensions
  k, k big-endian int32 sizes, then the data in C order.

  Raises:
    DataError: not a uint8 IDX file, or truncated.
  """
  path = pathlib.Path(path)
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":  # gzip magic
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise DataError(f"{path} is a damaged gzip file ({e}). "
                      f"{PREPARE_HINT}") from e
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
    raise DataError(f"{path} is not a uint8 IDX file (header {raw[:4]!r}). "
                    f"{PREPARE_HINT}")
  ndim = raw[3]
  if len(raw) < 4 + 4 * ndim:
    raise DataError(f"{path}: the IDX header is truncated. {PREPARE_HINT}")
  shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", ndim, offset=4))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise DataError(f"{path}: header says shape {shape} but holds "
                    f"{data.size} values; the file is truncated or corrupt. "
                    f"{PREPARE_HINT}")
  return data.reshape(shape)


def read_idx_images(path: PathLike, stem: str,
                    published: bool = True) -> np.ndarray:
  """`read_idx` checked against `IDX_FORMATS[stem]`."""
  return check_array(path, stem, read_idx(path), IDX_FORMATS[stem], published)
