r"""Multi-sample objectives as surrogate losses whose gradient is the estimator.

Setting (one data point x; vmap over data points). b_1..b_K ~ q_phi(b | x)
i.i.d., held fixed (sampled outside the differentiated function), and

    log w_k = log p_theta(x, b_k) - log q_phi(b_k | x),
    h_k     = d/dphi log q_phi(b_k | x),
    L_K     = log (1/K) sum_k w_k,
    v_k     = w_k / sum_l w_l,

the importance-weighted bound (Burda et al. 2016; E[L_1] is the ELBO and
E[L_K] rises to log p(x) with K). Every surrogate here takes

    log_w: (K,)  the log-weights, a differentiable function of (theta, phi),
    log_q: (K,)  log q_phi(b_k | x), the differentiable log q used in log_w,

and returns a scalar loss whose gradient w.r.t. (theta, phi) is ONE draw of an
estimator of -grad E[L_K] (iwae_reinforce, VIMCO, OVIS, RWS's theta part) or of
-grad ELBO (elbo_loo, VarGrad). Differentiating the exact identity

    grad_phi E[L_K] = E[ sum_k L_K h_k + sum_k v_k grad_phi log w_k ]
                    = E[ sum_k (L_K - v_k) h_k ]           (log p free of phi)

the score-function estimators with per-sample control variates c_k are

    g_theta = sum_k v_k grad_theta log p(x, b_k)     (pathwise, through log_w)
    g_phi   = sum_k (L_K - c_k) h_k + sum_k v_k grad_phi log w_k
            = sum_k (d_k - c_k) h_k,
    d_k     = L_K - v_k                              (Lievin et al.'s d_k),

which is the gradient of the surrogate (`score_surrogate`)

    loss = -( L_K(log_w) + sum_k stop_gradient(L_K - c_k) log_q_k ).

It is unbiased for grad E[L_K] whenever c_k does not depend on b_k (it may
depend on b_{-k} and on independent auxiliary samples). The gradient flows into
the caller's (theta, phi) only through log_w and log_q; c_k and the learning
signals are stop-gradiented.

Cost: the leave-one-out baselines build a (K, K) matrix per data point
(O(K^2) memory), like the reference implementations; fine for K <= ~1000.
"""
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_sg = jax.lax.stop_gradient


# ----------------------------------------------------------------------------
# Bounds and leave-one-out building blocks.
# ----------------------------------------------------------------------------


def _check(log_w: Array, log_q: Array, min_k: int = 1) -> int:
  """Validates shapes (K,) and returns K (static)."""
  chex.assert_rank(log_w, 1)
  chex.assert_equal_shape([log_w, log_q])
  num_samples = log_w.shape[0]
  if num_samples < min_k:
    raise ValueError(
        f"This estimator needs K >= {min_k} samples per data point, got "
        f"log_w of shape {log_w.shape}.")
  return num_samples


def iw_bound(log_w: Array) -> Array:
  r"""L_K = log (1/K) sum_k w_k = logsumexp(log w) - log K, a scalar.

  One draw of the importance-weighted bound (Burda et al. 2016): E[L_K] <=
  log p(x), non-decreasing in K. Its gradient is sum_k v_k grad log w_k with
  v_k = softmax(log w)_k. Stable for any finite log_w (logsumexp); the
  model-level evaluator is `rebar_jax.objectives.iw_bound`.

  Args:
    log_w: (K,) log-weights.
  """
  chex.assert_rank(log_w, 1)
  return jax.nn.logsumexp(log_w) - jnp.log(float(log_w.shape[0]))


def renyi_bound(log_w: Array, alpha=0.0) -> Array:
  r"""The importance-weighted Renyi bound (IWR), a scalar.

      L_K^alpha = 1/(1 - alpha) log (1/K) sum_k w_k^(1 - alpha)
                = iw_bound((1 - alpha) log w) / (1 - alpha),

  Li & Turner (2016)'s variational Renyi bound estimated with K samples, as
  OVIS (Lievin et al. 2020, Sec. 5) uses it for "Renyi warm-up": alpha = 0 is
  L_K, and alpha -> 1 tends to the K-sample ELBO estimate mean_k log w_k. Its
  gradient is sum_k u_k grad log w_k, u = softmax((1 - alpha) log w).

  Args:
    log_w: (K,) log-weights.
    alpha: in [0, 1); a Python float or a traced scalar (a schedule).
  """
  _check_alpha(alpha)
  beta = 1.0 - alpha
  return iw_bound(beta * log_w) / beta


def _check_alpha(alpha) -> None:
  if isinstance(alpha, (int, float)) and not 0.0 <= alpha < 1.0:
    raise ValueError(f"The Renyi alpha must be in [0, 1), got {alpha}.")


def normalized_weights(log_w: Array) -> Array:
  """v_k = w_k / sum_l w_l = softmax(log w)_k, shape (K,)."""
  return jax.nn.softmax(log_w)


def _offdiag_logsumexp(log_w: Array) -> Array:
  """log sum_{j != k} w_j for each k, shape (K,); (K, K) work, no cancellation.

  Computed directly over the masked row rather than as
  log(sum w) + log(1 - v_k), which loses all precision when one weight
  dominates (v_k -> 1).
  """
  k = log_w.shape[0]
  mask = ~jnp.eye(k, dtype=bool)
  rows = jnp.broadcast_to(log_w, (k, k))
  return jax.nn.logsumexp(rows, axis=-1, where=mask)


def vimco_baselines(log_w: Array, mean: str = "geometric") -> Array:
  r"""VIMCO's leave-one-out bounds L_K^{(-k)}, shape (K,), no gradient.

  Mnih & Rezende (2016), Sec. 3 ("Variational inference for Monte Carlo
  objectives"): the bound with w_k replaced by an estimate w^_{-k} built from
  the other samples only,

      L_K^{(-k)} = log (1/K) ( sum_{j != k} w_j + w^_{-k} ),

    "geometric" (the paper's main choice):
        w^_{-k} = exp( (1/(K-1)) sum_{j != k} log w_j ),
        i.e. log w_k is replaced by the mean of the others' log-weights;
    "arithmetic" (the paper's alternative):
        w^_{-k} = (1/(K-1)) sum_{j != k} w_j,
        which simplifies to L_K^{(-k)} = log (1/(K-1)) sum_{j != k} w_j.

  Both depend on b_{-k} only, so the learning signal L_K - L_K^{(-k)} keeps the
  estimator unbiased. Needs K >= 2.

  Args:
    log_w: (K,) log-weights.
    mean: "geometric" or "arithmetic".
  """
  log_w = _sg(log_w)
  k = log_w.shape[0]
  if k < 2:
    raise ValueError(f"VIMCO needs K >= 2 samples, got K = {k}.")
  if mean == "arithmetic":
    return _offdiag_logsumexp(log_w) - jnp.log(float(k - 1))
  if mean == "geometric":
    loo_mean = (jnp.sum(log_w) - log_w) / (k - 1)  # mean_{j != k} log w_j
    rows = jnp.where(jnp.eye(k, dtype=bool), loo_mean[:, None], log_w[None, :])
    return jax.nn.logsumexp(rows, axis=-1) - jnp.log(float(k))
  raise ValueError(f"mean must be 'geometric' or 'arithmetic', got {mean!r}.")


def ovis_gamma_baselines(log_w: Array, gamma: float = 1.0,
                         alpha=0.0) -> Array:
  r"""OVIS's asymptotic control variate c_k(gamma), shape (K,), no gradient.

  Lievin et al. (2020), the unified asymptotic approximation of the optimal
  control variate (their Eq. 17, as cited in the official code
  vlievin/ovis, `OvisAsymptotic`):

      c_k = log Z_{-k} - gamma v_k + (1 - gamma) log(1 - 1/K),
      log Z_{-k} = log (1/(K-1)) sum_{j != k} w_j,

  (gamma = 1: the high effective-sample-size limit; gamma = 0: ESS ~ 1). The
  resulting phi-estimator sum_k (d_k - c_k) h_k has weights

      d_k - c_k = gamma log(1 - 1/K) - log(1 - v_k) - (1 - gamma) v_k.

  gamma = 0: c_k = log (1/K) sum_{j != k} w_j depends on b_{-k} only, so the
  estimator is UNBIASED; it equals VIMCO-arithmetic with its baseline shifted
  by the constant log(1 - 1/K). gamma > 0: c_k depends on b_k through v_k, so
  the estimator is BIASED for grad_phi E[L_K]: E[g_phi(gamma)] =
  E[g_phi(0)] + gamma E[sum_k v_k h_k] (zero when q = p(b|x), where v_k = 1/K;
  on the test model it is many standard errors large). log Z_{-k} is computed
  by a masked logsumexp, so v_k -> 1 is safe (no log(1 - v_k) cancellation).

  For the Renyi bound (`renyi_bound`, alpha > 0), with beta = 1 - alpha and
  the tempered weights u = softmax(beta log w), d_k = L_K^alpha - u_k and

      c_k = ( log Z_{-k}(beta log w) + (1 - gamma) log(1 - 1/K) ) / beta
            - gamma u_k,

  again free of b_k at gamma = 0 (unbiased), and the formulas above at
  alpha = 0.

  Args:
    log_w: (K,) log-weights, K >= 2.
    gamma: in [0, 1]; the registry has 0, 0.5 and 1.
    alpha: the Renyi alpha in [0, 1) (0: the IW bound).
  """
  log_w = _sg(log_w)
  k = log_w.shape[0]
  if k < 2:
    raise ValueError(f"OVIS needs K >= 2 samples, got K = {k}.")
  _check_alpha(alpha)
  beta = 1.0 - alpha
  log_z_loo = _offdiag_logsumexp(beta * log_w) - jnp.log(float(k - 1))
  u = normalized_weights(beta * log_w)
  return (log_z_loo + (1.0 - gamma) * np.log1p(-1.0 / k)) / beta - gamma * u


def ovis_mc_baselines(log_w: Array, log_w_aux: Array, alpha=0.0) -> Array:
  r"""OVIS-MC: the optimal control variate estimated with S auxiliary samples.

  Lievin et al. (2020), the optimal per-sample control variate
  c*_k = E_{b_k ~ q}[d_k(b_k, b_{-k}) | b_{-k}] (their Eq. 12 as cited in
  vlievin/ovis, `OvisMonteCarlo`), estimated by Monte Carlo with S extra
  samples b^(s) ~ q i.i.d., independent of b_1..b_K:

      c_k = (1/S) sum_s d_k(b^(s), b_{-k}),
      d_k(b^(s), b_{-k}) = L_K(b^(s), b_{-k}) - v_k(b^(s), b_{-k}),

  where (b^(s), b_{-k}) is the K-set with b_k replaced by b^(s), i.e. log w_k
  replaced by log w(b^(s)). c_k depends on b_{-k} and the auxiliary samples
  only, so the estimator is unbiased. Shape (K,), no gradient; O(S K^2) work.
  For the Renyi bound, L_K and v_k are L_K^alpha and the tempered weights u_k.

  Args:
    log_w: (K,) log-weights of the K samples, K >= 2.
    log_w_aux: (S,) log-weights log p(x, b^(s)) - log q(b^(s) | x), S >= 1.
    alpha: the Renyi alpha in [0, 1) (0: the IW bound).
  """
  log_w, log_w_aux = _sg(log_w), _sg(log_w_aux)
  chex.assert_rank(log_w_aux, 1)
  k = log_w.shape[0]
  if k < 2 or log_w_aux.shape[0] < 1:
    raise ValueError(
        f"OVIS-MC needs K >= 2 and S >= 1, got K = {k}, "
        f"S = {log_w_aux.shape[0]}.")
  _check_alpha(alpha)
  beta = 1.0 - alpha
  eye = jnp.eye(k, dtype=bool)
  # swapped[s, k, j] = log w_j for j != k, log w(b^(s)) for j == k (tempered).
  swapped = jnp.where(eye[None], beta * log_w_aux[:, None, None],
                      beta * log_w[None, None, :])
  lse = jax.nn.logsumexp(swapped, axis=-1)                  # (S, K)
  bound = (lse - jnp.log(float(k))) / beta                  # L_K(b^(s), b_{-k})
  v_k = jnp.exp(beta * log_w_aux[:, None] - lse)            # v_k(b^(s), b_{-k})
  return jnp.mean(bound - v_k, axis=0)


# ----------------------------------------------------------------------------
# Surrogates for grad E[L_K].
# ----------------------------------------------------------------------------


def score_surrogate(log_w: Array, log_q: Array, baselines: Array,
                    alpha=0.0) -> Array:
  r"""loss = -( L_K + sum_k sg(L_K - c_k) log q_k ) for given baselines c_k.

  Gradient: -( sum_k v_k grad log w_k + sum_k (L_K - c_k) grad log q_k ), one
  draw of an estimator of -grad E[L_K] (theta: pathwise; phi: score function
  with control variates c_k plus the pathwise part through log w). Unbiased iff
  E[c_k h_k] = 0, e.g. when c_k does not depend on b_k.

  Args:
    log_w: (K,) log-weights, differentiable in (theta, phi).
    log_q: (K,) log q(b_k | x), differentiable in phi.
    baselines: (K,) c_k (stop-gradiented here).
    alpha: the Renyi alpha in [0, 1): L_K is then `renyi_bound`, whose phi
      gradient sum_k (L_K^alpha - u_k) h_k has the same form (u the tempered
      weights), so the same c_k rules keep it unbiased.
  Returns:
    A scalar loss.
  """
  _check(log_w, log_q)
  chex.assert_equal_shape([log_w, baselines])
  bound = renyi_bound(log_w, alpha)
  signal = _sg(bound - baselines)
  return -(bound + jnp.sum(signal * log_q))


def iwae_reinforce_surrogate(log_w: Array, log_q: Array, alpha=0.0) -> Array:
  r"""Plain score-function estimator of -grad E[L_K] (no control variate).

  g_phi = sum_k (L_K - v_k) h_k, g_theta = sum_k v_k grad_theta log p(x, b_k):
  unbiased for grad E[L_K], high variance (the signal L_K is shared by all k).
  Shapes: log_w, log_q (K,); returns a scalar. alpha: `score_surrogate`.
  """
  _check(log_w, log_q)
  return score_surrogate(log_w, log_q, jnp.zeros_like(log_w), alpha)


def vimco_surrogate(log_w: Array, log_q: Array,
                    baseline: str = "arithmetic", alpha=0.0) -> Array:
  r"""VIMCO: unbiased estimator of -grad E[L_K] (Mnih & Rezende 2016, Sec. 3).

      g_phi = sum_k (L_K - L_K^{(-k)}) h_k + sum_k v_k grad_phi log w_k,
      g_theta = sum_k v_k grad_theta log p(x, b_k),

  with L_K^{(-k)} from `vimco_baselines`: "geometric" (the paper's main variant,
  log w_k -> mean_{j != k} log w_j) or "arithmetic" (w_k -> mean_{j != k} w_j,
  so L_K^{(-k)} = log (1/(K-1)) sum_{j != k} w_j). Both unbiased; K >= 2.

  Args:
    log_w: (K,) log-weights, differentiable in (theta, phi).
    log_q: (K,) log q(b_k | x), differentiable in phi.
    baseline: "arithmetic" (default) or "geometric" (the paper's main choice).
    alpha: the Renyi alpha in [0, 1): the bound is L_K^alpha =
      L_K((1 - alpha) log w) / (1 - alpha), and so are its baselines.
  Returns:
    A scalar loss.
  """
  _check(log_w, log_q, min_k=2)
  _check_alpha(alpha)
  beta = 1.0 - alpha
  return score_surrogate(log_w, log_q,
                         vimco_baselines(beta * log_w, baseline) / beta, alpha)


def ovis_gamma_surrogate(log_w: Array, log_q: Array,
                         gamma: float = 1.0, alpha=0.0) -> Array:
  r"""OVIS-gamma (asymptotic OVIS, Lievin et al. 2020, Eq. 17).

      g_phi = sum_k (d_k - c_k) h_k,
      d_k - c_k = gamma log(1 - 1/K) - log(1 - v_k) - (1 - gamma) v_k,
      g_theta = sum_k v_k grad_theta log p(x, b_k),

  c_k from `ovis_gamma_baselines`. Unbiased for -grad E[L_K] at gamma = 0 only;
  for gamma > 0, E[g_phi] is off by gamma E[sum_k v_k h_k] (see there). The
  theta part is always unbiased. K >= 2.

  Args:
    log_w: (K,) log-weights, differentiable in (theta, phi).
    log_q: (K,) log q(b_k | x), differentiable in phi.
    gamma: in [0, 1].
    alpha: the Renyi alpha in [0, 1) (`ovis_gamma_baselines`).
  Returns:
    A scalar loss.
  """
  _check(log_w, log_q, min_k=2)
  return score_surrogate(log_w, log_q,
                         ovis_gamma_baselines(log_w, gamma, alpha), alpha)


def ovis_mc_surrogate(log_w: Array, log_q: Array, log_w_aux: Array,
                      alpha=0.0) -> Array:
  r"""OVIS-MC (Lievin et al. 2020, Eq. 12): unbiased estimator of -grad E[L_K].

  g_phi = sum_k (d_k - c_k) h_k with c_k = (1/S) sum_s d_k(b^(s), b_{-k})
  from `ovis_mc_baselines`; g_theta = sum_k v_k grad_theta log p(x, b_k). The
  S auxiliary samples b^(s) ~ q (i.i.d., independent of b_1..b_K) enter only
  the control variate: no gradient flows through `log_w_aux`.

  Args:
    log_w: (K,) log-weights, differentiable in (theta, phi), K >= 2.
    log_q: (K,) log q(b_k | x), differentiable in phi.
    log_w_aux: (S,) log-weights of the auxiliary samples.
    alpha: the Renyi alpha in [0, 1) (`ovis_mc_baselines`).
  Returns:
    A scalar loss.
  """
  _check(log_w, log_q, min_k=2)
  return score_surrogate(log_w, log_q,
                         ovis_mc_baselines(log_w, log_w_aux, alpha), alpha)


def rws_surrogate(log_w: Array, log_q: Array) -> Array:
  r"""Reweighted wake-sleep (Bornschein & Bengio 2015), wake-theta + wake-phi.

      g_theta = sum_k v_k grad_theta log p(x, b_k)      (= the IWAE theta part),
      g_phi   = sum_k v_k h_k                            (wake-phi),

  loss = -( L_K(log p - sg(log q)) + sum_k sg(v_k) log q_k ),
  log p = log_w + log_q.
  The theta part is unbiased for grad_theta E[L_K]; the phi part is a
  self-normalised (biased, consistent as K -> inf) estimate of
  -grad_phi KL(p(b|x) || q(b|x)), not of grad_phi E[L_K]. Shapes (K,) -> scalar.
  """
  _check(log_w, log_q)
  log_p_theta = log_w + log_q - _sg(log_q)  # value log_w, no phi-gradient
  v = _sg(normalized_weights(log_w))
  return -(iw_bound(log_p_theta) + jnp.sum(v * log_q))


# ----------------------------------------------------------------------------
# Surrogates for grad ELBO = grad E_q[log w].
# ----------------------------------------------------------------------------


def elbo_loo_surrogate(log_w: Array, log_q: Array) -> Array:
  r"""REINFORCE leave-one-out on the K-sample ELBO, unbiased for -grad ELBO.

      g = (1/K) sum_k [ (log w_k - (1/(K-1)) sum_{j != k} log w_j) h_k
                        + grad log w_k ]
        = (1/(K-1)) sum_k (log w_k - mean_j log w_j) h_k
          + (1/K) sum_k grad log w_k,

  (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!";
  Salimans & Knowles 2014); the pathwise term gives theta its gradient and
  adds -(1/K) sum_k h_k (zero mean) to phi.
  K >= 2. Shapes: log_w, log_q (K,); returns a scalar.
  """
  k = _check(log_w, log_q, min_k=2)
  loo_mean = (jnp.sum(log_w) - log_w) / (k - 1)
  signal = _sg(log_w - loo_mean)
  return -jnp.mean(log_w + signal * log_q)


def vargrad_surrogate(log_w: Array, log_q: Array) -> Array:
  r"""VarGrad (Richter et al. 2020): log-variance loss for phi, ELBO for theta.

      loss = (1/2) Var^_k[ sg(log p_k) - log q_k ] - (1/K) sum_k log p_k,
      Var^_k[f] = (1/(K-1)) sum_k (f_k - f_bar)^2,
      log p_k = log_w_k + log_q_k,

  with the samples b_k fixed (no gradient through sampling). Gradients:

      g_phi   = -(1/(K-1)) sum_k (log w_k - mean_j log w_j) h_k,
      g_theta = -(1/K) sum_k grad_theta log p(x, b_k),

  both unbiased for -grad ELBO (the phi part because E grad_phi (1/2) Var_q[log
  q - log p] |_{fixed samples} = grad_phi KL(q || p(b|x)) = -grad_phi ELBO).
  Exact relation, draw for draw: g_phi(VarGrad) equals the score part of
  REINFORCE-LOO, i.e. grad_phi vargrad = grad_phi elbo_loo
  - (1/K) sum_k grad_phi log q_k (elbo_loo carries the zero-mean pathwise
  term); theta gradients are identical. With the 1/K (biased) sample variance
  instead, g_phi would be (K-1)/K times REINFORCE-LOO's score part. The
  variance term alone, differentiated in theta, would instead estimate
  grad_theta (1/2) Var_q[log w]; hence theta gets the ELBO's pathwise gradient.
  K >= 2. Shapes: log_w, log_q (K,); returns a scalar.
  """
  _check(log_w, log_q, min_k=2)
  log_p = log_w + log_q  # theta-dependence only (phi-gradients cancel exactly)
  f = _sg(log_p) - log_q  # = log_w in value, phi-dependence only
  return 0.5 * jnp.var(f, ddof=1) - jnp.mean(log_p)


# ----------------------------------------------------------------------------
# The thermodynamic variational objective (TVO).
# ----------------------------------------------------------------------------


def tvo_partition(num_partitions: int, beta_min: float = 0.01) -> np.ndarray:
  """0 = beta_0 < beta_1 < ... < beta_N = 1, log-spaced from beta_min.

  N = num_partitions; N = 1 is [0, 1] (the left Riemann sum is then the
  ELBO). The TVO paper's partitions are log-spaced with beta_1 tuned per K.
  """
  if num_partitions < 1 or not 0.0 < beta_min < 1.0:
    raise ValueError(f"TVO needs num_partitions >= 1 and beta_min in (0, 1), "
                     f"got {num_partitions} and {beta_min}.")
  if num_partitions == 1:
    return np.array([0.0, 1.0])
  return np.concatenate([[0.0], np.logspace(np.log10(beta_min), 0.0,
                                            num_partitions)])


def tvo_integrand(log_w: Array, betas: Array) -> Array:
  r"""E_{pi_beta}[log w] by self-normalised importance sampling, (N + 1,).

  pi_beta(z) ~ q(z | x)^(1 - beta) p(x, z)^beta = q(z | x) w(z)^beta, the
  path from q (beta = 0) to the posterior (beta = 1), and

      E^_beta = sum_k softmax(beta log w)_k log w_k,

  so E^_0 = (1/K) sum_k log w_k (the ELBO estimate) and E^_1 = sum_k v_k
  log w_k (the posterior's, an upper bound in expectation as K grows).
  d/dbeta E_{pi_beta}[log w] = Var_{pi_beta}[log w] >= 0, and
  int_0^1 E_{pi_beta}[log w] dbeta = log p(x) (thermodynamic integration).
  """
  log_w = _sg(log_w)
  snis = jax.nn.softmax(betas[:, None] * log_w[None, :], axis=-1)
  return jnp.sum(snis * log_w[None, :], axis=-1)


def tvo_bound(log_w: Array, betas: Any) -> Array:
  """The left Riemann sum sum_j (beta_{j+1} - beta_j) E^_{beta_j}, a scalar.

  A lower bound on log p(x) in expectation as K grows (the integrand rises
  with beta), equal to the ELBO estimate for betas = [0, 1].
  """
  betas = jnp.asarray(betas, log_w.dtype)
  return jnp.sum(jnp.diff(betas) * tvo_integrand(log_w, betas)[:-1])


def tvo_surrogate(log_w: Array, log_q: Array, betas: Any = (0.0, 0.01, 1.0)
                  ) -> Array:
  r"""The TVO's covariance gradient estimator (Masrani, Le & Wood 2019, Eq. 11).

      grad E_{pi_beta}[f] = E_pi[grad f] + Cov_pi(f, grad log pi~_beta),
      f = log w,  log pi~_beta = beta log p(x, z) + (1 - beta) log q(z | x),

  each expectation by self-normalised importance sampling over the K samples
  (weights u_k = softmax(beta log w)_k, samples held fixed), the covariance
  with the K / (K - 1) correction, and the left Riemann sum over `betas`:

      loss = -sum_j Delta_j [ sum_k sg(u_k) log w_k
               + K/(K-1) sum_k sg(u_k (f_k - f_bar))
                   (log pi~_k - sum_l sg(u_l) log pi~_l) ].

  Biased (self-normalised importance sampling), consistent as K grows; at
  betas = [0, 1] its expectation is -grad ELBO. K >= 2.

  Args:
    log_w: (K,) log-weights, differentiable in (theta, phi).
    log_q: (K,) log q(b_k | x), differentiable in phi.
    betas: the partition, increasing from 0 to 1 (`tvo_partition`).
  """
  k = _check(log_w, log_q, min_k=2)
  betas = jnp.asarray(betas, log_w.dtype)
  left = betas[:-1, None]                                    # (N, 1)
  u = _sg(jax.nn.softmax(left * log_w[None, :], axis=-1))    # (N, K)
  f = _sg(log_w)[None, :]
  f_bar = jnp.sum(u * f, axis=-1, keepdims=True)
  log_pi = left * log_w[None, :] + log_q[None, :]  # beta log p + (1-beta) log q
  log_pi_bar = jnp.sum(u * log_pi, axis=-1, keepdims=True)
  cov = k / (k - 1) * jnp.sum(u * (f - f_bar) * (log_pi - log_pi_bar), -1)
  expectation = jnp.sum(u * log_w[None, :], axis=-1)
  return -jnp.sum(jnp.diff(betas) * (expectation + cov))


# ----------------------------------------------------------------------------
# Reparameterised gradients of E[L_K] (Gaussian latents).
# ----------------------------------------------------------------------------


def iwae_pathwise_surrogate(log_w: Array, alpha=0.0) -> Array:
  r"""The pathwise IWAE gradient (Burda et al. 2016): loss = -L_K(log w).

  Here z_k = z(phi, eps_k) is reparameterised and log w_k = log p(x, z_k) -
  log q_phi(z_k | x) carries the gradient through z_k as well as through the
  parameters, so

      g = sum_k v_k d/d(theta, phi) log w(z(phi, eps_k)),

  unbiased for -grad E[L_K]. Its inference-network SNR falls as 1/sqrt(K)
  (Rainforth et al. 2018, Thm. 1), the motivation of DReG and OVIS.

  Args:
    log_w: (K,) log-weights, differentiable through the reparameterised z_k.
    alpha: the Renyi alpha in [0, 1): the loss is -`renyi_bound`.
  Returns:
    A scalar loss.
  """
  chex.assert_rank(log_w, 1)
  return -renyi_bound(log_w, alpha)


def dreg_surrogate(log_w_theta: Array, log_w_phi: Array) -> Array:
  r"""DReG, doubly reparameterised IWAE gradient (Tucker et al. 2019, Eq. 5).

  Applying the reparameterisation a second time to the score part of the
  pathwise gradient gives, with v_k = w_k / sum_j w_j,

      g_phi   = sum_k v_k^2 (d log w_k / d z_k) (d z_k / d phi),
      g_theta = sum_k v_k d/dtheta log p_theta(x, z_k),

  where d log w_k / d z_k is the total derivative in z with q's parameters
  held fixed. Unbiased for grad E[L_K]; its inference-network SNR grows as
  sqrt(K). The caller provides the two halves:

    log_w_theta: (K,) log p_theta(x, sg z_k) - sg log q(z_k | x): value log w_k,
      gradient only in theta (the samples and q held fixed);
    log_w_phi: (K,) log p_sg(theta)(x, z_k(phi)) - log q_sg(phi)(z_k(phi) | x):
      value log w_k, gradient only through the reparameterised z_k.

  loss = -( L_K(log_w_theta) + sum_k sg(v_k^2) log_w_phi ).
  """
  chex.assert_rank(log_w_theta, 1)
  chex.assert_equal_shape([log_w_theta, log_w_phi])
  v = _sg(normalized_weights(log_w_theta))
  return -(iw_bound(log_w_theta) + jnp.sum(v**2 * log_w_phi))


class LogWeightViews(NamedTuple):
  """The log-weights of K reparameterised chains, seen three ways, each (K,).

  log_w: log p(x, z(phi)) - log q_phi(z(phi) | x), differentiable in
    everything (through z too).
  log_w_theta: the same values, differentiable in theta only (z and q held).
  log_w_phi: the same values, differentiable through z(phi) only (the
    model's parameters held), `dreg_surrogate`'s second argument.
  """
  log_w: Array
  log_w_theta: Array
  log_w_phi: Array


def iwae_pathwise_views(views: LogWeightViews, alpha=0.0) -> Array:
  """`iwae_pathwise_surrogate` of the views' log-weights."""
  return iwae_pathwise_surrogate(views.log_w, alpha)


def dreg_views(views: LogWeightViews) -> Array:
  """`dreg_surrogate` of the views' log-weights."""
  return dreg_surrogate(views.log_w_theta, views.log_w_phi)
