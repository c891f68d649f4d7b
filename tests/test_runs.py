"""A run is one configuration, one dataset and one intact state, or it refuses.

In-process tests of run identity, checkpoint integrity and fallback, the
metrics history, the divergence guard and the option checks. The faults that
need a real process (SIGKILL, SIGINT, SIGTERM, two processes on one workdir)
are in tests/test_faults.py.
"""
import contextlib
import errno
import hashlib
import io
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import threading
from unittest import mock

from absl.testing import parameterized
import jax
import numpy as np

from configs import catvae_mnist
from configs import sbn_mnist
from rebar_jax import cli
from rebar_jax import errors
from rebar_jax import train
from rebar_jax.utils import checkpoints
from rebar_jax.utils import runs


def tiny_config(**overrides):
  """A linear SBN of 20 units on the embedded digits, cheap to evaluate."""
  c = sbn_mnist.get_config()
  defaults = dict(nonlinear=False, num_latents=20, estimator="disarm",
                  learning_rate=1e-3, num_steps=300, steps_per_call=100,
                  eval_every=300, checkpoint_every=100, eval_num_samples=5,
                  eval_max_examples=100, diagnostic_draws=0,
                  progress_bar=False)
  for k, v in {**defaults, **overrides}.items():
    c[k] = v
  return c


def template_run(cls, config) -> tuple[str, dict]:
  """A finished run in a fresh directory, removed after the test class."""
  root = tempfile.mkdtemp()
  cls.addClassCleanup(shutil.rmtree, root, ignore_errors=True)
  workdir = os.path.join(root, "run")
  return workdir, train.train_and_evaluate(config, workdir)


def printed(fn, *args, **kwargs) -> tuple[object, str]:
  """(fn(*args, **kwargs), what it printed)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = fn(*args, **kwargs)
  return result, out.getvalue()


def snapshot(workdir) -> dict[str, str]:
  """{relative path: sha256 and mtime} of every file under workdir."""
  out = {}
  for p in sorted(pathlib.Path(workdir).rglob("*")):
    if p.is_file():
      out[str(p.relative_to(workdir))] = (
          hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
  return out


class IdentityTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.template, _ = template_run(cls, tiny_config(num_steps=200))

  def copy(self) -> str:
    workdir = os.path.join(self.create_tempdir().full_path, "run")
    shutil.copytree(self.template, workdir)
    return workdir

  @parameterized.named_parameters(
      ("learning_rate", dict(learning_rate=3e-4), ["learning_rate"]),
      ("seed_and_data", dict(seed=1), ["seed", "data (sha256)"]),
      ("batch_size", dict(batch_size=25), ["batch_size"]),
      ("estimator_same_state", dict(estimator="reinforce"), ["estimator"]),
      ("estimator_other_state", dict(estimator="rebar"), ["estimator"]),
      ("model_size", dict(num_latents=30), ["num_latents"]),
      ("dataset", dict(dataset="mnist"), ["dataset", "data (sha256)"]),
  )
  def test_a_changed_config_is_refused_and_nothing_is_written(
      self, overrides, fields):
    workdir = self.copy()
    before = snapshot(workdir)
    with self.assertRaises(runs.WorkdirError) as e:
      train.train_and_evaluate(tiny_config(num_steps=300, **overrides),
                               workdir)
    message = str(e.exception)
    for field in fields:
      self.assertIn(f"  {field}: ", message)
    self.assertIn("--allow_config_change", message)
    self.assertIn("new --workdir", message)
    self.assertEqual(snapshot(workdir), before)

  def test_result_free_fields_may_change_and_the_change_is_recorded(self):
    workdir = self.copy()
    final = train.train_and_evaluate(
        tiny_config(num_steps=300, eval_every=100, progress_bar=True),
        workdir)
    self.assertEqual(final["step"], 300)
    self.assertNotIn("config_changed_at_steps", final)
    with open(os.path.join(workdir, "run.json")) as fh:
      history = json.load(fh)["history"]
    self.assertEqual([h["event"] for h in history], ["start", "resume"])
    self.assertEqual(history[-1]["step"], 200)

  def test_allow_config_change_continues_and_records_it(self):
    workdir = self.copy()
    final = train.train_and_evaluate(
        tiny_config(num_steps=300, learning_rate=3e-4), workdir,
        allow_config_change=True)
    self.assertEqual(final["config_changed_at_steps"], [200])
    with open(os.path.join(workdir, "run.json")) as fh:
      history = json.load(fh)["history"]
    self.assertEqual(history[-1]["changes"],
                     {"learning_rate": {"from": 1e-3, "to": 3e-4}})

  def test_a_structural_change_allowed_still_fails_clearly(self):
    with self.assertRaisesRegex(checkpoints.CheckpointError,
                                "does not fit this run's state"):
      train.train_and_evaluate(tiny_config(num_steps=300, num_latents=30),
                               self.copy(), allow_config_change=True)

  def test_a_record_older_than_a_field_holds_its_default(self):
    """run.json written before `activation` existed: tanh is what it ran."""
    recorded = {k: v for k, v in json.loads(
        tiny_config().to_json_best_effort()).items() if k != "activation"}
    for activation, changes in (("tanh", {}),
                                ("leaky_relu",
                                 {"activation": ("tanh", "leaky_relu")})):
      config = json.loads(tiny_config(activation=activation)
                          .to_json_best_effort())
      self.assertEqual(runs.identity_changes(recorded, config, "d", "d"),
                       changes)

  def test_run_json_records_versions_warns_on_a_mismatch_and_keeps_fields(
      self):
    workdir = self.copy()
    path = os.path.join(workdir, "run.json")
    with open(path) as fh:
      record = json.load(fh)
    self.assertEqual(record["versions"], runs.software_versions())
    self.assertEqual(set(record["versions"]), {"jax", "jaxlib", "rebar_jax"})
    record["versions"]["jax"] = "0.0.1"
    record["note"] = "kept"
    with open(path, "w") as fh:
      json.dump(record, fh)
    _, out = printed(train.train_and_evaluate, tiny_config(num_steps=300),
                     workdir)
    self.assertIn("Warning: this run was recorded under other software (jax "
                  f"0.0.1 then, {jax.__version__} now)", out)
    with open(path) as fh:
      record = json.load(fh)
    self.assertEqual(record["note"], "kept")
    self.assertEqual(record["versions"], runs.software_versions())
    self.assertEqual(record["history"][-1]["versions"],
                     runs.software_versions())

  @parameterized.named_parameters(
      ("config_a_string", lambda r: {**r, "config": "lr=1"}),
      ("no_history", lambda r: {k: v for k, v in r.items()
                                if k != "history"}),
      ("a_list", lambda r: [r]),
  )
  def test_a_malformed_record_is_one_clear_error(self, damage):
    workdir = self.copy()
    path = os.path.join(workdir, "run.json")
    with open(path) as fh:
      record = damage(json.load(fh))
    with open(path, "w") as fh:
      json.dump(record, fh)
    with self.assertRaisesRegex(runs.WorkdirError,
                                "is unreadable .* Use a new --workdir"):
      train.train_and_evaluate(tiny_config(num_steps=300), workdir)

  def test_the_lock_holds_though_its_file_is_deleted(self):
    workdir = self.copy()
    with runs.WorkdirLock(workdir):
      os.remove(os.path.join(workdir, "lock"))
      self.assertTrue(runs.is_locked(workdir))
      with self.assertRaisesRegex(runs.WorkdirError, "is in use by"):
        train.train_and_evaluate(tiny_config(num_steps=300), workdir)
    self.assertFalse(runs.is_locked(workdir))

  @parameterized.named_parameters(("removed", "removed"),
                                  ("left_behind", "left_behind"),
                                  ("still_going", "still_going"))
  def test_a_workdir_deleted_while_a_checkpoint_is_saved_says_so(self, how):
    """rm -rf of the workdir while orbax writes a checkpoint: orbax fails on
    its vanished files (issue 28: its ValueError was a raw traceback). The
    directory is removed; or left behind, holding a directory orbax recreated
    under it; or removed a moment after orbax failed."""
    workdir = pathlib.Path(self.copy())

    def deleted_midway(*args, **kwargs):
      del args, kwargs
      if how == "removed":
        shutil.rmtree(workdir)
      elif how == "left_behind":
        for path in workdir.iterdir():
          if path.is_dir():
            shutil.rmtree(path)
          else:
            path.unlink()
        (workdir / "checkpoints" / "300.orbax-checkpoint-tmp").mkdir(
            parents=True)
      else:  # the checkpoints are gone, run.json and the directory not yet
        shutil.rmtree(workdir / "checkpoints")
        threading.Timer(0.3, shutil.rmtree, [workdir]).start()
      raise ValueError("No ArrayMetadata found for process_index=0 in the "
                       "checkpoint directory")

    with mock.patch.object(checkpoints.ocp.CheckpointManager, "save",
                           deleted_midway), \
        mock.patch.object(sys, "stderr", io.StringIO()):
      with self.assertRaisesRegex(
          runs.WorkdirError, f"the workdir {workdir} is gone .deleted while "
          "the run was going.; run the same command to start again"):
        train.train_and_evaluate(tiny_config(num_steps=400), str(workdir))

  def test_a_lock_that_is_a_directory_is_one_clear_error(self):
    workdir = self.copy()
    os.remove(os.path.join(workdir, "lock"))
    os.mkdir(os.path.join(workdir, "lock"))
    with self.assertRaisesRegex(runs.WorkdirError,
                                "lock is a directory.*remove it"):
      train.train_and_evaluate(tiny_config(num_steps=300), workdir)

  def test_shortening_a_finished_run_warns(self):
    workdir = self.copy()
    final, out = printed(train.train_and_evaluate,
                         tiny_config(num_steps=100), workdir)
    self.assertEqual(final["step"], 200)
    self.assertIn("Warning: the checkpoint is at step 200, past "
                  "config.num_steps=100; a run cannot be shortened", out)
    self.assertIn("steps 200..200 on", out)  # not "200..100"

  def test_a_workdir_without_checkpoints_takes_a_new_config(self):
    workdir = self.copy()
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    final = train.train_and_evaluate(
        tiny_config(num_steps=100, learning_rate=3e-4), workdir)
    self.assertEqual(final["step"], 100)
    self.assertNotIn("config_changed_at_steps", final)
    with open(os.path.join(workdir, "run.json")) as fh:
      record = json.load(fh)
    self.assertEqual([h["event"] for h in record["history"]],
                     ["start", "start"])
    self.assertEqual(record["config"]["learning_rate"], 3e-4)

  def test_checkpoints_without_a_record_are_refused(self):
    workdir = self.copy()
    os.remove(os.path.join(workdir, "run.json"))
    with self.assertRaisesRegex(runs.WorkdirError, "no run.json"):
      train.train_and_evaluate(tiny_config(num_steps=300), workdir)


# ---------------------------------------------------------------------------
# Checkpoint integrity.


def _first_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The largest data file of an orbax checkpoint (holds parameter bytes)."""
  files = [p for p in step_dir.rglob("*") if p.is_file()
           and p.name != checkpoints.DIGEST_FILE]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  f = _first_array_file(step_dir)
  f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _delete_file(step_dir):
  _first_array_file(step_dir).unlink()


def _flip_four_bytes(step_dir):
  f = _first_array_file(step_dir)
  raw = bytearray(f.read_bytes())
  for i in (10, 200, 1000, len(raw) - 5):
    raw[i] ^= 0x5A
  f.write_bytes(bytes(raw))


def _random_bytes(step_dir):
  f = _first_array_file(step_dir)
  f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))


def _no_digest(step_dir):  # killed while orbax was finishing it
  (step_dir / checkpoints.DIGEST_FILE).unlink()
  (step_dir / checkpoints.ORBAX_METADATA).unlink()


DAMAGE = [
    ("truncated_file", _truncate, "content changed"),
    ("deleted_file", _delete_file, "missing files"),
    ("four_flipped_bytes", _flip_four_bytes, "content changed"),
    ("random_bytes", _random_bytes, "content changed"),
    ("no_digest", _no_digest, "no digest"),
]


class IntegrityTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.template, cls.final = template_run(cls, tiny_config())
    cls.exp = train.build(tiny_config())

  def copy(self) -> str:
    workdir = os.path.join(self.create_tempdir().full_path, "run")
    shutil.copytree(self.template, workdir)
    return workdir

  def like(self):
    return train.init_state(self.exp, 0)

  @parameterized.named_parameters(*DAMAGE)
  def test_a_damaged_latest_checkpoint_is_never_restored(self, damage, why):
    workdir = self.copy()
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    self.assertEqual(ckpt.steps(), [100, 200, 300])
    damage(pathlib.Path(workdir) / "checkpoints" / "300")
    state, damaged = ckpt.restore_latest_intact(self.like())
    self.assertEqual(int(state.step), 200)
    self.assertLen(damaged, 1)
    self.assertEqual(damaged[0].step, 300)
    self.assertIn(why, damaged[0].reason)
    self.assertTrue(damaged[0].moved_to.is_dir())
    self.assertEqual(ckpt.steps(), [100, 200])
    intact = checkpoints.Checkpointer(
        os.path.join(self.template, "checkpoints")).restore(self.like(), 200)
    jax.tree.map(np.testing.assert_array_equal, state, intact)

  def test_killed_between_orbax_and_the_digest_continues(self):
    """kill -9 after orbax finished a checkpoint, before its digest."""
    workdir = self.copy()
    step_dir = pathlib.Path(workdir) / "checkpoints" / "300"
    (step_dir / checkpoints.DIGEST_FILE).unlink()
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    state, damaged = ckpt.restore_latest_intact(self.like())
    self.assertEqual((int(state.step), damaged), (300, []))
    self.assertEqual(ckpt.adopted, [step_dir])
    self.assertIsNone(checkpoints.verify(step_dir))
    (step_dir / checkpoints.DIGEST_FILE).unlink()
    final, out = printed(train.train_and_evaluate, tiny_config(), workdir)
    self.assertIn(f"Warning: checkpoint {step_dir} had no digest", out)
    self.assertEqual(final, self.final)
    self.assertFalse(os.path.exists(os.path.join(workdir,
                                                 "damaged_checkpoints")))

  def test_a_full_disk_while_saving_names_the_checkpoint_and_cleans_up(self):
    workdir = self.copy()
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    tmp = pathlib.Path(workdir) / "checkpoints" / "400.orbax-checkpoint-tmp-1"

    def full(*args, **kwargs):
      del args, kwargs
      tmp.mkdir()
      raise ValueError("Error writing: [OS error 28: No space left on device]")

    state = ckpt.restore(self.like())
    stderr = io.StringIO()
    with mock.patch.object(ckpt.manager, "save", full), \
        mock.patch.object(sys, "stderr", stderr):
      with self.assertRaises(OSError) as e:
        ckpt.save(400, state)
      # orbax's threads print their cleanup's tracebacks after the save
      # raised; the trainer's one line is the only output.
      late = threading.Thread(target=print, args=("Traceback",),
                              kwargs={"file": sys.stderr})
      late.start()
      late.join()
      print("error: the one line", file=sys.stderr)
    self.assertEqual(stderr.getvalue(), "error: the one line\n")
    self.assertEqual(e.exception.errno, errno.ENOSPC)
    self.assertEqual(cli.os_error_message(e.exception),
                     f"disk full writing {ckpt.directory / '400'}; free space "
                     "and rerun.")
    self.assertFalse(tmp.exists())

  def test_the_run_falls_back_and_resumes_exactly(self):
    workdir = self.copy()
    _flip_four_bytes(pathlib.Path(workdir) / "checkpoints" / "300")
    final = train.train_and_evaluate(tiny_config(), workdir)
    self.assertEqual(final, self.final)
    moved = os.listdir(os.path.join(workdir, "damaged_checkpoints"))
    self.assertLen(moved, 1)
    self.assertTrue(moved[0].startswith("300-"))

  def test_no_intact_checkpoint_is_an_error_naming_each(self):
    workdir = self.copy()
    for step in (100, 200, 300):
      _truncate(pathlib.Path(workdir) / "checkpoints" / str(step))
    with self.assertRaises(checkpoints.CheckpointError) as e:
      train.train_and_evaluate(tiny_config(), workdir)
    for step in (100, 200, 300):
      self.assertIn(os.path.join(workdir, "checkpoints", str(step)),
                    str(e.exception))

  def test_read_only_restore_refuses_a_damaged_checkpoint(self):
    workdir = self.copy()
    _random_bytes(pathlib.Path(workdir) / "checkpoints" / "300")
    with self.assertRaisesRegex(checkpoints.CheckpointError, "is damaged"):
      checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")).restore(
          self.like())

  # -------------------------------------------------------------------------
  # The metrics history matches the checkpoint.

  def test_a_torn_last_line_is_repaired_with_a_warning(self):
    workdir = self.copy()
    shutil.rmtree(os.path.join(workdir, "checkpoints", "300"))
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, "a") as fh:
      fh.write('{"step": 400, "train_el')  # killed mid-write
    final, out = printed(train.train_and_evaluate, tiny_config(), workdir)
    self.assertIn("dropped its last line of " + path, out)
    self.assertEqual(final, self.final)
    rows = [json.loads(l) for l in open(path)]
    self.assertEqual([r["step"] for r in rows], [100, 200, 300])

  def test_a_deleted_history_warns_and_keeps_the_final_numbers(self):
    workdir = self.copy()
    shutil.rmtree(os.path.join(workdir, "checkpoints", "300"))
    os.remove(os.path.join(workdir, "metrics.jsonl"))
    final, out = printed(train.train_and_evaluate, tiny_config(), workdir)
    self.assertIn("holds rows up to step 0 only", out)
    self.assertEqual(final, self.final)


# ---------------------------------------------------------------------------
# Divergence and option checks.


class GuardsTest(parameterized.TestCase):

  def test_a_diverging_run_stops_with_step_estimator_and_checkpoint(self):
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(tiny_config(num_steps=100), workdir)
    with self.assertRaisesRegex(
        errors.TrainingStopped,
        r"Diverged: the mean training ELBO of steps 100\.\.200 is .* "
        r"nats below its value at initialisation .* estimator 'disarm' and "
        r"learning_rate=1000; the last checkpoint \(step 100\)"):
      train.train_and_evaluate(tiny_config(learning_rate=1e3), workdir,
                               allow_config_change=True)
    self.assertEqual(
        checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")).steps(),
        [100])

  @parameterized.named_parameters(
      ("negative_seed", dict(seed=-1), "config.seed must be an integer >= 0"),
      ("huge_seed", dict(seed=2**40), "config.seed must be an integer in"),
      ("zero_hidden", dict(hidden=0, nonlinear=True),
       "config.hidden must be an integer >= 1"),
      ("negative_eval_max", dict(eval_max_examples=-50),
       "config.eval_max_examples must be an integer >= 0"),
      ("negative_draws", dict(diagnostic_draws=-3),
       "config.diagnostic_draws must be an integer >= 0"),
      ("zero_batch", dict(batch_size=0), "config.batch_size must be"),
      ("infinite_learning_rate", dict(learning_rate=math.inf),
       "config.learning_rate must be a finite number > 0"),
      ("nan_learning_rate", dict(learning_rate=math.nan),
       "config.learning_rate must be a finite number > 0"),
      ("nan_eta", dict(eta=math.nan), "config.eta must be a finite number"),
      ("zero_temperature", dict(temperature=0.0),
       "config.temperature must be a finite number > 0"),
      ("zero_divergence_threshold", dict(divergence_threshold=0.0),
       "config.divergence_threshold must be > 0"),
      ("zero_relax_width", dict(relax_hidden=(0,)),
       "config.relax_hidden must be a tuple of integers >= 1"),
      ("loo_with_one_sample", dict(estimator="reinforce_loo",
                                   loo_samples=1),
       "config.loo_samples must be an integer >= 2"),
      ("unknown_estimator", dict(estimator="rebbar"),
       "Unknown estimator 'rebbar'"),
      ("eval_not_multiple", dict(eval_every=150),
       "multiple of config.steps_per_call"),
      ("unknown_activation", dict(activation="relu"),
       r"config.activation must be one of \['leaky_relu', 'tanh'\]"),
      ("iw_samples_for_one_sample", dict(iw_samples=5),
       r"config.estimator='disarm': iw_samples=5 is set, but 'disarm' does "
       "not read it and would ignore it; leave it at 1"),
      ("family_named_twice", dict(estimator="bernoulli:disarm,bernoulli:rebar"),
       r"names \['bernoulli'\] more than once; name one estimator per family"),
      ("batch_over_the_data", dict(batch_size=4001),
       "config.batch_size=4001 exceeds the 4000 training examples"),
      ("unknown_dataset", dict(dataset="mnits"),
       "config.dataset must be one of .*'mnist'"),
      ("unknown_data_source", dict(data_source="web"),
       "config.data_source must be one of .*'embedded'"),
      ("model_not_a_factory", dict(model="os:getcwd"),
       r"config.model='os:getcwd': calling it as factory\(config, dataset\) "
       "failed"),
      ("data_dir_a_file", dict(data_dir=__file__),
       "config.data_dir=.* is a file; give the directory"),
  )
  def test_bad_values_name_the_field(self, overrides, message):
    with self.assertRaisesRegex(errors.ConfigError, message):
      train.build(tiny_config(**overrides))

  def test_a_config_refused_by_the_data_writes_nothing(self):
    workdir = os.path.join(self.create_tempdir().full_path, "run")
    with self.assertRaisesRegex(errors.ConfigError, "exceeds the 4000"):
      train.train_and_evaluate(tiny_config(batch_size=5000), workdir)
    self.assertFalse(os.path.exists(workdir))

  def _user_model(self, body: str) -> str:
    path = os.path.join(self.create_tempdir().full_path, "model.py")
    with open(path, "w") as fh:
      fh.write("from rebar_jax.models import sbn\n"
               "def factory(config, dataset):\n" + body)
    return path + ":factory"

  def test_a_model_of_the_wrong_data_size_is_refused_before_writing(self):
    model = self._user_model(
        "  return sbn.SBN(num_layers=1, num_latents=4, data_dim=10)\n")
    workdir = os.path.join(self.create_tempdir().full_path, "run")
    with self.assertRaisesRegex(
        errors.ConfigError, "made a model of data_dim=10, but "
        "binarized_mnist has 784 values per example"):
      train.train_and_evaluate(tiny_config(model=model), workdir)
    self.assertFalse(os.path.exists(workdir))

  def test_a_model_without_latent_layers_is_named(self):
    model = self._user_model(
        "  class NoLatents:\n"
        "    data_dim, train_mean = 784, None\n"
        "    stochastic_layers = lambda self: ()\n"
        "    layer_logits = log_joint = lambda self, *args: None\n"
        "  return NoLatents()\n")
    with self.assertRaisesRegex(errors.ConfigError, "no latent layers"):
      train.build(tiny_config(model=model))

  def test_the_estimator_api_refuses_non_finite_options_and_int_f(self):
    from rebar_jax import estimators  # pylint: disable=g-import-not-at-top
    key, logits = jax.random.key(0), np.zeros(3, np.float32)
    for temperature in (math.inf, math.nan):
      with self.assertRaisesRegex(ValueError,
                                  "temperature must be > 0 and finite"):
        estimators.concrete(key, logits, np.sum, temperature=temperature)
    with self.assertRaisesRegex(TypeError, "f must return a float"):
      estimators.rebar(key, logits, lambda b: (b.sum() > 1).astype(int))

  def test_categorical_sizes_are_checked(self):
    config = catvae_mnist.get_config()
    config.num_classes = 1
    with self.assertRaisesRegex(errors.ConfigError,
                                "config.num_classes must be an integer >= 2"):
      train.build(config)
    config = catvae_mnist.get_config()
    config.mlp_hidden = (64, 0)
    with self.assertRaisesRegex(errors.ConfigError, "config.mlp_hidden"):
      train.build(config)
