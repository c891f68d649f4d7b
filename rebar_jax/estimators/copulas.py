r"""Antithetic copulas for K Bernoulli samples (ARMS, Dimitriev & Zhou 2021).

K exchangeable uniforms u_1..u_K, negatively dependent, give K samples
b_k = 1[u_k < p] of one Bernoulli(p) variable. ARMS needs their pairwise
correlation

    rho(p) = (P(b_i = 1, b_j = 1) - p^2) / (p (1 - p)),   i != j,

because a leave-one-out baseline built from dependent samples has mean
(1 - rho) times the gradient (see `bernoulli.arms`). Two copulas, as in the
ARMS paper (Sec. 3):

* Dirichlet: d ~ Dir(1_K) (normalised exponentials), u_k = 1 - (1 - d_k)^(K-1)
  (d_k ~ Beta(1, K - 1), so u_k ~ U(0, 1)). With a = 1 - (1 - p)^(1/(K-1)),
  P(u_i < p, u_j < p) = P(d_i < a, d_j < a) = 2p - 1 + (1 - 2a)_+^(K-1)
  (Dirichlet spacings: P(d_i > s, d_j > t) = (1 - s - t)_+^(K-1)).
* Gaussian: z ~ N(0, S), S_kk = 1, S_kj = -1/(K-1) (the most negative
  exchangeable correlation), u_k = Phi(z_k); P(b_i = 1, b_j = 1) is the
  bivariate normal CDF at h = Phi^-1(p), by Plackett's identity
  d/dr Phi_2(h, h; r) = exp(-h^2 / (1 + r)) / (2 pi sqrt(1 - r^2)).

Both reduce at K = 2 to the antithetic pair u_2 = 1 - u_1 of ARM and DisARM.

Every function here works with the smaller of the two class probabilities,
p~ = min(p, 1 - p) = sigmoid(-|l|): a variable with p > 1/2 is sampled as
1 - c with c ~ Bernoulli(p~) from the copula (the authors' choice for the
Dirichlet copula, whose dependence is stronger below 1/2; the Gaussian one is
symmetric). rho is unchanged by b -> 1 - b. Working with p~ <= 1/2 also keeps
every threshold away from the cancellation of 1 - p.

The first uniform is the chain's: given the logistic noise n of b_1 = H(l + n),
u_1 = sigmoid(-m) with m = n (l < 0) or -n (l >= 0), so c_1 = 1[u_1 < p~] is
b_1 or 1 - b_1; u_2..u_K are drawn from the copula conditioned on u_1.
"""
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri
import numpy as np

Array = jax.Array

# Gauss-Legendre nodes and weights on [-1, 1] for Plackett's integral: its
# integrand is smooth (all derivatives vanish at theta = -pi/2 for h != 0).
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(32)


def first_noise(logits: Array, noise: Array) -> Array:
  """m with u_1 = sigmoid(-m): the chain's noise n, negated where l >= 0."""
  return jnp.where(logits >= 0, -noise, noise)


def dirichlet_rho(logits: Array, num_samples: int) -> Array:
  r"""rho(p) of the Dirichlet copula (p~ convention), shape of logits.

  With m = K - 1, q~ = 1 - p~, a = 1 - q~^(1/m) <= 1/2 and x = 1 - 2a:

      P11 - p~^2 = x^m - (1 - a)^(2m) = -q~^2 (1 - (x / (x + a^2))^m)
                 = q~^2 expm1(-m log1p(a^2 / x)),
      rho = q~ expm1(-m log1p(a^2 / x)) / p~,

  free of the cancellation in 2p - 1 + x^m - p^2 for small p~ (at K = 2,
  rho = -p~ / q~, DisARM's factor 1 / (1 - rho) = q~ = sigmoid(|l|)).
  """
  m = num_samples - 1
  log_q = -jax.nn.softplus(-jnp.abs(logits))  # log q~ = log sigmoid(|l|)
  a = -jnp.expm1(log_q / m)
  x = 1.0 - 2.0 * a
  p = jax.nn.sigmoid(-jnp.abs(logits))
  return jnp.exp(log_q) * jnp.expm1(-m * jnp.log1p(a * a / x)) / p


def gaussian_rho(logits: Array, num_samples: int) -> Array:
  r"""rho(p) of the Gaussian copula, shape of logits.

  By Plackett's identity, with r = -1/(K - 1), h = Phi^-1(p~) and r = sin(t),

      P11 - p~^2 = -(1 / 2 pi) int_{arcsin r}^0 exp(-h^2 / (1 + sin t)) dt,

  evaluated by 32-point Gauss-Legendre quadrature; rho = that / (p~ q~).
  """
  lower = math.asin(-1.0 / (num_samples - 1))
  t = 0.5 * lower * (1.0 - _NODES)  # nodes mapped onto (lower, 0)
  weights = -0.5 * lower * _WEIGHTS
  p = jax.nn.sigmoid(-jnp.abs(logits))
  h = ndtri(p)
  integrand = jnp.exp(-(h[..., None] ** 2) / (1.0 + np.sin(t)))
  integral = jnp.sum(integrand * weights, axis=-1) / (2.0 * math.pi)
  return -integral / (p * (1.0 - p))


def dirichlet_rest(key: jax.Array, logits: Array, m_noise: Array,
                   num_samples: int) -> Array:
  r"""c_2..c_K ~ Bernoulli(p~) from the Dirichlet copula given u_1, (K-1, *l).

  d_1 = 1 - (1 - u_1)^(1/(K-1)) and, given d_1, (d_2..d_K) = (1 - d_1) w with
  w ~ Dir(1_{K-1}) (the aggregation property of the Dirichlet), drawn as
  normalised exponentials. c_k = 1[u_k < p~] = 1[d_k < a], compared in logs:
  log d_k = log(1 - d_1) + log w_k with log(1 - d_1) = log sigmoid(m) / (K-1),
  and log a = log(-expm1(log q~ / (K-1))), all without rounding 1 - d_1.
  """
  m = num_samples - 1
  log_rest = -jax.nn.softplus(-m_noise) / m  # log(1 - d_1)
  e = jax.random.exponential(key, (m,) + logits.shape, logits.dtype)
  log_w = jnp.log(e) - jnp.log(jnp.sum(e, axis=0))
  log_a = jnp.log(-jnp.expm1(-jax.nn.softplus(-jnp.abs(logits)) / m))
  return (log_rest + log_w < log_a).astype(logits.dtype)


def gaussian_rest(key: jax.Array, logits: Array, m_noise: Array,
                  num_samples: int) -> Array:
  r"""c_2..c_K ~ Bernoulli(p~) from the Gaussian copula given u_1, (K-1, *l).

  z_1 = Phi^-1(u_1), evaluated on the smaller tail of u_1 = sigmoid(-m).
  Since sum_k z_k = 0 (S is singular), given z_1 the others are

      z_k = -z_1 / (K - 1) + sqrt(K / (K - 1)) (e_k - mean(e)),
      e ~ N(0, I_{K-1}),

  which has Var(z_k | z_1) = 1 - r^2 and Cov(z_j, z_k | z_1) = r - r^2.
  c_k = 1[z_k < Phi^-1(p~)].
  """
  m = num_samples - 1
  z_1 = jnp.where(m_noise >= 0, 1.0, -1.0) * ndtri(
      jax.nn.sigmoid(-jnp.abs(m_noise)))
  e = jax.random.normal(key, (m,) + logits.shape, logits.dtype)
  z = -z_1 / m + math.sqrt(num_samples / m) * (e - jnp.mean(e, axis=0))
  h = ndtri(jax.nn.sigmoid(-jnp.abs(logits)))
  return (z < h).astype(logits.dtype)


# name: (rho(logits, K), rest(key, logits, m_noise, K)).
_COPULAS = {"dirichlet": (dirichlet_rho, dirichlet_rest),
            "gaussian": (gaussian_rho, gaussian_rest)}
COPULAS = tuple(_COPULAS)


def rho(copula: str, logits: Array, num_samples: int) -> Array:
  """The pairwise correlation of the copula's samples, shape of logits."""
  return _COPULAS[copula][0](logits, num_samples)


def rest(copula: str, key: jax.Array, logits: Array, m_noise: Array,
         num_samples: int) -> Array:
  """c_2..c_K from `copula` given the first uniform, (K - 1, *logits.shape)."""
  return _COPULAS[copula][1](key, logits, m_noise, num_samples)
