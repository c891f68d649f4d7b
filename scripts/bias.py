r"""The bias of the biased estimators, measured against exact gradients.

One problem per family: D = 6 Bernoulli latents, or 3 categorical variables
of 4 classes, logits in [-3, 3], and three objectives of the sample x
(flattened):

    linear:     w . x
    quadratic:  x^T A x + w . x        (every pair of coordinates interacts)
    sine:       sin(3 w . x + 1)        (curved everywhere)

For every biased estimator (and, as a control, one unbiased one per family)
the relative bias |E[g^] - g| / |g| against the exact gradient g (enumeration
of all 2^6 or 4^3 states), its standard error and the z-score, from
`--num_draws` draws. What the papers lead one to expect: straight-through
(Bernoulli) is exact for a linear f; ReinMax at temperature 1 is exact to
second order, i.e. for the linear and quadratic f (Liu et al. 2023);
straight-through Gumbel, Gumbel-Rao (same mean) and GST are biased even for a
linear f. Writes bias.json, bias.md and bias.png to --output_dir.

  python scripts/bias.py --output_dir=results/bias
"""
import functools
import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from rebar_jax import estimators
from rebar_jax import testing
from rebar_jax.estimators import exact

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/bias", "Output.")
_NUM_DRAWS = flags.DEFINE_integer("num_draws", 2**17, "Draws per estimate.")
_SEED = flags.DEFINE_integer("seed", 0, "Root seed of the draws.")

OBJECTIVES = ("linear", "quadratic", "sine")
# (logits shape, exact gradient, estimators: name -> options)
FAMILIES = {
    "bernoulli": ((6,), exact.bernoulli_gradient, {
        "reinforce_loo": {},  # unbiased: the control
        "concrete": {"temperature": 0.5},
        "straight_through": {},
        "straight_through_gumbel": {"temperature": 1.0},
        "reinmax": {"temperature": 1.0},
    }),
    "categorical": ((3, 4), exact.categorical_gradient, {
        "reinforce_loo": {},
        "gumbel_softmax": {"temperature": 1.0},
        "straight_through_gumbel": {"temperature": 1.0},
        "gumbel_rao": {"temperature": 1.0},
        "reinmax": {"temperature": 1.0},
        "gapped_straight_through": {"temperature": 1.0},
    }),
}


def objective(x, theta):
  """theta["mix"] (one-hot over OBJECTIVES) picks the objective of x."""
  x = x.reshape(-1)
  w, a = theta["w"], theta["a"]
  parts = jnp.stack([w @ x, x @ a @ x + w @ x, jnp.sin(3.0 * (w @ x) + 1.0)])
  return theta["mix"] @ parts


def problem(shape, seed=0):
  """(logits, theta of the linear objective) for a logits shape."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  size = int(np.prod(shape))
  logits = jax.random.uniform(k1, shape, minval=-3.0, maxval=3.0)
  theta = {"w": jax.random.normal(k2, (size,)),
           "a": jax.random.normal(k3, (size, size)) / np.sqrt(size),
           "mix": jnp.zeros(len(OBJECTIVES))}
  return logits, theta


def measure(family: str, num_draws: int, seed: int) -> list[dict]:
  """Rows (estimator, objective, relative bias, its se, z, variance)."""
  shape, exact_gradient, names = FAMILIES[family]
  logits, theta = problem(shape)
  target_of = jax.jit(lambda th: exact_gradient(
      logits, functools.partial(objective, theta=th)))
  rows = []
  for name, options in names.items():
    est = estimators.get(name, family)

    @jax.jit
    def draws(keys, th, est=est, options=options):
      f = functools.partial(objective, theta=th)
      return jax.vmap(lambda k: est(k, logits, f, **options))(keys)

    for i, kind in enumerate(OBJECTIVES):
      th = dict(theta, mix=jnp.eye(len(OBJECTIVES))[i])
      keys = jax.random.split(jax.random.key(seed), num_draws)
      samples = np.concatenate([np.asarray(draws(keys[j:j + 8192], th))
                                for j in range(0, num_draws, 8192)])
      samples = samples.reshape(num_draws, -1).astype(np.float64)
      target = np.asarray(target_of(th), np.float64).ravel()
      mean = samples.mean(0)
      se = samples.std(0, ddof=1) / np.sqrt(num_draws)
      scale = np.linalg.norm(target)
      rows.append({
          "family": family, "estimator": name, "objective": kind,
          "relative_bias": float(np.linalg.norm(mean - target) / scale),
          "relative_se": float(np.linalg.norm(se) / scale),
          "max_z": float(testing.z_scores(samples, target).max()),
          "relative_variance": float(samples.var(0).sum() / scale**2)})
      print(rows[-1])
  return rows


def markdown(rows: list[dict], num_draws: int) -> str:
  lines = [f"Relative bias |E[g^] - g| / |g| (standard error) and max z-score "
           f"over the coordinates, from {num_draws} draws; relative variance "
           "sum Var(g^) / |g|^2.", ""]
  for family in FAMILIES:
    lines += [f"**{family}**", "",
              "| estimator | " + " | ".join(
                  f"{k}: bias (se), z, variance" for k in OBJECTIVES) + " |",
              "| --- |" + " --- |" * len(OBJECTIVES)]
    for name in FAMILIES[family][2]:
      cells = []
      for kind in OBJECTIVES:
        r = next(r for r in rows if (r["family"], r["estimator"],
                                     r["objective"]) == (family, name, kind))
        cells.append(f"{r['relative_bias']:.4f} ({r['relative_se']:.4f}), "
                     f"{r['max_z']:.1f}, {r['relative_variance']:.3g}")
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
  fig, axes = plt.subplots(1, len(FAMILIES), figsize=(12, 4))
  for ax, family in zip(axes, FAMILIES):
    names = list(FAMILIES[family][2])
    width = 0.8 / len(OBJECTIVES)
    for i, kind in enumerate(OBJECTIVES):
      got = [next(r for r in rows if (r["family"], r["estimator"],
                                      r["objective"]) == (family, n, kind))
             for n in names]
      ax.bar(np.arange(len(names)) + i * width,
             [max(r["relative_bias"], 1e-4) for r in got], width,
             yerr=[r["relative_se"] for r in got], label=kind)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(names)) + width, names, rotation=30,
                  ha="right")
    ax.set(title=family, ylabel="relative bias (floor 1e-4)")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  if _NUM_DRAWS.value % 8192:
    raise app.UsageError("--num_draws must be a multiple of 8192.")
  rows = [r for family in FAMILIES
          for r in measure(family, _NUM_DRAWS.value, _SEED.value)]
  with open(os.path.join(_OUTPUT_DIR.value, "bias.json"), "w") as fh:
    json.dump(rows, fh, indent=2)
  md = markdown(rows, _NUM_DRAWS.value)
  with open(os.path.join(_OUTPUT_DIR.value, "bias.md"), "w") as fh:
    fh.write(md + "\n")
  plot(rows, os.path.join(_OUTPUT_DIR.value, "bias.png"))
  print(md)


if __name__ == "__main__":
  app.run(main)
