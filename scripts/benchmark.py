r"""Speed of the estimators and of the SBN train step, measured in alternation.

  python scripts/benchmark.py --output_dir=results/benchmark
  python scripts/benchmark.py --quick   # small grids, a smoke run
  python scripts/benchmark.py --compare_to=HEAD~1 --estimators=rebar,disarm

The machine's speed drifts within minutes (a shared CPU), so every ratio is
measured in alternation: the two steps compared run in turns, A B B A A B ...,
each turn a block of about --block_seconds, and the ratio is the median of the
per-pair ratios, with its interquartile range
(`rebar_jax.utils.timing.interleaved`). Sections:
  1. alone: every registered estimator by itself, gradient draws per second
     for 200 Bernoulli latents (20 x 10 categorical) with a linear-decoder
     log-likelihood as f, jitted and vmapped over draws;
  2. steps: the full train step (`lax.scan` over steps, as in training) of the
     linear and nonlinear SBN at batch 24 and 50, each estimator timed in
     alternation with REINFORCE's step on the same model and batch: steps per
     second, cost in REINFORCE steps, compile time, XLA's memory estimate,
     and efficiency: XLA's FLOP count of the step over its time, as a fraction
     of the dense matmul FLOP/s measured in the same run (1024^3, the
     practical roofline) and of a lone matmul of the step's own shape
     (B x 784 x 200, which bounds what a step made of such matmuls can reach
     at small B);
  3. peer: the same linear SBN, estimator and batch (24) in Storchastic
     (PyTorch), run by `scripts/peers/storchastic_sbn.py --serve` in the
     environment `make peers` builds (--peer_python), timed in alternation
     with ours: the median ratio of steps per second and its spread;
  4. scaling: how cost grows with batch (24 -> 4096, with the roofline
     fraction), latents (50 -> 800) and samples K (VIMCO, 1 -> 100), with the
     fitted log-log exponent;
  5. breakdown: where the linear SBN's step (batch 24) spends its time, by
     ablation (`breakdown`): scanned programs of the step's parts (the loop
     with its batch gather, the chunk's noise draw, one forward and backward
     pass of the model, the estimator's whole gradient, Adam's update) and
     the floor (the step's four B x 784 x 200 matmuls and Adam alone), each
     timed in alternation with the full step; the estimator's arithmetic is
     its gradient less the one pass, the residual what the parts leave of
     the full step. Not in the default sections (--sections=breakdown).
--compare_to=REV instead times this checkout's train step against the one of
git revision REV (exported to a temporary directory), both as step servers
(`--serve`) run by this script's code in alternation, per estimator of
--estimators (before/after a change). Writes benchmark.json, benchmark.md and
benchmark.png (compare.json, compare.md with --compare_to) to --output_dir.
"""
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import sbn_mnist  # pylint: disable=g-import-not-at-top
from rebar_jax import estimators
from rebar_jax import train
from rebar_jax.models import sbn
from rebar_jax.utils.timing import Timer
from rebar_jax.utils.timing import block_steps
from rebar_jax.utils.timing import interleaved

Array = jax.Array

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/benchmark", "Output.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 7, "Timed repeats (pairs of turns, in alternation).")
_BLOCK_SECONDS = flags.DEFINE_float(
    "block_seconds", 0.5, "Length of one timed turn, seconds.")
_QUICK = flags.DEFINE_bool("quick", False, "Small grids (a smoke run).")
_STEPS = flags.DEFINE_integer("steps_per_call", 100, "Scanned steps per call.")
_SECTIONS = flags.DEFINE_list(
    "sections", ["alone", "steps", "peer", "scaling"],
    "Which measurements: alone (estimators by themselves), steps (train step "
    "table), peer (Storchastic side by side), scaling; breakdown (the step "
    "by phase) when named.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", [], "Estimators of the steps, peer and compare_to "
    "measurements (default: all of the steps table; reinforce, disarm, "
    "rebar, relax for --compare_to).")
_PEER_PYTHON = flags.DEFINE_string(
    "peer_python", ".venv-peers/bin/python",
    "Python of the environment with PyTorch + Storchastic (`make peers`); "
    "empty to skip the peer comparison.")
_COMPARE_TO = flags.DEFINE_string(
    "compare_to", "", "A git revision: time this checkout's train step "
    "against that revision's, in alternation (before/after a change).")
_SERVE = flags.DEFINE_string(
    "serve", "", "Internal: serve the train step of estimator NAME "
    "(linear SBN, --serve_batch) on stdin/stdout for --compare_to.")
_SERVE_BATCH = flags.DEFINE_integer("serve_batch", 24, "Batch of --serve.")
_SERVE_SAMPLES = flags.DEFINE_integer(
    "serve_samples", 1, "K (iw_samples) of --serve: a multi-sample objective "
    "is served, and compared by --compare_to, at K = 10.")

# The estimators of issue 32's targets, broken down by phase.
_BREAKDOWN = ("reinforce", "nvil", "arm", "disarm", "reinforce_loo",
              "concrete", "straight_through_gumbel", "rebar", "relax")

_PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "peers", "storchastic_sbn.py")
# Ours -> Storchastic's nearest estimator (see the peer script's METHODS).
_PEER_ESTIMATORS = ("reinforce", "reinforce_loo", "arm", "disarm", "rebar",
                    "relax", "concrete", "straight_through_gumbel")


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
  """Median and spread of wall time of fn() (after one warm-up call)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return {"median_s": statistics.median(times), "min_s": min(times),
          "max_s": max(times)}


class StepServer:
  """A train step timed in another process: `server(n)` -> seconds for n steps.

  The process prints one JSON line when ready ({"ready": ...} or {"error":
  ...}), then answers each line "n" on its stdin with {"seconds": t}.
  """

  def __init__(self, command: Sequence[str], env: Optional[dict] = None):
    self._stderr = tempfile.TemporaryFile(mode="w+")
    self._proc = subprocess.Popen(
        list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=self._stderr, text=True, env=env)
    self.info = self._read()
    if "error" in self.info:
      self.close()
      raise RuntimeError(self.info["error"])

  def _read(self) -> dict:
    for line in self._proc.stdout:
      if line.startswith("{"):
        return json.loads(line)
    self._stderr.seek(0)
    tail = self._stderr.read()[-600:]
    raise RuntimeError(f"step server exited ({self._proc.wait()}): {tail}")

  def __call__(self, steps: int) -> float:
    self._proc.stdin.write(f"{steps}\n")
    self._proc.stdin.flush()
    return float(self._read()["seconds"])

  def close(self):
    if self._proc.poll() is None:
      self._proc.stdin.close()
      try:
        self._proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self._proc.kill()
    self._stderr.close()


def serve(timer: Timer, info: dict):
  """The server side of `StepServer`: answers "n" lines with timings."""
  print(json.dumps({"ready": True, **info}), flush=True)
  for line in sys.stdin:
    if line.strip():
      print(json.dumps({"seconds": timer(int(line))}), flush=True)


def matmul_flops_per_sec(repeats: int, m: int = 1024, k: int = 1024,
                         n: int = 1024, calls: int = 1) -> float:
  """Measured float32 FLOP/s of an (m, k) x (k, n) matmul, at its best.

  The default 1024^3 is the machine's practical roofline. Small shapes run
  `calls` dependent matmuls in one `lax.scan`, as a train step would, so that
  dispatch is not what is timed. A peak, so the fastest of the repeats (a
  median would let a slow spell of the shared machine lower the roofline
  below what a step measured at another moment reaches).
  """
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (m, k))
  b = jax.random.normal(kb, (k, n)) / np.sqrt(k)

  @jax.jit
  def mm(a, b):  # arguments, not constants: XLA must not fold the product
    def body(acc, i):
      return acc + (a * i) @ b, None
    return jax.lax.scan(body, jnp.zeros((m, n)),
                        jnp.arange(1, calls + 1, dtype=a.dtype))[0]

  return 2 * m * k * n * calls / timed(lambda: mm(a, b), repeats)["min_s"]


def peer_server(python: str, estimator: str, batch: int, data: str
                ) -> StepServer:
  """Storchastic's train step for one estimator, served in its own env."""
  return StepServer([python, _PEER_SCRIPT, f"--estimator={estimator}",
                     f"--batch={batch}", f"--data={data}", "--serve"])


def estimator_throughput(repeats: int, num_draws: int) -> list[dict]:
  """Draws/s of each estimator alone on a linear-decoder log-likelihood."""
  key = jax.random.key(1)
  rows = []
  problems = {
      "bernoulli": (estimators.BERNOULLI, (200,)),
      "categorical": (estimators.CATEGORICAL, (20, 10)),
  }
  for family, (registry, shape) in problems.items():
    k1, k2, k3 = jax.random.split(key, 3)
    size = int(np.prod(shape))
    w = jax.random.normal(k1, (size, 784)) / np.sqrt(size)
    x = (jax.random.uniform(k2, (784,)) < 0.3).astype(jnp.float32)
    logits = jax.random.normal(k3, shape)

    def f(b):
      return sbn.bernoulli_log_prob(x, b.reshape(-1) @ w)

    for name, est in registry.items():
      run = jax.jit(jax.vmap(lambda k: est(k, logits, f)))
      keys = jax.random.split(key, num_draws)
      t = timed(lambda: run(keys), repeats)
      rows.append({"family": family, "estimator": name,
                   "draws_per_sec": num_draws / t["median_s"], **t})
  return rows


class TrainStep:
  """The compiled train step of one configuration, with its static costs.

  `self(n)` runs n steps (n a multiple of `steps_per_call`, the scan length of
  one call) and returns the seconds they took, results blocked until ready.
  Attributes: compile_s, flops_per_step (XLA's count), temp_bytes (XLA's
  memory estimate), steps_per_call.
  """

  def __init__(self, model_kind: str, estimator: str, batch: int,
               num_latents: int = 200, num_samples: int = 1,
               steps_per_call: int = 100):
    c = sbn_mnist.get_config()
    c.nonlinear = model_kind == "nonlinear"
    c.estimator, c.batch_size, c.num_latents = estimator, batch, num_latents
    c.iw_samples = num_samples
    exp = train.build(c)
    self._state = train.init_state(exp, 0)
    chunk = train.make_train_chunk(exp, 0)
    self._x = jnp.asarray(exp.dataset.train)
    self._idx = jnp.asarray(np.random.default_rng(0).integers(
        0, self._x.shape[0], (steps_per_call, batch)), jnp.int32)
    t = time.perf_counter()
    self._compiled = chunk.lower(self._state, self._idx, self._x).compile()
    self.compile_s = time.perf_counter() - t
    # XLA counts a while loop's body once, whatever its trip count: take the
    # FLOPs of one step from a one-step scan.
    cost = chunk.lower(self._state, self._idx[:1], self._x).compile(
        ).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops_per_step = float(cost.get("flops", float("nan")))
    mem = self._compiled.memory_analysis()
    self.temp_bytes = getattr(mem, "temp_size_in_bytes", float("nan"))
    self.steps_per_call = steps_per_call

  def __call__(self, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(max(1, steps // self.steps_per_call)):
      self._state, metrics = self._compiled(self._state, self._idx, self._x)
    jax.block_until_ready((self._state, metrics))
    return time.perf_counter() - t


def step_row(kind: str, name: str, batch: int, flops_peak: float,
             against: TrainStep, repeats: int, seconds: float,
             **model) -> dict:
  """One estimator's step, in alternation with `against` (REINFORCE's)."""
  step = TrainStep(kind, name, batch, **model, steps_per_call=_STEPS.value)
  m = interleaved(against, step, repeats, seconds, step.steps_per_call,
                  step.steps_per_call)
  rate = m["b_steps_per_sec"]
  return {"model": kind, "estimator": name, "batch": batch,
          "num_latents": model.get("num_latents", 200),
          "num_samples": model.get("num_samples", 1),
          "steps_per_sec": rate, "compile_s": step.compile_s,
          "flops_per_step": step.flops_per_step, "temp_bytes": step.temp_bytes,
          "roofline_fraction": step.flops_per_step * rate / flops_peak,
          # REINFORCE's steps/s over this one's: the cost in REINFORCE steps.
          "cost": m["ratio"], "cost_q1": m["ratio_q1"],
          "cost_q3": m["ratio_q3"]}


class Program:
  """A jitted program of `steps_per_call` scanned steps on fixed inputs:
  `self(n)` runs n steps' worth of calls, returns the seconds, blocked."""

  def __init__(self, fn: Callable, args: tuple, steps_per_call: int):
    self._compiled = jax.jit(fn).lower(*args).compile()
    self._args = args
    self.steps_per_call = steps_per_call

  def __call__(self, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(max(1, steps // self.steps_per_call)):
      out = self._compiled(*self._args)
    jax.block_until_ready(out)
    return time.perf_counter() - t


def _tree_sum(tree) -> Array:
  """A scalar that reads every leaf (keeps a program's outputs live)."""
  return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(tree))


def phase_programs(name: str, batch: int, n: int) -> dict[str, Program]:
  """The linear SBN step's parts for estimator `name`, each a Program of n
  scanned steps on the inputs the step sees (`breakdown`)."""
  from rebar_jax import gradients  # pylint: disable=g-import-not-at-top
  from rebar_jax.models import protocol as models_protocol  # pylint: disable=g-import-not-at-top
  c = sbn_mnist.get_config()
  c.nonlinear, c.estimator, c.batch_size = False, name, batch
  exp = train.build(c)
  state = train.init_state(exp, 0)
  model, params = exp.model, state.params
  train_x = jnp.asarray(exp.dataset.train)
  idx = jnp.asarray(np.random.default_rng(0).integers(
      0, train_x.shape[0], (n, batch)), jnp.int32)
  root = jax.random.key(0)
  keys = jax.vmap(lambda s: jax.random.split(jax.random.fold_in(root, s)))(
      jnp.arange(n))
  chain = jax.vmap(lambda k: gradients.chain_noise(model, batch, k))(
      keys[:, 1])
  zero = jax.tree.map(jnp.zeros_like, params)
  family = models_protocol.families(model)[0]

  def loop(idx, train_x):  # the scan and its batch gather
    return jax.lax.scan(lambda acc, i: (acc + jnp.sum(train_x[i]), None),
                        0.0, idx)[0]

  def noise(keys):  # the chunk's draw before its loop
    return _tree_sum(jax.vmap(lambda k: gradients.chain_noise(
        model, batch, k).noise)(keys[:, 1]))

  def one_pass(idx, chain, train_x):  # one forward and backward pass
    def body(acc, inp):
      i, nz = inp
      x = train_x[i]

      def loss(p):
        logits = model.apply(p, 0, x, (), method="layer_logits")
        b = family.sample_from_noise(jax.lax.stop_gradient(logits),
                                     nz.noise[0])
        log_p, log_q = model.apply(p, x, (b,), method="log_joint")
        return -jnp.mean(log_p - log_q)
      return jax.tree.map(jnp.add, acc, jax.grad(loss)(params)), None
    return _tree_sum(jax.lax.scan(body, zero, (idx, chain))[0])

  def gradient(idx, keys, chain, train_x):  # the estimator's whole gradient
    def body(acc, inp):  # of the model, and of its own parameters (REBAR's
      i, k, nz = inp  # eta and temperature, RELAX's network, NVIL's baseline)
      grads, est_grads = gradients.model_gradients(
          model, exp.spec, params, state.estimator, train_x[i], k[1],
          state.step, noise=nz)[:2]
      return (jax.tree.map(jnp.add, acc[0], grads),
              acc[1] + _tree_sum(est_grads)), None
    return _tree_sum(jax.lax.scan(body, (zero, 0.0), (idx, keys, chain))[0])

  def adam(opt_state):  # the optimizer's update alone
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)

    def body(carry, _):
      p, o = carry
      updates, o = exp.optimizer.update(grads, o, p)
      return (optax.apply_updates(p, updates), o), None
    return _tree_sum(jax.lax.scan(body, (params, opt_state), None,
                                  length=n)[0][0])

  w_e = jnp.ones((784, 200)) / 784  # the step's four matmuls, at its shapes
  w_d = jnp.ones((200, 784)) / 200

  def matmuls(idx, train_x):  # the gradients accumulated, as one_pass's
    def body(acc, i):
      x = train_x[i]
      h = x @ w_e  # encoder forward                  (B x 784) (784 x 200)
      out = h @ w_d  # decoder forward                (B x 200) (200 x 784)
      return (acc[0] + h.T @ out,  # decoder weights  (200 x B) (B x 784)
              acc[1] + x.T @ h), None  # encoder      (784 x B) (B x 200)
    return _tree_sum(jax.lax.scan(body, (jnp.zeros((200, 784)),
                                         jnp.zeros((784, 200))), idx)[0])

  return {
      "loop": Program(loop, (idx, train_x), n),
      "noise": Program(noise, (keys,), n),
      "one pass": Program(one_pass, (idx, chain, train_x), n),
      "gradient": Program(gradient, (idx, keys, chain, train_x), n),
      "adam": Program(adam, (state.opt_state,), n),
      "matmuls": Program(matmuls, (idx, train_x), n),
  }


def breakdown(names: Sequence[str], batch: int, repeats: int,
              seconds: float, n: int) -> list[dict]:
  """Microseconds per step of the full step and of its parts, by ablation.

  Each part (`phase_programs`) is timed in alternation with the full step
  (`interleaved`); its time is the full step's median time over all the
  pairings divided by the part's median ratio of rates. Derived phases:
  forward and backward = one pass - loop; estimator arithmetic = gradient -
  one pass (its extra evaluations of f and its own work); optimizer = adam
  - loop; residual = full - (noise + gradient + adam - loop); floor =
  matmuls - loop + optimizer.
  """
  rows = []
  for name in names:
    full = TrainStep("linear", name, batch, steps_per_call=n)
    parts = phase_programs(name, batch, n)
    ratios, full_rates = {}, []
    for part, program in parts.items():
      m = interleaved(program, full, repeats, seconds, n, n)
      ratios[part] = m["ratio"]
      full_rates.append(m["b_steps_per_sec"])
    t_full = 1e6 / statistics.median(full_rates)
    t = {part: t_full / r for part, r in ratios.items()}
    row = {"estimator": name, "batch": batch, "full_us": t_full,
           "loop_us": t["loop"], "noise_us": t["noise"],
           "forward_backward_us": t["one pass"] - t["loop"],
           "estimator_us": t["gradient"] - t["one pass"],
           "optimizer_us": t["adam"] - t["loop"],
           "matmuls_us": t["matmuls"] - t["loop"],
           "ratios": ratios}
    row["residual_us"] = t_full - (t["noise"] + t["gradient"] + t["adam"]
                                   - t["loop"])
    row["floor_us"] = row["matmuls_us"] + row["optimizer_us"]
    row["full_over_floor"] = t_full / row["floor_us"]
    rows.append(row)
    print(f"{name:24s} full {t_full:7.1f} us  noise {row['noise_us']:6.1f}  "
          f"fwd+bwd {row['forward_backward_us']:6.1f}  estimator "
          f"{row['estimator_us']:6.1f}  adam {row['optimizer_us']:6.1f}  "
          f"loop {row['loop_us']:6.1f}  residual {row['residual_us']:6.1f}  "
          f"floor {row['floor_us']:6.1f} ({row['full_over_floor']:.2f}x)")
  return rows


def breakdown_markdown(rows: Sequence[dict]) -> str:
  """The breakdown table."""
  lines = [
      "### The step by phase (linear SBN, batch %d)" % rows[0]["batch"], "",
      "Microseconds per step, each part timed in alternation with the full "
      "step (`scripts/benchmark.py --sections=breakdown`). The parts that "
      "compute gradients (forward + backward, the estimator, the matmuls) "
      "add them into their loop's carry, 314k adds a step that the full "
      "step does not make; floor: the step's four B x 784 x 200 matmuls "
      "and Adam alone.", "",
      "| estimator | full | noise | forward + backward | estimator "
      "arithmetic | Adam | loop + batch gather | residual | floor | full / "
      "floor |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    lines.append(
        f"| {r['estimator']} | {r['full_us']:.0f} | {r['noise_us']:.0f} | "
        f"{r['forward_backward_us']:.0f} | {r['estimator_us']:.0f} | "
        f"{r['optimizer_us']:.0f} | {r['loop_us']:.0f} | "
        f"{r['residual_us']:.0f} | {r['floor_us']:.0f} | "
        f"{r['full_over_floor']:.2f} |")
  return "\n".join(lines) + "\n"


def slope(xs, ys) -> float:
  """Least-squares exponent of y ~ x^a on log-log axes."""
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def steps_per_sec(step: TrainStep, repeats: int, seconds: float) -> float:
  """Median steps/s of `step` alone over `repeats` turns of about `seconds`."""
  n = block_steps(step, step.steps_per_call, seconds)
  return statistics.median(n / step(n) for _ in range(repeats))


def export_revision(rev: str, directory: str) -> str:
  """`git archive` of revision `rev` of this checkout, unpacked in `directory`."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  archive = subprocess.run(["git", "-C", root, "archive", "--format=tar", rev],
                           capture_output=True, check=False)
  if archive.returncode != 0:
    raise app.UsageError(f"--compare_to={rev}: git archive failed: "
                         f"{archive.stderr.decode().strip()}")
  subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout,
                 check=True)
  commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", rev],
                          capture_output=True, text=True, check=True)
  return commit.stdout.strip()


COMPARE_SAMPLES = 10  # K of a multi-sample objective in --compare_to


def _is_multisample(name: str) -> bool:
  # Imported here: a revision's step server runs this script on a tree that
  # may predate the registry.
  from rebar_jax.estimators import registry  # pylint: disable=g-import-not-at-top
  return registry.get(name).is_multisample


def compare(rev: str, names: Sequence[str], repeats: int, seconds: float,
            out_dir: str) -> dict:
  """This checkout's train step against revision `rev`'s, in alternation.

  Both run as step servers (`--serve`) of this script; the other one runs
  from a copy of this script inside the exported revision, so it imports that
  revision's rebar_jax and configs.
  """
  here = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(
      __file__)), "describe", "--always", "--dirty"], capture_output=True,
                        text=True, check=False).stdout.strip() or "this tree"
  rows = []
  with tempfile.TemporaryDirectory() as tree:
    commit = export_revision(rev, tree)
    script = os.path.join(tree, "scripts", "_benchmark_here.py")
    os.makedirs(os.path.dirname(script), exist_ok=True)
    with open(os.path.abspath(__file__)) as src, open(script, "w") as dst:
      dst.write(src.read())
    # This script's timing helpers, for a revision from before they were
    # moved into the library (the step server uses nothing else of ours).
    timing = os.path.join(tree, "rebar_jax", "utils", "timing.py")
    if not os.path.exists(timing):
      shutil.copy(os.path.join(os.path.dirname(os.path.dirname(
          os.path.abspath(__file__))), "rebar_jax", "utils", "timing.py"),
                  timing)
    env = dict(os.environ, PYTHONPATH=tree)
    for name in names:
      k = COMPARE_SAMPLES if _is_multisample(name) else 1
      args = [f"--serve={name}", "--serve_batch=24", f"--serve_samples={k}",
              f"--steps_per_call={_STEPS.value}"]
      servers = []
      try:
        servers.append(StepServer([sys.executable, os.path.abspath(__file__),
                                   *args]))
        servers.append(StepServer([sys.executable, script, *args], env=env))
        unit = _STEPS.value
        m = interleaved(servers[0], servers[1], repeats, seconds, unit, unit)
        rows.append({"estimator": name, **m})
        print(f"{name:24s} {here} / {commit}: {m['ratio']:.3f} "
              f"(IQR {m['ratio_q1']:.3f}-{m['ratio_q3']:.3f}), "
              f"{m['a_steps_per_sec']:.0f} vs {m['b_steps_per_sec']:.0f} "
              "steps/s")
      except RuntimeError as e:
        rows.append({"estimator": name, "error": str(e)[-300:]})
        print(f"{name:24s} {e}")
      finally:
        for server in servers:
          server.close()
  result = {"machine": machine_line(), "here": here, "revision": commit,
            "rows": rows, "repeats": repeats, "block_seconds": seconds}
  write_outputs(out_dir, "compare", result, compare_markdown(result))
  return result


def write_outputs(out_dir: str, stem: str, result: dict, md: str):
  """stem.json and stem.md in out_dir; the Markdown is printed too."""
  with open(os.path.join(out_dir, f"{stem}.json"), "w") as fh:
    json.dump(result, fh, indent=2)
  with open(os.path.join(out_dir, f"{stem}.md"), "w") as fh:
    fh.write(md)
  print(md)


def compare_markdown(result: dict) -> str:
  md = [f"Machine: {result['machine']}. Linear SBN 784-200, batch 24: "
        f"{result['here']} against {result['revision']}, timed in alternation "
        f"({result['repeats']} pairs of ~{result['block_seconds']} s turns).",
        "", "| estimator | steps/s here | steps/s there | ratio (median) | "
        "IQR |", "| --- | --- | --- | --- | --- |"]
  for r in result["rows"]:
    if "error" in r:
      md.append(f"| {r['estimator']} | - | - | - ({r['error'][:80]}) | - |")
      continue
    md.append(f"| {r['estimator']} | {r['a_steps_per_sec']:.1f} | "
              f"{r['b_steps_per_sec']:.1f} | {r['ratio']:.3f} | "
              f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f} |")
  return "\n".join(md) + "\n"


def machine_line() -> str:
  device = jax.devices()[0]
  return (f"{device.platform} ({device.device_kind}), {os.cpu_count()} "
          f"host cores, {platform.processor() or platform.machine()}; "
          f"jax {jax.__version__}")


def main(argv):
  del argv
  quick, repeats, seconds = _QUICK.value, _REPEATS.value, _BLOCK_SECONDS.value
  if _SERVE.value:
    step = TrainStep("linear", _SERVE.value, _SERVE_BATCH.value,
                     num_samples=_SERVE_SAMPLES.value,
                     steps_per_call=_STEPS.value)
    serve(step, {"estimator": _SERVE.value, "batch": _SERVE_BATCH.value,
                 "num_samples": _SERVE_SAMPLES.value})
    return
  out_dir = _OUTPUT_DIR.value
  os.makedirs(out_dir, exist_ok=True)
  if _COMPARE_TO.value:
    compare(_COMPARE_TO.value, _ESTIMATORS.value or
            ["reinforce", "disarm", "rebar", "relax"], repeats, seconds,
            out_dir)
    return
  sections = set(_SECTIONS.value)
  unknown = sections - {"alone", "steps", "peer", "scaling", "breakdown"}
  if unknown:
    raise app.UsageError(f"Unknown sections {sorted(unknown)}; choose from "
                         "alone, steps, peer, scaling, breakdown.")
  if "breakdown" in sections:
    rows = breakdown(_ESTIMATORS.value or (
        ["reinforce", "disarm"] if quick else list(_BREAKDOWN)), 24, repeats,
                     seconds, _STEPS.value)
    write_outputs(out_dir, "breakdown", {"machine": machine_line(),
                                         "breakdown": rows,
                                         "repeats": repeats,
                                         "block_seconds": seconds},
                  machine_line() + "\n\n" + breakdown_markdown(rows))
    sections.discard("breakdown")
    if not sections:
      return
  peak = matmul_flops_per_sec(max(repeats, 9))
  machine = machine_line()
  print(f"{machine}\nmatmul roofline: {peak / 1e9:.1f} GFLOP/s")

  peer = _PEER_PYTHON.value if "peer" in sections else ""
  if peer and not os.path.exists(peer):
    print(f"No peer environment at {peer}: run `make peers` to compare with "
          "Storchastic (or pass --peer_python=).")
    peer = ""
  alone = (estimator_throughput(5, 64 if quick else 256)
           if "alone" in sections else [])
  names = _ESTIMATORS.value or (
      ["reinforce", "disarm", "rebar"] if quick else
      sorted(set(estimators.BERNOULLI) | {"nvil"}))
  steps_rows = []
  for kind in ("linear", "nonlinear") if "steps" in sections else ():
    for batch in (24,) if quick else (24, 50):
      reinforce = TrainStep(kind, "reinforce", batch,
                            steps_per_call=_STEPS.value)
      for name in names:
        steps_rows.append(step_row(kind, name, batch, peak, reinforce,
                                   repeats, seconds))
        r = steps_rows[-1]
        print(f"{kind:9s} B={batch:<4d} {name:24s} {r['steps_per_sec']:8.1f} "
              f"steps/s  {r['cost']:.2f} REINFORCE steps  compile "
              f"{r['compile_s']:.1f}s  roofline "
              f"{100 * r['roofline_fraction']:.1f}%")

  peer_rows = []
  if peer:
    peer_data = os.path.join(out_dir, "peer_data.npy")
    np.save(peer_data, np.asarray(train.build(sbn_mnist.get_config())
                                  .dataset.train, np.uint8))
  for name in names if peer else ():
    if name not in _PEER_ESTIMATORS:
      peer_rows.append({"estimator": name, "batch": 24,
                        "error": "no Storchastic equivalent"})
      continue
    ours = TrainStep("linear", name, 24, steps_per_call=_STEPS.value)
    try:
      theirs = peer_server(peer, name, 24, peer_data)
    except RuntimeError as e:
      peer_rows.append({"estimator": name, "batch": 24,
                        "error": str(e)[-300:]})
      print(f"  Storchastic {name}: {e}")
      continue
    try:
      m = interleaved(ours, theirs, repeats, seconds, ours.steps_per_call, 1)
    finally:
      theirs.close()
    peer_rows.append({"estimator": name, "batch": 24, **m,
                      "roofline_fraction": ours.flops_per_step *
                                           m["a_steps_per_sec"] / peak})
    print(f"{name:24s} {m['a_steps_per_sec']:8.1f} vs Storchastic "
          f"{m['b_steps_per_sec']:8.1f} steps/s: {m['ratio']:.1f}x (IQR "
          f"{m['ratio_q1']:.1f}-{m['ratio_q3']:.1f})")

  grids = {
      "batch": [24, 256] if quick else [24, 256, 1024, 4096],
      "num_latents": [50, 200] if quick else [50, 100, 200, 400, 800],
      "num_samples": [2, 10] if quick else [2, 5, 10, 50, 100],
  }
  scaling = {}
  for axis, values in (grids.items() if "scaling" in sections else ()):
    est = "vimco_geometric" if axis == "num_samples" else "rebar"
    times, fractions = [], []
    for v in values:
      kw = dict(num_latents=200, num_samples=1, batch=24)
      kw[axis] = v
      step = TrainStep("linear", est, steps_per_call=max(_STEPS.value // 10,
                                                         5), **kw)
      rate = steps_per_sec(step, repeats, seconds)
      times.append(1 / rate)
      fractions.append(step.flops_per_step * rate / peak)
    scaling[axis] = {"estimator": est, "values": values,
                     "seconds_per_step": times,
                     "roofline_fraction": fractions,
                     "exponent": slope(values, times)}
    print(f"scaling with {axis} ({est}): exponent "
          f"{scaling[axis]['exponent']:.2f}")

  # What bounds the small-batch step: a lone matmul of the step's own shape.
  shape_bound = {}
  batches = {r["batch"] for r in steps_rows}
  if "batch" in scaling:
    batches |= set(scaling["batch"]["values"])
  for b in sorted(batches):
    shape_bound[b] = matmul_flops_per_sec(9, b, 784, 200,
                                          calls=max(10, 20000 // b))
    print(f"matmul {b} x 784 x 200: {shape_bound[b] / 1e9:.1f} GFLOP/s = "
          f"{100 * shape_bound[b] / peak:.1f}% of the roofline")

  result = {"machine": machine, "matmul_flops_per_sec": peak,
            "step_shape_matmul_flops_per_sec": shape_bound,
            "estimators_alone": alone, "train_step": steps_rows,
            "peer_storchastic": peer_rows, "scaling": scaling,
            "repeats": repeats, "block_seconds": seconds}
  write_outputs(out_dir, "benchmark", result, markdown(result))
  if scaling:
    plot(scaling, os.path.join(out_dir, "benchmark.png"))


def markdown(result: dict) -> str:
  """The tables of benchmark.md."""
  peak, bound = result["matmul_flops_per_sec"], result[
      "step_shape_matmul_flops_per_sec"]
  md = [f"Machine: {result['machine']}. Matmul roofline (1024^3, the best "
        f"of 9 in this run) {peak / 1e9:.1f} GFLOP/s. Ratios: medians over "
        f"{result['repeats']} pairs of turns of ~{result['block_seconds']} s "
        "timed in alternation, with the interquartile range (IQR)."]
  if result["estimators_alone"]:
    md += ["", "| family | estimator | draws/s |", "| --- | --- | --- |"]
    md += [f"| {r['family']} | {r['estimator']} | {r['draws_per_sec']:.0f} |"
           for r in result["estimators_alone"]]
  if result["peer_storchastic"]:
    md += ["", "Against Storchastic (PyTorch, CPU), linear SBN 784-200, batch "
           "24, in alternation:", "",
           "| estimator | rebar_jax steps/s | Storchastic steps/s | ratio "
           "(median) | IQR | roofline % |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in result["peer_storchastic"]:
      if "error" in r:
        why = r["error"].split(":")[0]  # the message is in benchmark.json
        md.append(f"| {r['estimator']} | - | - ({why}) | - | - | - |")
        continue
      md.append(f"| {r['estimator']} | {r['a_steps_per_sec']:.1f} | "
                f"{r['b_steps_per_sec']:.1f} | {r['ratio']:.1f}x | "
                f"{r['ratio_q1']:.1f}-{r['ratio_q3']:.1f} | "
                f"{100 * r['roofline_fraction']:.1f} |")
  if result["train_step"]:
    md += ["", "Each step in alternation with REINFORCE's on the same model "
           "and batch. Roofline %: the step's XLA FLOPs per second over the "
           "1024^3 matmul's; shape-bound %: over a lone B x 784 x 200 "
           "matmul's.", "",
           "| model | batch | estimator | steps/s | cost in REINFORCE steps "
           "(IQR) | compile s | roofline % | shape-bound % | XLA temp MB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in result["train_step"]:
    achieved = r["roofline_fraction"] * peak
    md.append(f"| {r['model']} | {r['batch']} | {r['estimator']} | "
              f"{r['steps_per_sec']:.1f} | {r['cost']:.2f} ({r['cost_q1']:.2f}"
              f"-{r['cost_q3']:.2f}) | {r['compile_s']:.1f} | "
              f"{100 * r['roofline_fraction']:.1f} | "
              f"{100 * achieved / bound[r['batch']]:.1f} | "
              f"{r['temp_bytes'] / 2**20:.1f} |")
  if bound:
    md += ["", "| B x 784 x 200 matmul | GFLOP/s | % of roofline |",
           "| --- | --- | --- |"]
    md += [f"| B = {b} | {v / 1e9:.1f} | {100 * v / peak:.1f} |"
           for b, v in bound.items()]
  if result["scaling"]:
    md += ["", "| axis | estimator | values | s/step | exponent | roofline % |",
           "| --- | --- | --- | --- | --- | --- |"]
  for axis, s in result["scaling"].items():
    md.append(f"| {axis} | {s['estimator']} | {s['values']} | "
              f"{[f'{t:.2e}' for t in s['seconds_per_step']]} | "
              f"{s['exponent']:.2f} | "
              f"{[round(100 * f, 1) for f in s['roofline_fraction']]} |")
  return "\n".join(md) + "\n"


def plot(scaling: dict, path: str):
  """Log-log seconds per step against each scaling axis."""
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, (axis, s) in zip(axes, scaling.items()):
    ax.loglog(s["values"], s["seconds_per_step"], "o-")
    ax.set(xlabel=axis, ylabel="seconds per step",
           title=f"{s['estimator']}: exponent {s['exponent']:.2f}")
    ax.grid(alpha=0.3, which="both")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  app.run(main)
