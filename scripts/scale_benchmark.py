r"""Scale-out costs on this machine: sweep throughput, engine overhead, devices.

  python scripts/scale_benchmark.py --output_dir=results/scale

Measured side by side in one run:
* Sweep throughput: the same trials (linear SBN, 2 estimators x 2 learning
  rates, --num_steps each) run (a) one after another as bare
  `python -m rebar_jax.train` processes, (b) as a sweep on a local Ray
  instance with one core (trials one after another), (c) as a sweep with
  --num_cpus cores (trials side by side). Throughput is trial-steps per
  second of wall time, including each trial's start-up, compilation and
  evaluation; the engine's overhead per trial is ((b) - (a)) / trials. Every
  variant first runs once with 100 steps so that all of them read their
  programs from a warm persistent compilation cache.
* Devices: the median time of a 50-step chunk of the jitted train step with
  the batch sharded over 4 fake CPU devices (--xla_force_host_platform_
  device_count) against one device, in one process, alternating.
Writes scale.md and scale.json.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/scale", "Output.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 3000, "Steps per trial.")
_NUM_CPUS = flags.DEFINE_integer("num_cpus", 2, "Cores of the side-by-side "
                                 "sweep.")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed chunks per device "
                                "count.")

GRID = ("--grid=estimator=nvil,disarm", "--grid=learning_rate=1e-3,3e-4")
TRIALS = [(e, lr) for e in ("nvil", "disarm") for lr in ("1e-3", "3e-4")]

DEVICES = textwrap.dedent("""
    import json, time
    import jax, jax.numpy as jnp, numpy as np
    from configs import sbn_linear
    from rebar_jax import parallel, train
    c = sbn_linear.get_config()
    exp = train.build(c)
    idx = train.batch_indices(0, exp.dataset.train.shape[0], c.batch_size, 0,
                              50)
    runs = {}
    for n in (1, 4):
      mesh = parallel.data_mesh(n)
      chunk = train.make_train_chunk(exp, 0, mesh=mesh)
      inputs = parallel.replicate((jnp.asarray(idx),
                                   jnp.asarray(exp.dataset.train)), mesh)
      state = parallel.replicate(train.init_state(exp, 0), mesh)
      state, _ = chunk(state, *inputs)
      jax.block_until_ready(state)
      runs[n] = [chunk, inputs, state, []]
    for _ in range(%d):
      for n, run in runs.items():
        chunk, inputs, state, times = run
        tic = time.perf_counter()
        state, _ = chunk(state, *inputs)
        jax.block_until_ready(state)
        times.append((time.perf_counter() - tic) / 50)
        run[2] = state
    print(json.dumps({n: float(np.median(r[3])) for n, r in runs.items()}))
""")


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=ROOT, **extra)
  return env


def _run(command, cwd, **env):
  tic = time.perf_counter()
  done = subprocess.run(command, cwd=cwd, env=_env(**env), capture_output=True,
                        text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"{command} failed:\n{done.stderr[-3000:]}")
  return time.perf_counter() - tic


def bare(tmp, steps, tag):
  total = 0.0
  for estimator, lr in TRIALS:
    total += _run([sys.executable, "-m", "rebar_jax.train",
                   f"--config={ROOT}/configs/sbn_linear.py",
                   f"--workdir={tmp}/{tag}/{estimator}-{lr}",
                   f"--config.estimator={estimator}",
                   f"--config.learning_rate={lr}",
                   f"--config.num_steps={steps}",
                   f"--config.eval_every={steps}",
                   f"--config.checkpoint_every={steps}",
                   "--config.progress_bar=false"], tmp)
  return total


def sweep(tmp, steps, tag, num_cpus):
  return _run([sys.executable, f"{ROOT}/scripts/sweep.py",
               f"--config={ROOT}/configs/sbn_linear.py",
               f"--sweep_dir={tmp}/{tag}", *GRID,
               f"--num_cpus={num_cpus}", f"--config.num_steps={steps}",
               f"--config.eval_every={steps}",
               f"--config.checkpoint_every={steps}"], tmp)


def report(wall: dict[str, float], devices: dict[str, float], steps: int,
           repeats: int) -> str:
  """The Markdown tables: throughput against the bare runs, the engine's
  overhead per trial, and the step time per device count.

  wall: variant -> seconds, the bare variant first and "sweep, 1 core" among
  them; devices: device count (str) -> median seconds per step, "1" among
  them.
  """
  trial_steps = steps * len(TRIALS)
  base = wall["bare, one after another"]
  md = [f"{len(TRIALS)} trials of the linear SBN (nvil, disarm x lr 1e-3, "
        f"3e-4), {steps} steps each, batch 24; wall time includes each "
        "trial's start-up, compilation (warm persistent cache) and "
        "evaluation.", "",
        "| variant | wall (s) | trial-steps / s | vs bare |",
        "| --- | --- | --- | --- |"]
  for name, seconds in wall.items():
    md.append(f"| {name} | {seconds:.1f} | {trial_steps / seconds:.0f} | "
              f"{base / seconds:.2f}x |")
  overhead = (wall["sweep, 1 core"] - base) / len(TRIALS)
  md += ["", f"Engine overhead per trial (sweep on 1 core minus bare, per "
         f"trial): {overhead:.1f} s.", "",
         "Train step, linear SBN, REBAR, batch 24, median of "
         f"{repeats} chunks of 50 steps:", "",
         "| devices | ms / step | vs 1 device |", "| --- | --- | --- |"]
  for n, sec in devices.items():
    md.append(f"| {n} | {sec * 1e3:.2f} | {sec / devices['1']:.2f}x |")
  return "\n".join(md) + "\n"


def main(argv):
  del argv
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  steps, cpus = _NUM_STEPS.value, _NUM_CPUS.value
  tmp = tempfile.mkdtemp(prefix="scale_benchmark_")
  cache = os.path.join(tmp, "xla_cache")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  try:
    print("warming the compilation cache ...", flush=True)
    bare(tmp, 100, "warm-bare")
    sweep(tmp, 100, "warm-sweep", cpus)
    print("timing ...", flush=True)
    wall = {"bare, one after another": bare(tmp, steps, "bare"),
            "sweep, 1 core": sweep(tmp, steps, "sweep1", 1),
            f"sweep, {cpus} cores": sweep(tmp, steps, f"sweep{cpus}", cpus)}
    done = subprocess.run([sys.executable, "-c", DEVICES % _REPEATS.value],
                          cwd=ROOT, env=_env(
                              XLA_FLAGS="--xla_force_host_platform_device_"
                              "count=4"), capture_output=True, text=True,
                          check=True)
    devices = json.loads(done.stdout.strip().splitlines()[-1])
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  text = report(wall, devices, steps, _REPEATS.value)
  with open(os.path.join(_OUTPUT_DIR.value, "scale.md"), "w") as fh:
    fh.write(text)
  with open(os.path.join(_OUTPUT_DIR.value, "scale.json"), "w") as fh:
    json.dump({"wall_s": wall, "steps": steps, "trials": len(TRIALS),
               "device_step_s": devices}, fh, indent=2)
  print(text)


if __name__ == "__main__":
  app.run(main)
