"""The estimators' options: one schema, and the values an estimator reads.

Every option is one `Option` of `OPTIONS`: its name, default, one-line
meaning and check. `Options(**values)` holds a value for each (its default
unless given) and reads as attributes (`options.temperature`); the registry
(`rebar_jax.estimators.registry`) says which estimators read which options,
and `rebar_jax.defaults` makes each a config field. A user's estimator may
bring options of its own (`registry.Entry.new_options`).
"""
import dataclasses
import math
import numbers
from typing import Any, Callable, Optional

import numpy as np

from rebar_jax.estimators import copulas


def _int_at_least(low: int) -> Callable[[Any], Optional[str]]:
  def check(v):
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool) and (
        int(v) >= low)
    return None if ok else f"an integer >= {low}"
  return check


def _finite(v) -> Optional[str]:
  ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and (
      math.isfinite(v))
  return None if ok else "a finite number"


def _positive(v) -> Optional[str]:
  return None if _finite(v) is None and v > 0 else "a finite number > 0"


def _in_range(low: float, high: float) -> Callable[[Any], Optional[str]]:
  def check(v):
    ok = _finite(v) is None and low <= v < high
    return None if ok else f"a number in [{low}, {high})"
  return check


def _one_of(*choices: str) -> Callable[[Any], Optional[str]]:
  return lambda v: None if v in choices else f"one of {list(choices)}"


def _widths(v) -> Optional[str]:
  ok = isinstance(v, tuple) and all(
      isinstance(h, numbers.Integral) and not isinstance(h, bool)
      and int(h) >= 1 for h in v)
  return None if ok else "a tuple of integers >= 1"


def _boolean(v) -> Optional[str]:
  return None if isinstance(v, (bool, np.bool_)) else "True or False"


@dataclasses.dataclass(frozen=True)
class Option:
  """One estimator option.

  check(value) -> None when the value can be used, else what it must be
  ("an integer >= 2"), for the error message. config_field: the training
  config's field (`rebar_jax.defaults`) when it is not `name`.
  refuse_unread: a value away from the default is refused when the chosen
  estimators do not read the option (the multi-sample objectives' options);
  the others are shared by a config's estimators (a config's temperature
  serves whichever relaxed estimator it is run with) and left unread.
  """
  name: str
  default: Any
  meaning: str
  check: Callable[[Any], Optional[str]]
  config_field: str = ""
  refuse_unread: bool = False

  @property
  def field(self) -> str:
    """The training config's field that holds this option."""
    return self.config_field or self.name


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("temperature", 0.5, "lambda of relaxed estimators (initial value "
           "when tuned)", _positive),
    Option("eta", 1.0, "REBAR's control-variate scale (initial value when "
           "tuned)", _finite),
    Option("loo_samples", 2, "n, the samples (f evaluations) per data point "
           "of a leave-one-out or antithetic multi-sample estimator; k, the "
           "classes drawn without replacement of unordered_set",
           _int_at_least(2)),
    Option("copula", "dirichlet", "ARMS's antithetic copula",
           _one_of(*copulas.COPULAS)),
    Option("alpha", 0.0, "the control variate's scale of double_cv and "
           "RODEO (initial value when tuned; 0 is leave-one-out)", _finite),
    Option("tune", True, "train the control variate's parameters on the "
           "variance loss", _boolean, "tune_estimator"),
    Option("relax_hidden", (50,), "hidden widths of RELAX's network r_rho(z)",
           _widths),
    Option("rodeo_hidden", (100,), "hidden widths of RODEO's surrogate "
           "network (the authors' 100)", _widths),
    Option("nvil_decay", 0.8, "decay of NVIL's running mean and variance of "
           "the signal", _in_range(0.0, 1.0)),
    Option("iw_samples", 1, "K, the chains per data point of a multi-sample "
           "objective", _int_at_least(1), refuse_unread=True),
    Option("aux_samples", 0, "S, OVIS-MC's auxiliary chains per data point "
           "(a budget of K + S chains)", _int_at_least(0), refuse_unread=True),
    Option("renyi_alpha", 0.0, "alpha of the Renyi bound L_K^alpha trained "
           "instead of L_K (0: L_K)", _in_range(0.0, 1.0), refuse_unread=True),
    Option("renyi_warmup_steps", 0, "steps over which alpha falls linearly "
           "to 0 (OVIS's Renyi warm-up; 0: constant)", _int_at_least(0),
           refuse_unread=True),
    Option("tvo_partitions", 5, "N, the TVO's partition points after 0, "
           "log-spaced up to 1", _int_at_least(1), refuse_unread=True),
    Option("tvo_beta_min", 0.01, "the TVO's smallest nonzero partition point",
           _in_range(1e-12, 1.0), refuse_unread=True),
)}


def _hashable(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


class Options:
  """An estimator's fixed options: a value for every option of `OPTIONS`.

  Options(temperature=0.3).temperature == 0.3; every option not given holds
  its default. Immutable and hashable (a jitted step closes over it).
  """
  __slots__ = ("_values",)
  _values: tuple[tuple[str, Any], ...]

  def __init__(self, **values: Any):
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
      raise TypeError(f"Unknown estimator options {unknown}; the options are "
                      f"{sorted(OPTIONS)}.")
    object.__setattr__(self, "_values", tuple(
        (name, _hashable(values.get(name, o.default)))
        for name, o in OPTIONS.items()))

  def __getattr__(self, name: str) -> Any:
    for key, value in object.__getattribute__(self, "_values"):
      if key == name:
        return value
    raise AttributeError(f"{type(self).__name__} has no option {name!r}")

  def __setattr__(self, name: str, value: Any) -> None:
    raise AttributeError(f"{type(self).__name__} is immutable")

  def values(self) -> dict[str, Any]:
    """{option name: value}."""
    return dict(self._values)

  def _key(self) -> tuple[Any, ...]:
    return self._values

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Options) and type(other) is type(self) and (
        self._key() == other._key())

  def __hash__(self) -> int:
    return hash((type(self).__name__, self._key()))

  def __repr__(self) -> str:
    changed = ", ".join(f"{k}={v!r}" for k, v in self._values
                        if v != OPTIONS[k].default)
    return f"{type(self).__name__}({changed})"
