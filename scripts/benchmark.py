r"""Speed of the estimators and of the SBN train step, on whatever backend JAX has.

  python scripts/benchmark.py --output_dir=results/benchmark
  python scripts/benchmark.py --quick   # small grids, a smoke run

Measures, with warm-up, `--repeats` timed repeats, medians and spread, every
result blocked until ready:
  1. every registered estimator alone: gradient draws per second for 200
     Bernoulli latents (20 x 10 categorical) with a linear-decoder
     log-likelihood as f, jitted and vmapped over draws;
  2. the full train step (`lax.scan` over steps, as in training) for the
     linear and nonlinear SBN at batch 24 and 50, each estimator: steps per
     second, compile time, and XLA's memory estimate of the compiled step;
  3. how cost grows with batch (24 -> 4096), latents (50 -> 800) and samples
     K (VIMCO, 1 -> 100), with the fitted log-log exponent;
  4. efficiency: XLA's FLOP count of the step over its time, as a fraction of
     the dense matmul FLOP/s measured on the same machine in the same run
     (1024 x 1024 x 1024, the practical roofline); beside it, the FLOP/s of a
     lone matmul of the step's own shape (B x 784 x 200), which bounds what a
     step made of such matmuls can reach at small B;
  5. the peer, side by side: the same linear SBN, estimator and batch in
     Storchastic (PyTorch), run by `scripts/peers/storchastic_sbn.py` in the
     environment `make peers` builds (--peer_python), right after our own
     measurement of that estimator; the ratio of steps per second.
Writes benchmark.json, benchmark.md and benchmark.png to --output_dir.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import sbn_mnist  # pylint: disable=g-import-not-at-top
from rebar_jax import estimators
from rebar_jax import train
from rebar_jax.models import sbn

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/benchmark", "Output.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per measurement.")
_QUICK = flags.DEFINE_bool("quick", False, "Small grids (a smoke run).")
_STEPS = flags.DEFINE_integer("steps_per_call", 100, "Scanned steps per call.")
_SECTIONS = flags.DEFINE_list(
    "sections", ["alone", "steps", "scaling"],
    "Which measurements: alone (estimators by themselves), steps (train step "
    "table), scaling. With steps left out, the peer comparison still runs "
    "on the linear SBN at batch 24.")
_PEER_PYTHON = flags.DEFINE_string(
    "peer_python", ".venv-peers/bin/python",
    "Python of the environment with PyTorch + Storchastic (`make peers`); "
    "empty to skip the peer comparison.")

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


def matmul_flops_per_sec(repeats: int, m: int = 1024, k: int = 1024,
                         n: int = 1024, calls: int = 1) -> float:
  """Measured float32 FLOP/s of an (m, k) x (k, n) matmul.

  The default 1024^3 is the machine's practical roofline. Small shapes run
  `calls` dependent matmuls in one `lax.scan`, as a train step would, so that
  dispatch is not what is timed.
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

  return 2 * m * k * n * calls / timed(lambda: mm(a, b), repeats)["median_s"]


def peer_steps_per_sec(python: str, estimator: str, batch: int, data: str,
                       steps: int, repeats: int) -> dict:
  """Storchastic's steps/s for one estimator (a subprocess in its own env)."""
  cmd = [python, _PEER_SCRIPT, f"--estimator={estimator}", f"--batch={batch}",
         f"--data={data}", f"--steps={steps}", f"--repeats={repeats}"]
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         check=False)
  except subprocess.TimeoutExpired:
    return {"error": "timed out after 900 s"}
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  if not lines:
    return {"error": f"exit {out.returncode}: {out.stderr.strip()[-300:]}"}
  return json.loads(lines[-1])


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


def train_step(model_kind: str, estimator: str, batch: int, num_latents: int,
               num_samples: int, steps: int, repeats: int, flops_peak: float
               ) -> dict:
  """Steps/s, compile time, memory and roofline fraction of the train step."""
  c = sbn_mnist.get_config()
  c.nonlinear = model_kind == "nonlinear"
  c.estimator, c.batch_size, c.num_latents = estimator, batch, num_latents
  c.iw_samples = num_samples
  exp = train.build(c)
  state = train.init_state(exp, 0)
  chunk = train.make_train_chunk(exp, 0)
  x = jnp.asarray(exp.dataset.train)
  idx = jnp.asarray(np.random.default_rng(0).integers(
      0, x.shape[0], (steps, batch)), jnp.int32)
  t = time.perf_counter()
  compiled = chunk.lower(state, idx, x).compile()
  compile_s = time.perf_counter() - t
  # XLA counts a while loop's body once, whatever its trip count: take the
  # FLOPs of one step from a one-step scan.
  cost = chunk.lower(state, idx[:1], x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  mem = compiled.memory_analysis()
  temp_bytes = getattr(mem, "temp_size_in_bytes", float("nan"))
  holder = [state]

  def call():
    holder[0], metrics = compiled(holder[0], idx, x)
    return metrics

  tm = timed(call, repeats)
  step_s = tm["median_s"] / steps
  return {"model": model_kind, "estimator": estimator, "batch": batch,
          "num_latents": num_latents, "num_samples": num_samples,
          "steps_per_sec": 1 / step_s, "compile_s": compile_s,
          "flops_per_step": flops, "temp_bytes": temp_bytes,
          "roofline_fraction": flops / step_s / flops_peak,
          "spread": (tm["max_s"] - tm["min_s"]) / tm["median_s"]}


def slope(xs, ys) -> float:
  """Least-squares exponent of y ~ x^a on log-log axes."""
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv):
  del argv
  quick, repeats, steps = _QUICK.value, _REPEATS.value, _STEPS.value
  out_dir = _OUTPUT_DIR.value
  os.makedirs(out_dir, exist_ok=True)
  device = jax.devices()[0]
  peak = matmul_flops_per_sec(repeats)
  machine = (f"{device.platform} ({device.device_kind}), {os.cpu_count()} "
             f"host cores, {platform.processor() or platform.machine()}; "
             f"jax {jax.__version__}")
  print(f"{machine}\nmatmul roofline: {peak / 1e9:.1f} GFLOP/s")

  peer = _PEER_PYTHON.value
  if peer and not os.path.exists(peer):
    print(f"No peer environment at {peer}: run `make peers` to compare with "
          "Storchastic (or pass --peer_python=).")
    peer = ""
  peer_data = os.path.join(out_dir, "peer_data.npy")
  if peer:
    np.save(peer_data, np.asarray(train.build(sbn_mnist.get_config())
                                  .dataset.train, np.uint8))

  sections = set(_SECTIONS.value)
  unknown = sections - {"alone", "steps", "scaling"}
  if unknown:
    raise app.UsageError(f"Unknown sections {sorted(unknown)}; choose from "
                         "alone, steps, scaling.")
  alone = (estimator_throughput(repeats, 64 if quick else 256)
           if "alone" in sections else [])
  names = (["reinforce", "disarm", "rebar"] if quick else
           sorted(set(estimators.BERNOULLI) | {"nvil"}))
  steps_rows, peer_rows = [], []
  full = "steps" in sections
  for kind in ("linear", "nonlinear") if full else ("linear",):
    for batch in ((24,) if quick or not full else (24, 50)):
      for name in names:
        steps_rows.append(train_step(kind, name, batch, 200, 1, steps, repeats,
                                     peak))
        r = steps_rows[-1]
        print(f"{kind:9s} B={batch:<4d} {name:24s} {r['steps_per_sec']:8.1f} "
              f"steps/s  compile {r['compile_s']:.1f}s  roofline "
              f"{100 * r['roofline_fraction']:.1f}%")
        if kind == "linear" and batch == 24 and peer:
          theirs = (peer_steps_per_sec(peer, name, batch, peer_data, steps,
                                       repeats)
                    if name in _PEER_ESTIMATORS else
                    {"error": "no Storchastic equivalent"})
          peer_rows.append({"estimator": name, "batch": batch,
                            "ours_steps_per_sec": r["steps_per_sec"],
                            **{f"peer_{k}": v for k, v in theirs.items()}})
          if "steps_per_sec" in theirs:
            peer_rows[-1]["ratio"] = r["steps_per_sec"] / theirs["steps_per_sec"]
            print(f"  Storchastic {theirs['steps_per_sec']:8.1f} steps/s: "
                  f"ratio {peer_rows[-1]['ratio']:.1f}")
          else:
            print(f"  Storchastic: {theirs['error']}")

  grids = {
      "batch": [24, 256] if quick else [24, 64, 256, 1024, 4096],
      "num_latents": [50, 200] if quick else [50, 100, 200, 400, 800],
      "num_samples": [2, 10] if quick else [2, 5, 10, 50, 100],
  }
  scaling = {}
  for axis, values in (grids.items() if "scaling" in sections else ()):
    est = "vimco_geometric" if axis == "num_samples" else "rebar"
    rows = []
    for v in values:
      kw = dict(batch=24, num_latents=200, num_samples=1)
      kw[axis] = v
      rows.append(train_step("linear", est, kw["batch"], kw["num_latents"],
                             kw["num_samples"], max(steps // 10, 5), repeats,
                             peak))
    times = [1 / r["steps_per_sec"] for r in rows]
    scaling[axis] = {"estimator": est, "values": values,
                     "seconds_per_step": times,
                     "roofline_fraction": [r["roofline_fraction"]
                                           for r in rows],
                     "exponent": slope(values, times)}
    print(f"scaling with {axis} ({est}): exponent "
          f"{scaling[axis]['exponent']:.2f}")

  # What bounds the small-batch step: a lone matmul of the step's own shape.
  shape_bound = {}
  batches = {r["batch"] for r in steps_rows}
  if "batch" in scaling:
    batches |= set(scaling["batch"]["values"])
  for b in sorted(batches):
    shape_bound[b] = matmul_flops_per_sec(repeats, b, 784, 200,
                                          calls=max(10, 20000 // b))
    print(f"matmul {b} x 784 x 200: {shape_bound[b] / 1e9:.1f} GFLOP/s = "
          f"{100 * shape_bound[b] / peak:.1f}% of the roofline")

  result = {"machine": machine, "matmul_flops_per_sec": peak,
            "step_shape_matmul_flops_per_sec": shape_bound,
            "estimators_alone": alone, "train_step": steps_rows,
            "peer_storchastic": peer_rows, "scaling": scaling}
  with open(os.path.join(out_dir, "benchmark.json"), "w") as fh:
    json.dump(result, fh, indent=2)
  md = markdown(result, repeats)
  with open(os.path.join(out_dir, "benchmark.md"), "w") as fh:
    fh.write(md)
  print(md)
  if scaling:
    plot(scaling, os.path.join(out_dir, "benchmark.png"))


def markdown(result: dict, repeats: int) -> str:
  """The tables of benchmark.md."""
  peak, bound = result["matmul_flops_per_sec"], result[
      "step_shape_matmul_flops_per_sec"]
  steps_rows = result["train_step"]
  md = [f"Machine: {result['machine']}. Matmul roofline (1024^3, measured in "
        f"this run) {peak / 1e9:.1f} GFLOP/s. Medians of {repeats} repeats."]
  if result["estimators_alone"]:
    md += ["", "| family | estimator | draws/s |", "| --- | --- | --- |"]
    md += [f"| {r['family']} | {r['estimator']} | {r['draws_per_sec']:.0f} |"
           for r in result["estimators_alone"]]
  if result["peer_storchastic"]:
    md += ["", "Side by side with Storchastic (PyTorch, CPU), linear SBN "
           "784-200, batch 24, in this run:", "",
           "| estimator | rebar_jax steps/s | Storchastic steps/s | ratio |",
           "| --- | --- | --- | --- |"]
    for r in result["peer_storchastic"]:
      theirs = (f"{r['peer_steps_per_sec']:.1f}" if "ratio" in r else
                f"- ({r['peer_error']})")
      ratio = f"{r['ratio']:.1f}x" if "ratio" in r else "-"
      md.append(f"| {r['estimator']} | {r['ours_steps_per_sec']:.1f} | "
                f"{theirs} | {ratio} |")
  reinforce = {(r["model"], r["batch"]): r["steps_per_sec"]
               for r in steps_rows if r["estimator"] == "reinforce"}
  md += ["", "Roofline %: the step's XLA FLOPs per second over the 1024^3 "
         "matmul's; shape-bound %: over a lone B x 784 x 200 matmul's.", "",
         "| model | batch | estimator | steps/s | cost / REINFORCE step "
         "| compile s | roofline % | shape-bound % | XLA temp MB |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in steps_rows:
    ratio = reinforce[(r["model"], r["batch"])] / r["steps_per_sec"]
    achieved = r["roofline_fraction"] * peak
    md.append(f"| {r['model']} | {r['batch']} | {r['estimator']} | "
              f"{r['steps_per_sec']:.1f} | {ratio:.2f} | {r['compile_s']:.1f} | "
              f"{100 * r['roofline_fraction']:.1f} | "
              f"{100 * achieved / bound[r['batch']]:.1f} | "
              f"{r['temp_bytes'] / 2**20:.1f} |")
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
