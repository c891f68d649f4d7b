r"""Signal-to-noise ratio of inference-network gradients against K (OVIS Fig. 1).

  python scripts/snr_vs_k.py --output_dir=results/snr_vs_k

On the linear-Gaussian model of Rainforth et al. (2018)
(`rebar_jax.models.LinearGaussian`: p(z) = N(mu, I), p(x | z) = N(z, I),
q(z | x) = N(A x + b, 2/3 I), D = 20), with phi = (A, b) at the optimum
A = I/2, b = mu/2 perturbed by N(0, `--perturbation`^2) noise and
`--num_data` data points x_n ~ N(mu, 2 I) (the gradient is their mean),
every estimator of grad_phi E[L_K] is drawn `--num_draws` times at each K,
and per coordinate of phi (all of them, or the D coordinates of b with
`--coordinates=bias`)

    SNR = |E g| / (standard deviation of g),

averaged over the coordinates (the papers' summary), with the mean
per-coordinate variance. The draws' own mean cannot estimate |E g| once the
SNR falls below ~1/sqrt(num_draws) (it measures its own noise instead), so
for the estimators unbiased for grad E[L_K] E g is the common mean of
`--reference_draws` DReG draws (the lowest-variance unbiased estimator); for
a biased one (OVIS-gamma>0, RWS) it is its own mean, with its squared
standard error subtracted (|E g|^2 ~ mean^2 - var / n, clipped at 0). The slope of log SNR against log K, fitted over the
Ks, is the result: the theory says -1/2 for the pathwise IWAE gradient
(Rainforth et al. 2018, Thm. 1) and +1/2 for DReG (Tucker et al. 2019) and for
OVIS's control variates (Lievin et al. 2020, Sec. 4). OVIS-MC uses
`--aux_samples` S auxiliary chains at every K. Writes snr_vs_k.json,
snr_vs_k.md and snr_vs_k.png (SNR and variance against K, log-log).

The OVIS authors' extended Fig. 1 (vlievin/ovis, asymptotic_variance.py and
experiments/asymptotic-variance-extended.json) measures the gradient of the
mean over 1024 data points, on the bias coordinates only, at K = 3 to 1000:

  python scripts/snr_vs_k.py --num_data=1024 --coordinates=bias \
      --ks=3,12,54,233 --output_dir=results/snr_vs_k_ovis
"""
import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
from jax import flatten_util
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rebar_jax import gradients  # pylint: disable=g-import-not-at-top
from rebar_jax.estimators import registry  # pylint: disable=g-import-not-at-top
from rebar_jax.models import gaussian as gaussian_models  # pylint: disable=g-import-not-at-top

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/snr_vs_k", "Output.")
_DIM = flags.DEFINE_integer("dim", 20, "D, the size of x and z.")
_KS = flags.DEFINE_list("ks", ["2", "5", "10", "20", "50", "100", "200", "500",
                               "1000"], "The numbers of samples K.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["iwae_pathwise", "dreg", "iwae_reinforce",
                   "vimco_geometric", "ovis_mc", "ovis_gamma1"],
    "Estimators of grad E[L_K]: names of the registry's multi-sample and "
    "reparameterised objectives.")
_NUM_DRAWS = flags.DEFINE_integer("num_draws", 1000, "Draws per estimator and K.")
_REFERENCE_DRAWS = flags.DEFINE_integer(
    "reference_draws", 10000, "DReG draws per K behind the common mean of "
    "the unbiased estimators.")
_AUX_SAMPLES = flags.DEFINE_integer("aux_samples", 10,
                                    "S, OVIS-MC's auxiliary chains.")
_PERTURBATION = flags.DEFINE_float(
    "perturbation", 0.01, "Standard deviation of the noise added to phi's "
    "optimum (Rainforth et al. 2018).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of mu, x, the perturbation and "
                             "the draws.")
_NUM_DATA = flags.DEFINE_integer(
    "num_data", 1, "Data points x_n ~ N(mu, 2 I); each draw is the gradient "
    "of the mean over them (the OVIS authors: 1024).")
_COORDINATES = flags.DEFINE_enum(
    "coordinates", "all", ["all", "bias"], "The coordinates of phi averaged "
    "over: all of (A, b), or b's D (the OVIS authors' choice).")
_MAX_CHUNK_ELEMENTS = 2**25  # floats of the (S,) K x K work held at once


def problem(dim: int, perturbation: float, seed: int, num_data: int = 1):
  """The model, its variables near q's optimum, and data x (num_data, D)."""
  k_mu, k_x, k_phi = jax.random.split(jax.random.key(seed), 3)
  mu = jax.random.normal(k_mu, (dim,))
  x = mu + jnp.sqrt(2.0) * jax.random.normal(k_x, (num_data, dim))
  variables = gaussian_models.linear_gaussian_optimum(mu)
  enc = variables["params"]["encoder"]
  leaves, tree = jax.tree.flatten(enc)
  keys = jax.random.split(k_phi, len(leaves))
  enc = jax.tree.unflatten(tree, [
      a + perturbation * jax.random.normal(k, a.shape)
      for a, k in zip(leaves, keys)])
  variables = {"params": {"prior_mean": mu, "encoder": enc}}
  return gaussian_models.LinearGaussian(dim=dim), variables, x


def encoder_gradient_draws(model, variables, x, name: str, k: int,
                           num_draws: int, aux_samples: int, key,
                           coordinates: str = "all") -> np.ndarray:
  """(num_draws, P) draws of the estimator's gradient w.r.t. phi = (A, b)
  (P = D^2 + D), or w.r.t. b alone (P = D) for coordinates="bias"; each the
  gradient of the mean over x's rows."""
  spec = gradients.EstimatorSpec(
      name, families=("gaussian",), iw_samples=k,
      aux_samples=aux_samples if name == "ovis_mc" else 0)
  state = spec.init(None, model)

  def one(key_):
    g = gradients.model_gradients(model, spec, variables, state, x, key_)[0]
    enc = g["params"]["encoder"]
    return flatten_util.ravel_pytree(
        enc["bias"] if coordinates == "bias" else enc)[0]

  work = ((k + spec.aux_samples) * k + k * model.dim) * x.shape[0]
  chunk = int(max(1, min(num_draws, _MAX_CHUNK_ELEMENTS // work)))
  draw = jax.jit(jax.vmap(one))
  keys = jax.random.split(key, num_draws)
  out = [np.asarray(draw(keys[i:i + chunk]))
         for i in range(0, num_draws, chunk)]
  return np.concatenate(out)


# The objectives this script draws (surrogates of K chains' log-weights), and
# those unbiased for grad E[L_K].
OBJECTIVES = (registry.names(kind=registry.MULTISAMPLE)
              + registry.names(kind=registry.REPARAMETERISED))
UNBIASED = {n for n in OBJECTIVES
            if registry.get(n).unbiased_for == registry.GRAD_IW}


def snr_and_variance(draws: np.ndarray, mean=None) -> tuple[float, float]:
  """Mean over coordinates of |E g| / std(g), and of the variance.

  Args:
    draws: (n, P).
    mean: (P,) E g known more precisely (the unbiased estimators' common
      mean); None: the draws' own mean less its noise, sqrt(max(mean^2 -
      var / n, 0)).
  """
  draws = np.asarray(draws, np.float64)
  var = draws.var(0, ddof=1)
  if mean is None:
    signal = np.sqrt(np.maximum(draws.mean(0)**2 - var / len(draws), 0.0))
  else:
    signal = np.abs(np.asarray(mean, np.float64))
  snr = signal / np.where(var > 0, np.sqrt(var), np.inf)
  return float(np.mean(snr)), float(np.mean(var))


def fitted_slope(ks, values) -> float:
  """Least-squares slope of log(values) against log(K)."""
  return float(np.polyfit(np.log(ks), np.log(values), 1)[0])


def markdown(results: dict, ks: list[int], meta: dict) -> str:
  lines = [
      f"SNR of the inference-network gradient against K, linear-Gaussian "
      f"model (D = {meta['dim']}), {meta['num_draws']} draws per point, "
      f"each the gradient of the mean over {meta.get('num_data', 1)} data "
      f"point(s), "
      f"phi perturbed by N(0, {meta['perturbation']}^2), OVIS-MC with S = "
      f"{meta['aux_samples']}. Mean over the {meta['num_params']} "
      f"coordinates ({'b' if meta.get('coordinates') == 'bias' else 'A, b'})"
      " of |E g| / std(g), E g the mean of "
      f"{meta['reference_draws']} DReG draws for the unbiased estimators "
      "(marked *), the draws' own noise-corrected mean for the others; "
      "slopes are least-squares fits of log SNR (and log variance) against "
      "log K.", "",
      "| estimator | " + " | ".join(f"K={k}" for k in ks)
      + " | SNR slope | variance slope |",
      "| --- |" + " --- |" * (len(ks) + 2)]
  for name, r in results.items():
    mark = "*" if name in UNBIASED else ""
    lines.append(f"| {name}{mark} | " + " | ".join(f"{s:.3g}" for s in r["snr"])
                 + f" | {r['snr_slope']:+.2f} | {r['variance_slope']:+.2f} |")
  return "\n".join(lines) + "\n"


def plot(results: dict, ks: list[int], path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, r in results.items():
    axes[0].loglog(ks, r["snr"], marker="o", ms=3,
                   label=f"{name} ({r['snr_slope']:+.2f})")
    axes[1].loglog(ks, r["variance"], marker="o", ms=3, label=name)
  axes[0].set(xlabel="K", ylabel="SNR (mean over phi)",
              title="Inference-network SNR (fitted slope)")
  axes[1].set(xlabel="K", ylabel="variance (mean over phi)",
              title="Inference-network gradient variance")
  for ax in axes:
    ax.grid(alpha=0.3, which="both")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  ks = [int(k) for k in _KS.value]
  if min(ks) < 2 or len(ks) < 2:
    raise app.UsageError("--ks needs at least two values, each >= 2 (the "
                         "score-function estimators need K >= 2).")
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  model, variables, x = problem(_DIM.value, _PERTURBATION.value, _SEED.value,
                                _NUM_DATA.value)
  num_params = _DIM.value * (1 if _COORDINATES.value == "bias"
                             else _DIM.value + 1)
  unknown = set(_ESTIMATORS.value) - set(OBJECTIVES)
  if unknown:
    raise app.UsageError(f"Unknown estimators {sorted(unknown)}.")
  reference = {}
  for k in ks:
    reference[k] = encoder_gradient_draws(
        model, variables, x, "dreg", k, _REFERENCE_DRAWS.value, 0,
        jax.random.fold_in(jax.random.key(_SEED.value + 2), k),
        _COORDINATES.value).mean(0)
  print(f"Reference: the mean of {_REFERENCE_DRAWS.value} DReG draws at each "
        "K.", flush=True)
  results = {}
  for e, name in enumerate(_ESTIMATORS.value):
    snrs, variances, seconds = [], [], []
    for k in ks:
      start = time.perf_counter()
      draws = encoder_gradient_draws(
          model, variables, x, name, k, _NUM_DRAWS.value, _AUX_SAMPLES.value,
          jax.random.fold_in(jax.random.key(_SEED.value + 1), 1000 * e + k),
          _COORDINATES.value)
      if not np.all(np.isfinite(draws)):
        raise RuntimeError(f"{name} at K = {k} gave non-finite gradients.")
      snr, var = snr_and_variance(
          draws, reference[k] if name in UNBIASED else None)
      snrs.append(snr)
      variances.append(var)
      seconds.append(time.perf_counter() - start)
      print(f"{name:16s} K={k:5d}  SNR {snr:9.4g}  variance {var:9.4g}  "
            f"({seconds[-1]:.1f} s)", flush=True)
    results[name] = {"snr": snrs, "variance": variances, "seconds": seconds,
                     "snr_slope": fitted_slope(ks, snrs),
                     "variance_slope": fitted_slope(ks, variances)}
  meta = {"dim": _DIM.value, "num_draws": _NUM_DRAWS.value,
          "num_data": _NUM_DATA.value, "coordinates": _COORDINATES.value,
          "perturbation": _PERTURBATION.value,
          "aux_samples": _AUX_SAMPLES.value, "seed": _SEED.value,
          "reference_draws": _REFERENCE_DRAWS.value,
          "num_params": num_params, "ks": ks, "backend": jax.default_backend()}
  out = _OUTPUT_DIR.value
  with open(os.path.join(out, "snr_vs_k.json"), "w") as fh:
    json.dump({"meta": meta, "results": results}, fh, indent=1)
  with open(os.path.join(out, "snr_vs_k.md"), "w") as fh:
    fh.write(markdown(results, ks, meta))
  plot(results, ks, os.path.join(out, "snr_vs_k.png"))
  print(markdown(results, ks, meta))
  print(f"Wrote {out}/snr_vs_k.json, snr_vs_k.md and snr_vs_k.png.")


if __name__ == "__main__":
  app.run(main)
