r"""CARMS: antithetic multi-sample REINFORCE for categorical latents.

K samples of each categorical variable (logits (..., C)) are coupled through
the Dirichlet copula and an inverse-CDF map over a random order of the classes
(`carms_samples`), the first being the chain's Gumbel-max sample of `key`
(`categorical.sample`); the leave-one-out estimator over them is reweighted by
the coupling's pairwise law (`carms_joint`) to stay unbiased (`carms`).

Contract, non-finite logits and half precision: as for every estimator of the
categorical family (`categorical`).

Reference: Dimitriev & Zhou (2021), "CARMS: Categorical-Antithetic-REINFORCE
multi-sample gradient estimator", NeurIPS.
"""
import itertools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax.estimators import _checks
from rebar_jax.estimators import categorical

Array = jax.Array
PRNGKey = jax.Array
Fn = Callable[[Array], Array]


def carms_orders(num_classes: int) -> np.ndarray:
  """The class orders of CARMS's inverse-CDF coupling, (C (C - 1) / 2, C).

  One per pair a < b: a first, b last, the other classes ascending between.
  """
  _checks.check_int("num_classes", num_classes, 2)
  orders = []
  for a, b in itertools.combinations(range(num_classes), 2):
    middle = [c for c in range(num_classes) if c not in (a, b)]
    orders.append([a, *middle, b])
  return np.asarray(orders, np.int32)


def _order_intervals(p: Array, orders: np.ndarray) -> tuple[Array, Array]:
  """(L, R), each (..., P, C): class c's interval [L, R) in order o's CDF."""
  p_o = p[..., orders]                          # (..., P, C) by position
  right_o = jnp.cumsum(p_o, axis=-1)
  positions = np.argsort(orders, axis=-1)                # position of class c
  take = lambda x: jnp.take_along_axis(
      x, jnp.broadcast_to(positions, x.shape), axis=-1)
  right = take(right_o)
  return right - take(p_o), right


def _dirichlet_copula_cdf(x: Array, y: Array, num_samples: int) -> Array:
  """P(u_i <= x, u_j <= y) = max(0, x^(1/m) + y^(1/m) - 1)^m, m = K - 1."""
  m = num_samples - 1
  return jnp.maximum(x ** (1.0 / m) + y ** (1.0 / m) - 1.0, 0.0) ** m


def carms_joint(logits: Array, num_samples: int) -> Array:
  r"""P(z_i = a, z_j = b) of two of CARMS's K coupled samples, (..., C, C).

  The mean over the orders o (`carms_orders`) of the copula's mass on the
  rectangle [L_a, R_a) x [L_b, R_b) of o's inverse-CDF intervals:
  C2(R_a, R_b) - C2(L_a, R_b) - C2(R_a, L_b) + C2(L_a, L_b), with C2 the
  Dirichlet copula's bivariate CDF. Rows sum to p = softmax(l).
  """
  p = jax.nn.softmax(logits, axis=-1)
  lo, hi = _order_intervals(p, carms_orders(p.shape[-1]))
  c2 = lambda x, y: _dirichlet_copula_cdf(
      x[..., :, None], y[..., None, :], num_samples)
  rect = c2(hi, hi) - c2(lo, hi) - c2(hi, lo) + c2(lo, lo)
  return jnp.mean(jnp.maximum(rect, 0.0), axis=-3)


def carms_samples(key: PRNGKey, logits: Array, num_samples: int,
                  noise: Optional[Array] = None) -> Array:
  r"""K coupled one-hot samples of CARMS, (K, ..., C); the first is the chain's.

  Per variable: an order o uniform over `carms_orders`, and uniforms
  u_1..u_K from the Dirichlet copula (d ~ Dir(1_K), u_k = (1 - d_k)^(K-1);
  Dimitriev & Zhou 2021), each mapped through o's inverse CDF. z_1 is the
  Gumbel-max sample b of `noise`, and u_1 = L_b + w p_b with
  w = exp(-exp(-max_c z_c)): the max of the perturbed log-probabilities is
  a standard Gumbel independent of its argmax, so u_1 is uniform and
  independent of o. Given u_1, d_1 = 1 - u_1^(1/(K-1)) and
  (d_2..d_K) = (1 - d_1) Dir(1_{K-1}) (the Dirichlet's aggregation).
  """
  num_classes = logits.shape[-1]
  orders = carms_orders(num_classes)
  m = num_samples - 1
  _, z, b_1, key_rest = categorical.sample(key, logits, noise)
  key_order, key_rest = jax.random.split(key_rest)
  p = jax.nn.softmax(logits, axis=-1)
  order = jax.random.randint(key_order, logits.shape[:-1], 0, len(orders))
  lo, hi = _order_intervals(p, orders)                  # (..., P, C)
  pick = lambda x: jnp.take_along_axis(
      x, order[..., None, None], axis=-2)[..., 0, :]     # (..., C)
  lo, hi = pick(lo), pick(hi)
  w = jnp.exp(-jnp.exp(-jnp.max(z, axis=-1)))
  u_1 = jnp.sum(b_1 * (lo + w[..., None] * p), axis=-1)
  d_1 = 1.0 - u_1 ** (1.0 / m)
  e = jax.random.exponential(key_rest, (m,) + logits.shape[:-1], logits.dtype)
  d_rest = (1.0 - d_1) * e / jnp.sum(e, axis=0)
  u_rest = (1.0 - d_rest) ** m                           # (K - 1, ...)
  # class of u: the order's class at the number of right edges below u
  right_sorted = jnp.sort(hi, axis=-1)[..., :-1]
  position = jnp.sum(right_sorted <= u_rest[..., None], axis=-1)
  order_classes = jnp.asarray(orders)[order]             # (..., C)
  cls = jnp.take_along_axis(
      jnp.broadcast_to(order_classes, (m,) + order_classes.shape),
      position[..., None], axis=-1)[..., 0]
  b_rest = jax.nn.one_hot(cls, num_classes, dtype=logits.dtype)
  return jnp.concatenate([b_1[None], b_rest])


@_checks.estimator
def carms(key: PRNGKey, logits: Array, f: Fn, num_samples: int = 2,
          noise: Optional[Array] = None) -> Array:
  r"""CARMS: antithetic categorical samples with the importance-weighted LOO.

  For K coupled samples z_1..z_K (`carms_samples`; per variable, the
  coupling's pairwise law J_ab = P(z_i = a, z_j = b), `carms_joint`) and
  r_ab = p_a p_b / J_ab,

      g^_v = 1/K sum_i (e_{z_iv} - p_v) 1/(K-1) sum_{j != i}
             r_v(z_iv, z_jv) (f(z_i) - f(z_j)),

  unbiased: for a != b the weight turns the coupled pair into an
  independent one, E[... | z_iv = a, z_jv = b] weighted by J_ab r_ab =
  p_a p_b, and the pairs a = b contribute E[f(z_i) - f(z_j) | z_iv = z_jv]
  = 0 whatever r_aa (here p_a^2 / J_aa, the authors' choice; 0 where
  J_aa = 0, a pair that never occurs). Needs J_ab > 0 for a != b, which the
  orders guarantee (a first and b last puts antithetic uniforms on both).
  K evaluations of f.

  Args:
    key: PRNG key.
    logits: l, shape (..., C), V = prod of the leading axes variables.
    f: b -> scalar, b one-hot shaped like l.
    num_samples: K >= 2.
    noise: optional, the Gumbel noise of b_1
      (`noise.gumbel_noise(key, l.shape)`).

  Reference: Dimitriev & Zhou (2021), "CARMS: Categorical-Antithetic-
  REINFORCE multi-sample gradient estimator", NeurIPS (the Dirichlet copula
  with the inverse-CDF coupling over random orders).
  """
  logits, f = categorical.prepare(key, logits, f)
  _checks.check_int("num_samples", num_samples, 2)
  b = carms_samples(key, logits, num_samples, noise)     # (K, ..., C)
  fs = jax.vmap(f)(b)
  p = jax.nn.softmax(logits, axis=-1)
  joint = carms_joint(logits, num_samples)
  outer = p[..., :, None] * p[..., None, :]
  ratio = jnp.where(joint > 0, outer / jnp.where(joint > 0, joint, 1.0), 0.0)
  # r(z_i, z_j) per variable: (K, K, ...)
  r = jnp.einsum("i...a,...ab,j...b->ij...", b, ratio, b)
  k = num_samples
  diff = fs[:, None] - fs[None, :]                        # (K, K), 0 at j = i
  weights = diff.reshape((k, k) + (1,) * (r.ndim - 2)) * r
  signal = jnp.sum(weights, axis=1) / (k - 1)             # (K, ...)
  return jnp.mean(signal[..., None] * categorical.score(logits, b), axis=0)
