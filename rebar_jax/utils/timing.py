"""Speed measured in alternation: two steps timed in turns, their ratio.

A shared machine's speed drifts within minutes, so the speed of one step is
only compared with another's measured in the same minutes: the two run in
turns, A B, B A, A B, ..., each turn a block of about `seconds`, and each pair
of turns gives one ratio of rates; drift slower than a pair cancels in it
(`interleaved`). Used by scripts/benchmark.py and `rebar_jax.advise`.
"""
import statistics
from typing import Any, Callable, Sequence

import numpy as np

Timer = Callable[[int], float]  # steps -> seconds to run that many steps


def block_steps(timer: Timer, unit: int, seconds: float) -> int:
  """Steps (a multiple of `unit`) that `timer` runs in about `seconds`.

  The first call warms up (and compiles); steps double until a turn takes a
  quarter of `seconds`, then scale to it.
  """
  timer(unit)
  steps, took = unit, timer(unit)
  while took < seconds / 4:
    steps *= 2
    took = timer(steps)
  return max(unit, int(round(steps * seconds / took / unit)) * unit)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
  """(first quartile, median, third quartile), linear interpolation."""
  q1, med, q3 = np.percentile(np.asarray(values, np.float64), [25, 50, 75])
  return float(q1), float(med), float(q3)


def interleaved(a: Timer, b: Timer, repeats: int, seconds: float,
                unit_a: int = 1, unit_b: int = 1) -> dict[str, Any]:
  """Steps/s of a over b's, measured in alternation.

  Each side runs turns of about `seconds` (`block_steps`); `repeats` pairs
  of turns run in the order A B, B A, A B, ... (so neither side always goes
  first), and each pair gives ratio_i = rate_a / rate_b. Drift of the
  machine's speed slower than a pair cancels in ratio_i.

  Returns:
    ratio (median of the ratio_i), ratio_q1 and ratio_q3 (interquartile
    range), ratio_min and ratio_max, a_steps_per_sec and b_steps_per_sec
    (medians), repeats, and ratios (every ratio_i).
  """
  n_a = block_steps(a, unit_a, seconds)
  n_b = block_steps(b, unit_b, seconds)
  rates_a, rates_b, ratios = [], [], []
  for i in range(repeats):
    if i % 2 == 0:
      t_a = a(n_a)
      t_b = b(n_b)
    else:
      t_b = b(n_b)
      t_a = a(n_a)
    rates_a.append(n_a / t_a)
    rates_b.append(n_b / t_b)
    ratios.append(rates_a[-1] / rates_b[-1])
  q1, med, q3 = quartiles(ratios)
  return {"ratio": med, "ratio_q1": q1, "ratio_q3": q3,
          "ratio_min": min(ratios), "ratio_max": max(ratios),
          "a_steps_per_sec": statistics.median(rates_a),
          "b_steps_per_sec": statistics.median(rates_b), "repeats": repeats,
          "ratios": ratios}
