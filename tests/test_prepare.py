"""Tests of `python -m rebar_jax.data.prepare`, offline.

A local HTTP server (127.0.0.1, in a daemon thread) stands in for the official
hosts: it serves small files in the real formats, generated here (.amat lines,
IDX .gz files, Omniglot zips of 105 x 105 1-bit PNGs), answers Range requests,
logs every request and can cut a file's first transfer short. Their checksums
are computed here and passed as `remote_files`. The command-line test serves
the official binarized MNIST and MNIST files regenerated from the paper data
(skipped without it) and checks them against the real checksums.
"""
import gzip
import hashlib
import http.server
import io
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from typing import Optional

import numpy as np
from PIL import Image
import pytest

from rebar_jax import data
from rebar_jax.data import formats
from rebar_jax.data import prepare as prepare_lib
import paper_data

RNG = np.random.default_rng(0)
ALL = ("binarized_mnist", "mnist", "omniglot", "fashion_mnist")


# ----------------------------------------------------------------------------
# The server.


class FileServer:
  """Serves `files` ({name: bytes}) at `url`/<name>, with Range support.

  Attributes:
    files: what is served.
    log: (name, Range header or None) of every request, in order.
    cut: {name: n}: the next transfer of `name` stops after n body bytes and
      the connection is closed (an interrupted download).
    ignore_range: answer 200 with the whole file even to a Range request.
  """

  def __init__(self):
    self.files: dict[str, bytes] = {}
    self.log: list[tuple[str, Optional[str]]] = []
    self.cut: dict[str, int] = {}
    self.ignore_range = False
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      """GET with `Range: bytes=N-`."""

      def do_GET(self):  # pylint: disable=invalid-name
        name = self.path.lstrip("/")
        range_ = self.headers.get("Range")
        server.log.append((name, range_))
        body = server.files.get(name)
        if body is None:
          self.send_error(404)
          return
        start = 0
        if range_ and not server.ignore_range:
          start = int(re.fullmatch(r"bytes=(\d+)-", range_).group(1))
          if start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
          self.send_response(206)
          self.send_header("Content-Range",
                           f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
          self.send_response(200)
        body = body[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = server.cut.pop(name, None)
        if cut is not None:
          body = body[:cut]
          self.close_connection = True
        for i in range(0, len(body), 1 << 20):
          self.wfile.write(body[i:i + (1 << 20)])

      def log_message(self, *args):  # quiet
        pass

    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._thread = threading.Thread(target=self._httpd.serve_forever,
                                    args=(0.02,), daemon=True)
    self._thread.start()

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self._httpd.server_port}"

  def requests(self, name: str) -> list[Optional[str]]:
    """The Range headers of the requests for `name`."""
    return [r for n, r in self.log if n == name]

  def close(self):
    self._httpd.shutdown()
    self._httpd.server_close()


@pytest.fixture
def server():
  s = FileServer()
  yield s
  s.close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
  monkeypatch.setattr(prepare_lib, "RETRY_BACKOFF_S", 0.0)


# ----------------------------------------------------------------------------
# Fixture files in the real formats.


def _sha(b: bytes) -> str:
  return hashlib.sha256(b).hexdigest()


def _amat(bits: np.ndarray) -> bytes:
  text = np.full((len(bits), 2 * 784), ord(" "), np.uint8)
  text[:, 0::2] = bits + ord("0")
  text[:, -1] = ord("\n")
  return text.tobytes()


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, array.ndim])
  return header + np.asarray(array.shape, ">i4").tobytes() + array.tobytes()


def _png(pixels: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, "PNG")  # bool -> mode "1"
  return out.getvalue()


# Omniglot: {alphabet: {character: first drawing id}}, deliberately not in
# sorted order; each character has 20 drawings <id>_01.png .. <id>_20.png.
OMNIGLOT = {
    "background": {"Latin": {"character02": 102, "character01": 101},
                   "Greek": {"character03": 203, "character01": 201,
                             "character02": 202}},
    "evaluation": {"Tibetan": {"character01": 301, "character10": 310},
                   "Angelic": {"character02": 402, "character01": 401}},
}


def _omniglot(half: str) -> tuple[bytes, np.ndarray]:
  """The zip of one half and its expected images (C, 20, 105, 105)."""
  top = f"images_{half}"
  expected = []
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as z:
    z.writestr(f"{top}/", b"")
    for alphabet, characters in OMNIGLOT[half].items():
      z.writestr(f"{top}/{alphabet}/", b"")
      for character, ident in characters.items():
        z.writestr(f"{top}/{alphabet}/{character}/", b"")
        drawings = {}
        for k in RNG.permutation(20) + 1:  # written in shuffled order
          pixels = RNG.random((105, 105)) < 0.85  # True = paper
          name = f"{ident:04d}_{k:02d}.png"
          z.writestr(f"{top}/{alphabet}/{character}/{name}", _png(pixels))
          drawings[name] = pixels
        expected.append((alphabet, character,
                         np.stack([drawings[n] for n in sorted(drawings)])))
  expected.sort(key=lambda t: (t[0], t[1]))
  return out.getvalue(), np.stack([e[2] for e in expected])


@pytest.fixture(scope="module")
def fixtures():
  """{dataset: {file name: bytes served}}, the expected arrays, the table."""
  served, expected, official = {}, {}, {}
  bits = {s: RNG.integers(0, 2, (n, 784), dtype=np.uint8)
          for s, n in (("train", 40), ("valid", 20), ("test", 20))}
  served["binarized_mnist"] = {f"binarized_mnist_{s}.amat": _amat(b)
                               for s, b in bits.items()}
  expected["binarized_mnist"] = bits
  for dataset in ("mnist", "fashion_mnist"):
    arrays = {}
    for stem, n in (("train", 40), ("t10k", 20)):
      arrays[f"{stem}-images-idx3-ubyte"] = RNG.integers(
          0, 256, (n, 28, 28), dtype=np.uint8)
      arrays[f"{stem}-labels-idx1-ubyte"] = RNG.integers(
          0, 10, n, dtype=np.uint8)
    expected[dataset] = arrays
    raw = {f"{stem}.gz": _idx(a) for stem, a in arrays.items()}
    served[dataset] = {n: gzip.compress(r, 1, mtime=0) for n, r in raw.items()}
    if dataset == "mnist":
      # As from a mirror that re-compressed the files: the "official" .gz
      # differs, and the sha256 of the content is what accepts them.
      official[dataset] = {n: (gzip.compress(r, 9, mtime=1), r)
                           for n, r in raw.items()}
  served["omniglot"] = {}
  for half in ("background", "evaluation"):
    zipped, images = _omniglot(half)
    served["omniglot"][f"images_{half}.zip"] = zipped
    expected["omniglot", half] = images
  return served, expected, official


def remote_files(base: str, fixtures_
                 ) -> dict[str, list[prepare_lib.RemoteFile]]:
  """The table of `fixtures_` served at `base`."""
  served, _, official = fixtures_
  table = {}
  for dataset, files in served.items():
    table[dataset] = []
    for name, body in files.items():
      sha, content = _sha(body), None
      if dataset in official:
        gz, raw = official[dataset][name]
        assert _sha(gz) != sha
        sha, content = _sha(gz), _sha(raw)
      table[dataset].append(prepare_lib.RemoteFile(
          name, f"{base}/{name}", len(body), sha, content))
  return table


def serve_all(server: FileServer, fixtures_) -> None:
  for files in fixtures_[0].values():
    for name, body in files.items():
      if name in server.files and server.files[name] != body:
        # MNIST and Fashion-MNIST share file names: Fashion-MNIST is served
        # under "fashion/<name>".
        server.files["fashion/" + name] = body
      else:
        server.files[name] = body


def table_for(server: FileServer, fixtures_):
  table = remote_files(server.url, fixtures_)
  table["fashion_mnist"] = [
      r._replace(url=f"{server.url}/fashion/{r.name}")
      for r in table["fashion_mnist"]]
  return table


def run_prepare(server, fixtures_, out, names=ALL, **kwargs):
  serve_all(server, fixtures_)
  return prepare_lib.prepare(list(names), out,
                             remote_files=table_for(server, fixtures_),
                             published_sizes=False, progress=False, **kwargs)


def check_outputs(out: pathlib.Path, fixtures_, names=ALL) -> None:
  """Every written file is valid and holds exactly the fixture content."""
  served, expected, _ = fixtures_
  if "binarized_mnist" in names:
    z = formats.read_npz(out / "binarized_mnist.npz", published=False)
    for split, bits in expected["binarized_mnist"].items():
      assert z[split].dtype == np.uint8 and z[split].shape == (len(bits), 98)
      np.testing.assert_array_equal(
          np.unpackbits(z[split], axis=1)[:, :784], bits)
  if "mnist" in names:
    z = formats.read_npz(out / "mnist.npz", published=False)
    for split, stem in (("train", "train"), ("test", "t10k")):
      for kind, idx in (("images", "images-idx3"), ("labels", "labels-idx1")):
        np.testing.assert_array_equal(
            z[f"{split}_{kind}"], expected["mnist"][f"{stem}-{idx}-ubyte"])
  if "omniglot" in names:
    for half in ("background", "evaluation"):
      z = formats.read_npz(out / f"omniglot_{half}.npz", published=False)
      images = expected["omniglot", half]
      assert z["images"].dtype == bool and z["labels"].dtype == np.int64
      np.testing.assert_array_equal(z["images"], images)
      np.testing.assert_array_equal(
          z["labels"], np.arange(len(images))[:, None].repeat(20, axis=1))
  if "fashion_mnist" in names:
    for name, body in served["fashion_mnist"].items():
      assert (out / name).read_bytes() == body
    for stem in formats.IDX_FORMATS:
      np.testing.assert_array_equal(
          formats.read_idx_images(out / f"{stem}.gz", stem, published=False),
          expected["fashion_mnist"][stem])


# ----------------------------------------------------------------------------
# Cases.


def test_prepares_all_four(server, fixtures, tmp_path):
  out = tmp_path / "data"
  written = run_prepare(server, fixtures, out)
  assert written == {d: [out / f for f in prepare_lib.OUTPUT_FILES[d]]
                     for d in ALL}
  check_outputs(out, fixtures)
  # Nothing but the outputs and the downloads (no temporary files left).
  assert sorted(p.name for p in out.iterdir()) == sorted(
      [f for d in ALL for f in prepare_lib.OUTPUT_FILES[d]] + ["downloads"])
  assert sorted(p.name for p in (out / "downloads").iterdir()) == sorted(ALL)
  assert not list((out / "downloads").rglob("*.part"))


def test_omniglot_order_is_by_name():
  # The order `_omniglot` expects, spelled out on the zip: alphabets, then
  # characters, by name; drawings by file name.
  zipped, images = _omniglot("evaluation")
  order = [("Angelic", "character01", 401), ("Angelic", "character02", 402),
           ("Tibetan", "character01", 301), ("Tibetan", "character10", 310)]
  with zipfile.ZipFile(io.BytesIO(zipped)) as z:
    for i, (alphabet, character, ident) in enumerate(order):
      for j in (0, 19):
        png = z.read(f"images_evaluation/{alphabet}/{character}/"
                     f"{ident:04d}_{j + 1:02d}.png")
        with Image.open(io.BytesIO(png)) as image:
          np.testing.assert_array_equal(np.asarray(image), images[i, j])


def test_checksum_mismatch(server, fixtures, tmp_path):
  out = tmp_path / "data"
  serve_all(server, fixtures)
  name = "t10k-labels-idx1-ubyte.gz"
  good = server.files[name]
  server.files[name] = good[:-1] + bytes([good[-1] ^ 0xFF])
  table = table_for(server, fixtures)
  remote = next(r for r in table["mnist"] if r.name == name)
  with pytest.raises(prepare_lib.PrepareError) as e:
    prepare_lib.prepare(["mnist", "binarized_mnist"], out, remote_files=table,
                        published_sizes=False, progress=False)
  message = str(e.value)
  downloads = out / "downloads" / "mnist"
  for needle in (remote.url, remote.sha256, remote.content_sha256,
                 _sha(server.files[name]), "run the command again",
                 f"by hand to exactly {downloads / name}", "--mirror=URL",
                 str(downloads / f"{name}.corrupt")):
    assert needle in message
  assert "\n" not in message  # one paragraph
  assert not (out / "mnist.npz").exists()
  assert (downloads / f"{name}.corrupt").read_bytes() == server.files[name]
  assert not (downloads / name).exists()
  # The other data set was still prepared.
  assert e.value.written == {"binarized_mnist": [out / "binarized_mnist.npz"]}
  check_outputs(out, fixtures, ["binarized_mnist"])
  # Once the server is fixed, running again fetches only that file.
  server.files[name] = good
  server.log.clear()
  assert prepare_lib.prepare(
      ["mnist"], out, remote_files=table, published_sizes=False,
      progress=False) == {"mnist": [out / "mnist.npz"]}
  assert [n for n, _ in server.log] == [name]
  check_outputs(out, fixtures, ["mnist"])


def test_interrupted_transfer_is_resumed(server, fixtures, tmp_path):
  out = tmp_path / "data"
  serve_all(server, fixtures)
  name = "binarized_mnist_train.amat"
  half = len(server.files[name]) // 2
  server.cut[name] = half
  run_prepare(server, fixtures, out, ["binarized_mnist"])
  assert server.requests(name) == [None, f"bytes={half}-"]
  check_outputs(out, fixtures, ["binarized_mnist"])


def test_progress_bars(server, fixtures, tmp_path, monkeypatch, capsys):
  # Bars are drawn only on a terminal: pretend stderr is one.
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
  serve_all(server, fixtures)
  name = "binarized_mnist_valid.amat"
  server.cut[name] = 1000
  prepare_lib.prepare(["binarized_mnist"], tmp_path,
                      remote_files=table_for(server, fixtures),
                      published_sizes=False, progress=True)
  err = capsys.readouterr().err
  assert name in err and "B/s" in err
  check_outputs(tmp_path, fixtures, ["binarized_mnist"])
  prepare_lib.prepare(["mnist"], tmp_path,
                      remote_files=table_for(server, fixtures),
                      published_sizes=False, progress=False)
  assert not capsys.readouterr().err


def test_hand_placed_downloads(server, fixtures, tmp_path):
  serve_all(server, fixtures)
  downloads = tmp_path / "downloads" / "binarized_mnist"
  downloads.mkdir(parents=True)
  served = fixtures[0]["binarized_mnist"]
  (downloads / "binarized_mnist_train.amat").write_bytes(
      served["binarized_mnist_train.amat"])
  (downloads / "binarized_mnist_test.amat").write_bytes(b"0 1\n")
  table = table_for(server, fixtures)
  with pytest.raises(prepare_lib.PrepareError) as e:
    prepare_lib.prepare(["binarized_mnist"], tmp_path, remote_files=table,
                        published_sizes=False, progress=False)
  path = downloads / "binarized_mnist_test.amat"
  assert str(e.value).startswith(
      f"Checksum mismatch for {path}, found in place of the download of "
      f"{server.url}/binarized_mnist_test.amat: expected sha256 "
      f"{_sha(served['binarized_mnist_test.amat'])}, found sha256 "
      f"{_sha(b'0 1' + bytes([10]))}.")
  assert (downloads / "binarized_mnist_test.amat.corrupt").exists()
  # The good file placed by hand is used as it is; running again fetches
  # only the file moved aside.
  assert sorted(n for n, _ in server.log) == ["binarized_mnist_valid.amat"]
  server.log.clear()
  prepare_lib.prepare(["binarized_mnist"], tmp_path, remote_files=table,
                      published_sizes=False, progress=False)
  assert [n for n, _ in server.log] == ["binarized_mnist_test.amat"]
  check_outputs(tmp_path, fixtures, ["binarized_mnist"])


def test_file_mirror(fixtures, tmp_path):
  mirror = tmp_path / "mirror"
  mirror.mkdir()
  for name, body in fixtures[0]["omniglot"].items():
    (mirror / name).write_bytes(body)
  table = remote_files("https://example.invalid", fixtures)
  prepare_lib.prepare(["omniglot"], tmp_path / "out",
                      mirror=mirror.as_uri(), remote_files=table,
                      published_sizes=False, progress=False)
  check_outputs(tmp_path / "out", fixtures, ["omniglot"])
  (mirror / "images_background.zip").unlink()
  with pytest.raises(prepare_lib.PrepareError,
                     match="No such file.*; 1 attempt"):
    prepare_lib.prepare(["omniglot"], tmp_path / "out2",
                        mirror=mirror.as_uri(), remote_files=table,
                        published_sizes=False, progress=False)


def test_mirror_mistakes_name_the_fix(fixtures, tmp_path):
  mirror = tmp_path / "mirror"
  mirror.mkdir()
  table = remote_files("https://example.invalid", fixtures)
  kwargs = dict(remote_files=table, published_sizes=False, progress=False)
  with pytest.raises(prepare_lib.PrepareError, match=(
      f"--mirror='{mirror}' is not a URL; for this directory of downloaded "
      f"files pass --mirror={mirror.as_uri()}")):
    prepare_lib.prepare(["omniglot"], tmp_path / "out", mirror=str(mirror),
                        **kwargs)
  assert not (tmp_path / "out").exists()
  (mirror / "images_background.zip").mkdir()  # a directory, not the file
  with pytest.raises(prepare_lib.PrepareError) as e:
    prepare_lib.prepare(["omniglot"], tmp_path / "out",
                        mirror=mirror.as_uri(), **kwargs)
  message = str(e.value)
  assert "images_background.zip ([Errno 21] Is a directory" in message, (
      message)
  assert "images_background.zip'; 1 attempt" in message, message
  assert "put the file images_background.zip" in message, message
  assert "internet" not in message


def test_a_data_dir_that_is_a_file_is_named(fixtures, tmp_path):
  (tmp_path / "f").write_text("")
  with pytest.raises(prepare_lib.PrepareError,
                     match="--data_dir='.*/f' is a file; give a directory"):
    prepare_lib.prepare(["omniglot"], tmp_path / "f", progress=False,
                        remote_files=remote_files("https://x.invalid",
                                                  fixtures))


def test_part_file_is_resumed(server, fixtures, tmp_path):
  out = tmp_path / "data"
  downloads = out / "downloads" / "omniglot"
  downloads.mkdir(parents=True)
  name = "images_evaluation.zip"
  body = fixtures[0]["omniglot"][name]
  half = len(body) // 2
  (downloads / f"{name}.part").write_bytes(body[:half])
  run_prepare(server, fixtures, out, ["omniglot"])
  assert server.requests(name) == [f"bytes={half}-"]
  assert server.requests("images_background.zip") == [None]
  check_outputs(out, fixtures, ["omniglot"])


def test_server_ignoring_range_restarts_from_zero(server, fixtures, tmp_path):
  out = tmp_path / "data"
  downloads = out / "downloads" / "fashion_mnist"
  downloads.mkdir(parents=True)
  name = "train-images-idx3-ubyte.gz"
  body = fixtures[0]["fashion_mnist"][name]
  (downloads / f"{name}.part").write_bytes(b"x" * (len(body) // 2))
  server.ignore_range = True
  run_prepare(server, fixtures, out, ["fashion_mnist"])
  assert server.requests(f"fashion/{name}") == [f"bytes={len(body) // 2}-"]
  check_outputs(out, fixtures, ["fashion_mnist"])


def _dead_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]  # closed on exit: nothing listens there


def test_network_failure(fixtures, tmp_path):
  out = tmp_path / "data"
  mirror = f"http://127.0.0.1:{_dead_port()}/files"
  table = remote_files("https://example.invalid", fixtures)
  with pytest.raises(prepare_lib.PrepareError) as e:
    prepare_lib.prepare(["binarized_mnist"], out, mirror=mirror,
                        remote_files=table, published_sizes=False,
                        progress=False)
  message = str(e.value)
  name = "binarized_mnist_train.amat"
  for needle in (f"Could not download {mirror}/{name}", "refused",
               f"{prepare_lib.RETRIES + 1} attempts",
               "check the internet connection or the proxy", "--mirror=URL",
               f"by hand from {mirror}/{name} to exactly "
               f"{out / 'downloads' / 'binarized_mnist' / name}"):
    assert needle in message
  assert len(message.split("\n\n")) == 3  # one paragraph per file
  assert not (out / "binarized_mnist.npz").exists()


def test_missing_file_is_not_retried(server, fixtures, tmp_path):
  table = remote_files(server.url, fixtures)
  with pytest.raises(prepare_lib.PrepareError, match="HTTP error 404.*1 "
                     "attempt\\)"):
    prepare_lib.prepare(["omniglot"], tmp_path, remote_files=table,
                        published_sizes=False, progress=False)
  assert server.requests("images_background.zip") == [None]


def test_second_run_downloads_and_rewrites_nothing(server, fixtures, tmp_path):
  out = tmp_path / "data"
  run_prepare(server, fixtures, out)
  mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
  server.log.clear()
  assert run_prepare(server, fixtures, out) == {d: [] for d in ALL}
  assert not server.log
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
  # A damaged output is written again, from the verified downloads.
  (out / "mnist.npz").write_bytes(b"not an npz")
  assert run_prepare(server, fixtures, out) == {
      **{d: [] for d in ALL}, "mnist": [out / "mnist.npz"]}
  assert not server.log
  check_outputs(out, fixtures)
  # The outputs alone suffice: without the downloads, still nothing to do.
  shutil.rmtree(out / "downloads")
  assert run_prepare(server, fixtures, out) == {d: [] for d in ALL}
  assert not server.log


# ----------------------------------------------------------------------------
# The command line, as a user runs it.


def _command(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != data.DATA_DIR_ENV}
  return subprocess.run(
      [sys.executable, "-m", "rebar_jax.data.prepare", *args], cwd=cwd,
      env=env, capture_output=True, text=True, timeout=300, check=False)


def test_command_line_with_the_real_checksums(server, tmp_path):
  data_dir = paper_data.require()
  serve_dir = tmp_path / "serve"
  data.write_binarized_mnist_amat(data_dir / "binarized_mnist.npz", serve_dir)
  mnist = np.load(data_dir / "mnist.npz")
  contents = {"train-images-idx3-ubyte": mnist["train_images"],
              "train-labels-idx1-ubyte": mnist["train_labels"],
              "t10k-images-idx3-ubyte": mnist["test_images"],
              "t10k-labels-idx1-ubyte": mnist["test_labels"]}
  official = {r.name: r for r in prepare_lib.REMOTE_FILES["mnist"]}
  for stem, array in contents.items():
    raw = _idx(array)
    assert _sha(raw) == official[f"{stem}.gz"].content_sha256
    (serve_dir / f"{stem}.gz").write_bytes(gzip.compress(raw, 1, mtime=0))
  server.files = {p.name: p.read_bytes() for p in serve_dir.iterdir()}
  work = tmp_path / "work"
  work.mkdir()
  result = _command("--datasets=binarized_mnist,mnist", "--data_dir=out",
                    f"--mirror={server.url}", cwd=work)
  assert result.returncode == 0, result.stderr
  assert sorted(n for n, _ in server.log) == sorted(server.files)
  for name in ("binarized_mnist", "mnist"):
    ours = data.load_dataset(name, "local", work / "out")
    theirs = data.load_dataset(name, "local", data_dir)
    for split in ("train", "valid", "test"):
      np.testing.assert_array_equal(getattr(ours, split),
                                    getattr(theirs, split))


def test_command_line_failures(server, tmp_path):
  server.files = {f"binarized_mnist_{s}.amat": b"0 1\n" * 10
                  for s in ("train", "valid", "test")}
  result = _command("--datasets=binarized_mnist", f"--data_dir={tmp_path}",
                    f"--mirror={server.url}/", cwd=tmp_path)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert result.stderr.startswith("prepare: error: Checksum mismatch for "
                                  f"{server.url}/binarized_mnist_train.amat")
  for sha in data.datasets.BINARIZED_MNIST_AMAT_SHA256.values():
    assert sha in result.stderr
  assert _sha(b"0 1\n" * 10) in result.stderr
  # No --data_dir and no $REBAR_JAX_DATA_DIR.
  result = _command("--datasets=mnist", cwd=tmp_path)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert "--data_dir is required" in result.stderr
  assert "$REBAR_JAX_DATA_DIR" in result.stderr
