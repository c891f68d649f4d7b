r"""DisARM for categorical latents through the stick-breaking binary chain.

Each categorical variable b (logits (..., C), p = softmax(l)) is the first
success of a chain of C - 1 independent Bernoulli variables
(`stick_breaking_logits`), so the Bernoulli family's antithetic DisARM
applies to the chain: two coupled categorical samples per draw, the first the
chain's Gumbel-max sample of `key` (`categorical.sample`).

    disarm_stick_breaking      DisARM on the chain
    disarm_stick_breaking_rb   the same, Rao-Blackwellised over unread bits
    disarm_stick_breaking_iw   the importance-weighted coupled estimator

Contract, non-finite logits and half precision: as for every estimator of the
categorical family (`categorical`).

Reference: Dong, Mnih & Tucker (2021), "Coupled gradient estimators for
discrete latent variables", NeurIPS, Sec. 3.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from rebar_jax.estimators import _checks
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import categorical
from rebar_jax.estimators import noise as noise_lib

Array = jax.Array
PRNGKey = jax.Array
Fn = Callable[[Array], Array]


def stick_breaking_logits(logits: Array) -> Array:
  r"""alpha_k = log p_k - log sum_{c > k} p_c, k = 0..C-2: shape (..., C-1).

  The stick-breaking chain: z_k ~ Bernoulli(sigmoid(alpha_k)) independent, and
  b = the first k with z_k = 1 (C - 1 when none), has P(b = c) = p_c, since
  sigmoid(alpha_k) = P(b = k | b >= k).
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  tail = jax.lax.cumlogsumexp(log_p, axis=log_p.ndim - 1,
                               reverse=True)  # log P(b >= k)
  return log_p[..., :-1] - tail[..., 1:]


def from_stick_breaking(z: Array) -> Array:
  """One-hot b (..., C) of binary chain z (..., C-1): first k with z_k = 1."""
  none_yet = jnp.cumprod(1.0 - z, axis=-1)  # z_0 = ... = z_k = 0
  before = jnp.concatenate([jnp.ones_like(z[..., :1]), none_yet[..., :-1]],
                           axis=-1)
  return jnp.concatenate([z * before, none_yet[..., -1:]], axis=-1)


def _order(logits: Array, order: str) -> Array:
  """The chain's order of the categories: (..., C) indices, no gradient."""
  if order == "descending":
    return jax.lax.stop_gradient(jnp.argsort(-logits, axis=-1))
  if order == "ascending":
    return jax.lax.stop_gradient(jnp.argsort(logits, axis=-1))
  if order == "none":
    return jnp.broadcast_to(jnp.arange(logits.shape[-1]), logits.shape)
  raise ValueError(f"order must be 'descending', 'ascending' or 'none', got "
                   f"{order!r}.")


def _in_order(x: Array, order: str, logits: Optional[Array] = None,
              inverse: bool = False) -> Array:
  """x (..., C) permuted into the chain's order of `logits` (x's by default)."""
  perm = _order(x if logits is None else logits, order)
  if inverse:
    perm = jnp.argsort(perm, axis=-1)
  return jnp.take_along_axis(x, perm, axis=-1)


def stick_breaking_pair(key: PRNGKey, logits: Array, order: str = "descending",
                        noise: Optional[Array] = None) -> tuple[Array, Array]:
  """The antithetic chains (z, z~), each (..., C-1), of `disarm_stick_breaking`.

  sb(z), back in the categories' order, is the Gumbel-max sample of key (or
  of `noise`).
  """
  _, _, b, key_rest = categorical.sample(key, logits, noise)
  alpha = stick_breaking_logits(_in_order(logits, order))
  position = jnp.argmax(_in_order(b, order, logits), axis=-1)[..., None]
  k = jnp.arange(logits.shape[-1] - 1)
  w, side = noise_lib.uniform_halves(key_rest, (2,) + alpha.shape)
  fresh = bernoulli.sample_from_noise(
      alpha, noise_lib.logistic_from_halves(w[0], side[0]).astype(alpha.dtype))
  z = jnp.where(k < position, 0.0, jnp.where(k == position, 1.0, fresh))
  log_v = -noise_lib.exponential_from_halves(w[1], side[1])
  log_p_twin = jnp.where(
      z > 0,
      jnp.log(jnp.maximum(-jnp.expm1(-alpha), 0.0)),  # -inf for alpha <= 0
      jnp.minimum(alpha, 0.0))
  z_twin = (log_v < log_p_twin).astype(alpha.dtype)
  return jax.lax.stop_gradient(z), jax.lax.stop_gradient(z_twin)


def _stop(z: Array) -> Array:
  """The chain position of sb(z): the first k with z_k = 1, C - 1 if none."""
  return jnp.sum(jnp.cumprod(1.0 - z, axis=-1), axis=-1).astype(jnp.int32)


@_checks.estimator
def disarm_stick_breaking(key: PRNGKey, logits: Array, f: Fn,
                          order: str = "descending",
                          rao_blackwellise: bool = False,
                          noise: Optional[Array] = None) -> Array:
  r"""DisARM on the stick-breaking binary chain of each variable, unbiased.

  Each categorical b_d is the binary chain z_d of `stick_breaking_logits`
  alpha_d (categories taken in `order`), so E[f(b)] = E[f(sb(z))] over
  D (C - 1) independent Bernoulli variables. Their antithetic twins z~ share
  the uniforms (u, 1 - u), and DisARM (Dong, Mnih & Tucker 2020) gives

      g^_alpha = 1/2 (f(sb(z)) - f(sb(z~))) (-1)^{z~} 1[z != z~]
                 sigmoid(|alpha|),
      g^_l = (d alpha / d l)^T g^_alpha,

  two evaluations of f per draw, the pair of categorical samples
  (sb(z), sb(z~)) coupled. The first is the Gumbel-max sample of `key` (or of
  the chain's `noise`): given b_d = c, z_dk = 0 for k before c and 1 at c,
  the later z_dk are drawn fresh, and each twin given its z_dk is the
  Bernoulli P(z~ = 1 | z = 1) = max(0, 1 - e^-alpha),
  P(z~ = 1 | z = 0) = min(1, e^alpha) (u uniform below or above sigmoid(alpha)),
  compared in log space.

  With `rao_blackwellise`, each g^_alpha_k is replaced by its conditional
  mean over the bits f does not read (the paper's Rao-Blackwellised
  estimator). With n, m the stop positions of z and z~ (sb's class in chain
  order), sb(z) reads z_k for k <= n only, so

      k <= min(n, m):  the DisARM term above (nonzero at k = min(n, m) only),
      n < k <= m:      1/2 (f(sb(z~)) - f(sb(z))) (z~_k - sigmoid(alpha_k)),
      m < k <= n:      1/2 (f(sb(z)) - f(sb(z~))) (z_k - sigmoid(alpha_k)),
      k > max(n, m):   0,

  the mean of the DisARM term over z_k given z~_k (over both bits for
  k > max(n, m)); the same two evaluations, a lower variance.

  Args:
    key: PRNG key.
    logits: l, shape (..., C).
    f: b -> scalar, b one-hot shaped like l.
    order: "descending" (categories by decreasing probability, the order the
      paper recommends: the chain stops early), "ascending" or "none" (index
      order); unbiased in every order.
    rao_blackwellise: average out the bits beyond each chain's stop.
    noise: optional, `noise.gumbel_noise(key, l.shape)` drawn already.

  Reference: Dong, Mnih & Tucker (2021), "Coupled gradient estimators for
  discrete latent variables", NeurIPS, Sec. 3 (stick-breaking coupling with
  DisARM, and its Rao-Blackwellisation); at C = 2 both are Bernoulli DisARM.
  """
  logits, f = categorical.prepare(key, logits, f)
  alpha, alpha_vjp = jax.vjp(
      lambda l: stick_breaking_logits(_in_order(l, order)), logits)
  alpha = jax.lax.stop_gradient(alpha)
  z, z_twin = stick_breaking_pair(key, logits, order, noise)
  sign = 1.0 - 2.0 * z_twin
  differ = (z != z_twin).astype(alpha.dtype)
  b_of = lambda z_: _in_order(from_stick_breaking(z_), order, logits,
                              inverse=True)
  df = 0.5 * (f(b_of(z)) - f(b_of(z_twin)))
  g_alpha = df * sign * differ * jax.nn.sigmoid(jnp.abs(alpha))
  if rao_blackwellise:
    k = jnp.arange(alpha.shape[-1])
    on = k <= _stop(z)[..., None]  # bit k is read by sb(z)
    on_twin = k <= _stop(z_twin)[..., None]
    p = jax.nn.sigmoid(alpha)
    g_alpha = jnp.where(
        on & on_twin, g_alpha,
        jnp.where(on, df * (z - p), jnp.where(on_twin, -df * (z_twin - p),
                                              0.0)))
  return alpha_vjp(g_alpha.astype(alpha.dtype))[0]


def disarm_stick_breaking_rb(key: PRNGKey, logits: Array, f: Fn,
                             order: str = "descending",
                             noise: Optional[Array] = None) -> Array:
  """`disarm_stick_breaking` with rao_blackwellise=True: unbiased, 2 f calls."""
  return disarm_stick_breaking(key, logits, f, order=order,
                               rao_blackwellise=True, noise=noise)


def coupled_importance_weights(logits: Array, order: str = "ascending"
                               ) -> Array:
  r"""log w_n = log q(b) q(b~) / P(b, b~) of the antithetic pair, (..., C-1).

  For the pair of `stick_breaking_pair` whose first difference is at chain
  position n (min of the two stops), with p_k = sigmoid(alpha_k): both chains
  pass the bits k < n at 0 together (probability 1 - 2 p_k under (u, 1 - u)),
  differ at n (min(p_n, 1 - p_n)) and continue independently, so

      w_n = prod_{k < n} (1 - p_k)^2 / (1 - 2 p_k) * sigmoid(|alpha_n|),

  with (1 - p)^2 / (1 - 2 p) = (1 - p) / (1 - e^alpha) in log space. A pair
  stopping after a bit with p_k >= 1/2 has probability 0 under the coupling
  (its weight is set to 0 here); in "ascending" order p_k <= 1/3 for
  k < C - 2, so every pair of distinct classes has positive probability.
  """
  alpha = stick_breaking_logits(_in_order(logits, order))
  log_ratio = jnp.where(
      alpha < 0, -jax.nn.softplus(alpha) - jnp.log(-jnp.expm1(
          jnp.minimum(alpha, -1e-30))), 0.0)
  before = jnp.cumsum(log_ratio, axis=-1) - log_ratio
  return before + jax.nn.log_sigmoid(jnp.abs(alpha))


@_checks.estimator
def disarm_stick_breaking_iw(key: PRNGKey, logits: Array, f: Fn,
                             order: str = "ascending",
                             noise: Optional[Array] = None) -> Array:
  r"""The importance-weighted coupled estimator on the stick-breaking pair.

  For b, b~ independent draws of q = Cat(softmax(l)),
  1/2 (f(b) - f(b~)) (grad log q(b) - grad log q(b~)) is unbiased (REINFORCE
  with the other sample as baseline, halved and symmetrised). Importance
  sampling it from the antithetic stick-breaking coupling P(b, b~) of
  `stick_breaking_pair`:

      g^_l = 1/2 w(b, b~) (f(b) - f(b~)) (b - b~),
      w = q(b) q(b~) / P(b, b~)   (`coupled_importance_weights`, per variable),

  since grad_l log q(b) = b - softmax(l). Unbiased when P(b, b~) > 0 for
  every pair of distinct classes, which the "ascending" chain order ensures;
  in "descending" order a first class of probability >= 1/2 makes every pair
  that skips it impossible, and the estimator is biased (tested). Per variable
  d only its own pair is reweighted: the other variables' pairs enter through
  their marginals, which the coupling keeps. Two evaluations of f.

  Args:
    key: PRNG key.
    logits: l, shape (..., C).
    f: b -> scalar, b one-hot shaped like l.
    order: "ascending" (the unbiased order), "descending" or "none".
    noise: optional, `noise.gumbel_noise(key, l.shape)` drawn already.

  Reference: Dong, Mnih & Tucker (2021), "Coupled gradient estimators for
  discrete latent variables", NeurIPS, Sec. 3 (the importance-sampling
  derivation of DisARM); at C = 2 it is Bernoulli DisARM.
  """
  logits, f = categorical.prepare(key, logits, f)
  z, z_twin = stick_breaking_pair(key, logits, order, noise)
  b_of = lambda z_: _in_order(from_stick_breaking(z_), order, logits,
                              inverse=True)
  b, b_twin = b_of(z), b_of(z_twin)
  first = jnp.minimum(jnp.minimum(_stop(z), _stop(z_twin)),
                      logits.shape[-1] - 2)[..., None]
  log_w = jnp.take_along_axis(coupled_importance_weights(logits, order),
                              first, axis=-1)
  w = jax.lax.stop_gradient(jnp.exp(log_w))
  df = 0.5 * (f(b) - f(b_twin))
  return (df * w * (b - b_twin)).astype(logits.dtype)
