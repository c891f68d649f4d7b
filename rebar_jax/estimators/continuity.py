r"""Is f continuous on the relaxed domain? A probe for REBAR, RELAX, Concrete.

REBAR and RELAX (Tucker et al. 2017, Sec. 3; Grathwohl et al. 2018, Sec. 3)
use the control variate c(z) = f(sigma_lambda(z)) and its derivative along z;
their unbiasedness rests on E[d/dtheta c(z)] = d/dtheta E[c(z)], which needs
f continuous on the relaxed domain ([0, 1]^n, or the simplex per variable).
A jump (floor, round, a comparison, `where` on b) breaks it silently: with
f(b) = floor(1.5 b), which equals b on {0, 1}, REBAR's mean is 0.037 against
the exact 0.2445. The Concrete relaxation trains on f at relaxed points, and
is meaningless for such an f as well.

`find_jump` looks for a jump of f along segments between relaxed samples:

  1. f is evaluated at N + 1 equally spaced points of each segment;
  2. each of the N intervals is bisected R times, keeping the half with the
     larger |f(end) - f(start)|;
  3. a continuous f changes by at most |f'| h 2^-R over the final interval
     (h = 1/N of the segment), a jump of size J by at least about J.

So the largest final |f(end) - f(start)| is the size of the largest jump the
probe crossed (0 up to rounding for a continuous f). A jump is reported when
it exceeds `rtol` (1 + max |f|) on the segment. The probe cannot prove
continuity, only find jumps that its segments cross; with 32 segments
between independent relaxed samples it crosses a threshold inside the
relaxed samples' range with high probability.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rebar_jax.estimators import _checks
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import categorical

Array = jax.Array


class Jump(NamedTuple):
  """The largest jump found: its size and where (a point of the domain)."""
  size: Array
  scale: Array
  at: Array


def find_jump(f: Callable[[Array], Array], start: Array, end: Array,
              num_points: int = 32, refinements: int = 12) -> Jump:
  """The largest jump of f along the segment start -> end (see the module doc).

  Args:
    f: a point (shape of start) -> scalar.
    start, end: the segment's ends, same shape.
    num_points: N, the intervals of the segment.
    refinements: R, the bisections of each interval.
  Returns:
    Jump(size, scale, at): size = max over intervals of the final
    |f(end) - f(start)|, scale = 1 + max |f| on the grid, at = the point.
  """
  point = lambda t: start + t * (end - start)
  f_at = jax.vmap(lambda t: f(point(t)))
  grid = jnp.linspace(0.0, 1.0, num_points + 1, dtype=start.dtype)
  values = f_at(grid)
  lo, hi, f_lo, f_hi = grid[:-1], grid[1:], values[:-1], values[1:]

  def bisect(carry, _):
    lo, hi, f_lo, f_hi = carry
    mid = 0.5 * (lo + hi)
    f_mid = f_at(mid)
    left = jnp.abs(f_mid - f_lo) >= jnp.abs(f_hi - f_mid)
    return (jnp.where(left, lo, mid), jnp.where(left, mid, hi),
            jnp.where(left, f_lo, f_mid), jnp.where(left, f_mid, f_hi)), None

  (lo, hi, f_lo, f_hi), _ = jax.lax.scan(bisect, (lo, hi, f_lo, f_hi), None,
                                         length=refinements)
  steps = jnp.abs(f_hi - f_lo)
  worst = jnp.argmax(steps)
  return Jump(steps[worst], 1.0 + jnp.max(jnp.abs(values)),
              point(0.5 * (lo[worst] + hi[worst])))


def relaxed_samples(key: Array, logits: Array, family: Any,
                    temperature: float, num: int) -> Array:
  """`num` independent relaxed samples of the family's layer, (num, *shape)."""
  keys = jax.random.split(key, num)
  return jax.vmap(lambda k: family.relaxed_from_noise(
      logits, family.noise(k, logits.shape, logits.dtype), temperature))(keys)


def largest_jump(key: Array, logits: Array, f: Callable[[Array], Array],
                 family: Any = bernoulli, temperature: float = 0.5,
                 num_segments: int = 32) -> Jump:
  """The largest jump of f on segments between pairs of relaxed samples."""
  ends = relaxed_samples(key, logits, family, temperature, 2 * num_segments)
  jumps = jax.vmap(lambda a, b: find_jump(f, a, b))(ends[:num_segments],
                                                    ends[num_segments:])
  worst = jnp.argmax(jumps.size / jumps.scale)
  return jax.tree.map(lambda a: a[worst], jumps)


def check_continuity(key: Array, logits: Any, f: Callable[[Array], Array],
                     family: str = "bernoulli", temperature: float = 0.5,
                     num_segments: int = 32, rtol: float = 1e-4) -> None:
  r"""Raises ValueError if f jumps on the relaxed domain of `logits`.

  Run it on a small instance before training with REBAR, RELAX or Concrete
  (the trainer runs it on a user's model). Segments join pairs of relaxed
  samples sigma((logits + noise) / temperature) (the Gumbel-softmax for
  "categorical"); see the module doc for the test and its limits.

  Args:
    key: PRNG key.
    logits: the layer's logits (the shape f takes).
    f: b -> scalar, as given to the estimators.
    family: "bernoulli" or "categorical".
    temperature: lambda of the relaxation.
    num_segments: segments probed.
    rtol: a jump larger than rtol (1 + max |f|) is reported.
  """
  _checks.check_key(key)
  logits = _checks.check_logits(logits)
  fam = {"bernoulli": bernoulli, "categorical": categorical}.get(family)
  if fam is None:
    raise ValueError(f"family must be 'bernoulli' or 'categorical', got "
                     f"{family!r}.")
  f = _checks.scalar_fn(f)
  jump = jax.jit(lambda k, l: largest_jump(k, l, f, fam, temperature,
                                           num_segments))(key, logits)
  report(jump, rtol, "f")


def report(jump: Jump, rtol: float, what: str) -> None:
  """Raises the ValueError of `check_continuity` if the jump is too large."""
  if float(jump.size) > rtol * float(jump.scale):
    raise ValueError(
        f"{what} jumps by {float(jump.size):.4g} at the relaxed point "
        f"{jax.device_get(jump.at).ravel()[:8]}: REBAR, RELAX and Concrete "
        f"evaluate {what} on relaxed samples in [0, 1] (or the simplex) and "
        "differentiate it there, so it must be continuous in b: write it "
        "without floor, round, comparisons or `where` on b (on {0, 1} or "
        "one-hot b, b itself, or b as a weight, already selects), or use an "
        "estimator that evaluates f only at discrete samples (e.g. disarm, "
        "reinforce_loo).")
