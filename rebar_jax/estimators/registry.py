r"""The one registry of estimators: names, families, costs, options, uses.

Every estimator the library knows is one `Entry`:

    name          how a config and `get` call it ("disarm", "vimco_geometric")
    kind          LAYER: a per-layer training estimator (one-layer contract
                  est(key, logits, f, **options) -> grad where `one_layer`
                  has it); MULTISAMPLE: a surrogate of K chains' log-weights;
                  REPARAMETERISED: a pathwise surrogate of K chains (every
                  layer Gaussian); LOCAL: a one-layer estimator per chain of
                  a K-chain objective
    families      family -> the builder Options -> protocol.Estimator (LAYER),
                  or the families it applies to (other kinds)
    unbiased_for  GRAD_F (d/dl E[f] per layer), GRAD_ELBO, GRAD_IW (grad E[L_K])
                  or None (biased)
    cost          f evaluations and gradients of one draw, per family
    reference     the paper
    capabilities  RELAXED, PATHWISE, RESCALED, NEEDS_AUX, PARTITIONED, RENYI
    options       the names of the `OPTIONS` it reads

and every option is one `Option` of `options.OPTIONS`: its default, its
one-line meaning and its check. The name lists (`names`), the options'
defaults and checks (`check_options`: a value out of bounds, or an option
set that the chosen estimators do not read), the composition's dispatch
(`rebar_jax.gradients.EstimatorSpec`), the config's estimator fields
(`rebar_jax.defaults`) and the documentation's catalogue are read from here.

A user's estimator is one function and one `register(Entry(...))`, e.g. in a
module the user's config file imports (examples/scaled_disarm.py, and the
guide docs/guides/estimators.md).
"""
import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import carms
from rebar_jax.estimators import categorical
from rebar_jax.estimators import gaussian
from rebar_jax.estimators import multisample
from rebar_jax.estimators import protocol
from rebar_jax.estimators import stick_breaking
from rebar_jax.estimators import unordered_set
from rebar_jax.estimators.options import Option
from rebar_jax.estimators.options import OPTIONS

# Kinds.
LAYER = "layer"
MULTISAMPLE = "multisample"
REPARAMETERISED = "reparameterised"
LOCAL = "local"
KINDS = (LAYER, MULTISAMPLE, REPARAMETERISED, LOCAL)

# What an unbiased estimator is unbiased for.
GRAD_F = "d/dlogits E[f] per layer"
GRAD_ELBO = "grad ELBO"
GRAD_IW = "grad E[L_K]"

# Capabilities.
RELAXED = "relaxed"          # evaluates and differentiates f on relaxed
                             # samples: f must be continuous there
PATHWISE = "pathwise"        # differentiates f along the layer's own sample
RESCALED = "rescaled"        # estimate divided by a running scale (NVIL):
                             # unbiased up to a positive factor per layer
NEEDS_AUX = "needs_aux"      # S auxiliary chains (`aux_samples`)
PARTITIONED = "partitioned"  # a partition of [0, 1] (the TVO)
RENYI = "renyi"              # trains on the Renyi bound at renyi_alpha > 0
CAPABILITIES = (RELAXED, PATHWISE, RESCALED, NEEDS_AUX, PARTITIONED, RENYI)

FAMILIES = ("bernoulli", "categorical", "gaussian")


# ----------------------------------------------------------------------------
# Entries.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
  """One estimator (see the module docstring for each field).

  families: for LAYER, family -> build(options: protocol.Options) ->
    protocol.Estimator; for the other kinds, family -> None (the families
    the objective applies to).
  one_layer: family -> the one-layer function est(key, logits, f, **options)
    that LAYER training runs per layer (absent for estimators with state of
    their own only, such as NVIL).
  cost: family -> f evaluations and gradients of one draw (a string).
  objective: the surrogate of a MULTISAMPLE or REPARAMETERISED entry; for
    LOCAL, the name of the one-layer estimator applied per chain.
  new_options: options this entry introduces (a user's estimator's own),
    added to `OPTIONS` by `register`.
  auto: among estimator=auto's default candidates (`names(auto=True)`): a
    short list, because each candidate costs the first decision a compile
    (docs/guides/advise.md gives the measured cost of the full list).
  """
  name: str
  kind: str
  families: Mapping[str, Optional[Callable[..., Any]]]
  unbiased_for: Optional[str]
  cost: Mapping[str, str]
  reference: str
  capabilities: frozenset[str] = frozenset()
  options: tuple[str, ...] = ()
  one_layer: Mapping[str, Callable[..., Any]] = dataclasses.field(
      default_factory=dict)
  objective: Any = None
  new_options: tuple[Option, ...] = ()
  auto: bool = False

  def has(self, capability: str) -> bool:
    return capability in self.capabilities

  @property
  def is_multisample(self) -> bool:
    """Trains a K-chain objective (score function, pathwise or local)."""
    return self.kind != LAYER


ENTRIES: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
  """Adds `entry` (its new options to `OPTIONS`); returns it.

  Raises ValueError for a name already registered, an unknown kind, family
  or capability, an option that is neither in `OPTIONS` nor new, or a LAYER
  entry without a builder per family.
  """
  problems = []
  if entry.name in ENTRIES:
    problems.append(f"the name {entry.name!r} is registered already")
  if entry.kind not in KINDS:
    problems.append(f"kind {entry.kind!r} is not one of {list(KINDS)}")
  if not entry.families or set(entry.families) - set(FAMILIES):
    problems.append(f"families {sorted(entry.families)} must be among "
                    f"{list(FAMILIES)}")
  if set(entry.capabilities) - set(CAPABILITIES):
    problems.append(f"capabilities {sorted(entry.capabilities)} must be "
                    f"among {list(CAPABILITIES)}")
  for option in entry.new_options:
    if option.name in OPTIONS:
      problems.append(f"the option {option.name!r} exists already; list it "
                      "in options instead")
    elif option.check(option.default) is not None:
      problems.append(f"the default of {option.name!r} fails its own check")
  new = {o.name for o in entry.new_options}
  unknown = [o for o in entry.options if o not in OPTIONS and o not in new]
  if unknown:
    problems.append(f"options {unknown} are neither in registry.OPTIONS nor "
                    "in new_options")
  if entry.kind == LAYER and not all(map(callable, entry.families.values())):
    problems.append("a layer estimator needs a builder per family")
  if problems:
    raise ValueError(f"Cannot register {entry.name!r}: "
                     + "; ".join(problems) + ".")
  for option in entry.new_options:
    OPTIONS[option.name] = option
  ENTRIES[entry.name] = entry
  return entry


def get(name: str) -> Entry:
  """The entry registered under `name`; a ValueError lists the names."""
  if name not in ENTRIES:
    raise ValueError(f"Unknown estimator {name!r}; choose one of "
                     f"{sorted(ENTRIES)}.")
  return ENTRIES[name]


def names(family: Optional[str] = None, kind: Optional[str] = None,
          capability: Optional[str] = None, unbiased: Optional[bool] = None,
          one_layer: bool = False, auto: Optional[bool] = None
          ) -> tuple[str, ...]:
  """The registered names with every property asked for, in entry order.

  family: applies to this family; kind: of this kind; capability: has it;
  unbiased: True (unbiased for what it estimates) or False (biased);
  one_layer: has a one-layer function for `family`; auto: is (True) or is
  not (False) among estimator=auto's default candidates.
  """
  out = []
  for e in ENTRIES.values():
    if family is not None and family not in e.families:
      continue
    if kind is not None and e.kind != kind:
      continue
    if capability is not None and capability not in e.capabilities:
      continue
    if unbiased is not None and (e.unbiased_for is not None) != unbiased:
      continue
    if one_layer and (family is None or family not in e.one_layer):
      continue
    if auto is not None and e.auto != auto:
      continue
    out.append(e.name)
  return tuple(out)


def one_layer(family: str) -> dict[str, Callable[..., Any]]:
  """name -> the one-layer estimator est(key, logits, f, **options)."""
  return {n: ENTRIES[n].one_layer[family]
          for n in names(family=family, one_layer=True)}


def build(name: str, family: str,
          options: Optional[protocol.Options] = None
          ) -> protocol.Estimator:
  """The training estimator `name` for layers of `family`, built with
  `options` (None: every option's default)."""
  entry = get(name)
  if entry.kind != LAYER or family not in entry.families:
    layers = names(family=family, kind=LAYER)
    raise ValueError(f"Unknown estimator {name!r} for {family} layers; "
                     f"choose one of {sorted(layers)}, or a multi-sample "
                     f"objective {sorted(names(kind=MULTISAMPLE))}.")
  builder = entry.families[family]
  assert builder is not None  # register checks a LAYER entry's builders
  return builder(options or protocol.Options())


def names_by_family(name: str, families: Sequence[str]) -> dict[str, str]:
  """The estimator of each family a model's layers use.

  `name` is one estimator for every family ("rebar"), or one per family,
  "family:name" pairs separated by commas ("bernoulli:disarm,categorical:arsm").
  """
  families = tuple(dict.fromkeys(families))
  example = ",".join(f"{f}:reinforce" for f in families)
  if ":" not in name:
    return {f: name for f in families}
  parts = [p.split(":", 1) for p in name.replace(" ", "").split(",")]
  if any(len(p) != 2 for p in parts):
    raise ValueError(
        f"Estimator {name!r}: write one estimator for every family, or "
        f"family:name pairs separated by commas, e.g. {example}.")
  named = [f for f, _ in parts]
  twice = sorted({f for f in named if named.count(f) > 1})
  if twice:
    raise ValueError(
        f"Estimator {name!r} names {twice} more than once; name one "
        f"estimator per family, e.g. {example}.")
  pairs = dict(parts)
  if set(pairs) != set(families):
    raise ValueError(
        f"Estimator {name!r} names the families {sorted(pairs)}; the model's "
        f"layers are of the families {sorted(families)}: name one estimator "
        f"for each, e.g. {example}.")
  return pairs


def for_layers(name: str, families: Sequence[str],
               options: Optional[protocol.Options] = None
               ) -> protocol.Estimator:
  """One training estimator for a model whose layers are of `families`.

  With one family, `build(name, family)`; with several, `protocol.by_family`
  of each family's estimator (see `names_by_family` for the two forms of
  `name`).
  """
  parts = {f: build(n, f, options)
           for f, n in names_by_family(name, families).items()}
  if len(parts) == 1:
    return next(iter(parts.values()))
  return protocol.by_family(parts)


def defaults() -> dict[str, Any]:
  """Every option's default."""
  return {name: o.default for name, o in OPTIONS.items()}


def check_options(entries: Iterable[Entry], values: Mapping[str, Any]
                  ) -> None:
  """Raises ValueError for an option out of bounds, or one set away from its
  default that none of `entries` reads (it would be ignored) where the
  option refuses that (`Option.refuse_unread`)."""
  entries = list(entries)
  read = {o for e in entries for o in e.options}
  for name, value in values.items():
    option = OPTIONS[name]
    expected = option.check(value)
    if expected is not None:
      raise ValueError(f"{name} must be {expected}, got {value!r}.")
    if option.refuse_unread and name not in read and (
        value != option.default):
      which = " and ".join(repr(e.name) for e in entries)
      readers = [e.name for e in ENTRIES.values() if name in e.options]
      raise ValueError(
          f"{name}={value!r} is set, but {which} does not read it and would "
          f"ignore it; leave it at {option.default!r}, or choose an "
          f"estimator that reads it ({', '.join(readers) or 'none'}).")


# ----------------------------------------------------------------------------
# The library's estimators.
# ----------------------------------------------------------------------------

_B, _C, _G = "bernoulli", "categorical", "gaussian"
_MODULES = {_B: bernoulli, _C: categorical, _G: gaussian}
_K_CHAINS = "K chains"


def _layer(name: str, families: Mapping[str, Callable[..., Any]],
           unbiased: bool, cost: Mapping[str, str] | str, reference: str,
           capabilities: Iterable[str] = (), options: tuple[str, ...] = (),
           one_layer: Optional[Mapping[str, Callable[..., Any]]] = None,
           auto: bool = False) -> None:
  if isinstance(cost, str):
    cost = {f: cost for f in families}
  register(Entry(name, LAYER, families, GRAD_F if unbiased else None, cost,
                 reference, frozenset(capabilities), options,
                 one_layer if one_layer is not None else {}, auto=auto))


def _stateless(name: str, families: Iterable[str], unbiased: bool,
               cost: Mapping[str, str] | str, reference: str,
               options: tuple[str, ...] = (), num_samples: bool = False,
               capabilities: Iterable[str] = (), module: Any = None,
               auto: bool = False) -> None:
  """A LAYER entry running the one-layer `name` of each family's module (or
  of `module`) per layer; with `num_samples`, num_samples =
  options.loo_samples."""
  families = tuple(families)
  fns = {f: getattr(module or _MODULES[f], name) for f in families}
  if num_samples:
    build = {f: protocol.k_samples(fns[f]) for f in families}
    options = ("loo_samples",) + options
  else:
    build = {f: protocol.one_layer(fns[f], *options) for f in families}
  _layer(name, build, unbiased, cost, reference, capabilities, options, fns,
         auto)


def _multisample(name: str, objective: Any, unbiased_for: Optional[str],
                 reference: str, capabilities: Iterable[str] = (),
                 kind: str = MULTISAMPLE, cost: str = _K_CHAINS,
                 options: tuple[str, ...] = (),
                 families: Iterable[str] = FAMILIES) -> None:
  capabilities = frozenset(capabilities)
  options = ("iw_samples",) + options
  if RENYI in capabilities:
    options += ("renyi_alpha", "renyi_warmup_steps")
  families = tuple(families)
  register(Entry(name, kind, {f: None for f in families}, unbiased_for,
                 {f: cost for f in families}, reference, capabilities,
                 options, objective=objective))


_WILLIAMS = "Williams (1992), Machine Learning 8"
_NVIL = "Mnih & Gregor (2014), ICML, Sec. 2.3"
_LOO = "Kool, van Hoof & Welling (2019), ICLR workshop (Buy 4 REINFORCE)"
_ARM = "Yin & Zhou (2019), ICLR"
_DISARM = "Dong, Mnih & Tucker (2020), NeurIPS"
_ARMS = "Dimitriev & Zhou (2021), ICML"
_DOUBLE_CV = "Titsias & Shi (2022), AISTATS"
_RODEO = "Shi, Zhou, Hwang, Titsias & Mackey (2022), NeurIPS"
_INDECATER = "De Smet, Sansone & Zuidberg Dos Martires (2023), NeurIPS"
_MUPROP = "Gu, Levine, Sutskever & Mnih (2016), ICLR"
_CONCRETE = ("Maddison, Mnih & Teh (2017), ICLR; Jang, Gu & Poole (2017), "
             "ICLR")
_ST = "Bengio, Leonard & Courville (2013), arXiv:1308.3432"
_REINMAX = "Liu, Zhang, Xu, Wei, Gao, Xing & Sun (2023), NeurIPS"
_REBAR = "Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), NeurIPS"
_RELAX = "Grathwohl, Choi, Wu, Roeder & Duvenaud (2018), ICLR"
_ARSM = "Yin, Yue & Zhou (2019), ICML"
_CARMS = "Dimitriev & Zhou (2021), NeurIPS"
_UNORDERED = "Kool, van Hoof & Welling (2020), ICLR"
_STICK = "Dong, Mnih & Tucker (2021), NeurIPS (coupled estimators)"
_GUMBEL_RAO = "Paulus, Maddison & Krause (2021), ICLR"
_GAPPED = "Fan, Cong & Zhou (2022), ICML"
_REPARAM = "Kingma & Welling (2014), ICLR; Rezende, Mohamed & Wierstra (2014)"
_IWAE = "Burda, Grosse & Salakhutdinov (2016), ICLR"
_VIMCO = "Mnih & Rezende (2016), ICML"
_OVIS = "Lievin, Dittadi, Christensen & Winther (2020), NeurIPS"
_RWS = "Bornschein & Bengio (2015), ICLR"
_VARGRAD = "Richter, Boustati, Nusken, Ruiz & Akyildiz (2020), NeurIPS"
_TVO = "Masrani, Le & Wood (2019), NeurIPS"
_DREG = "Tucker, Lawson, Gu & Maddison (2019), ICLR"

# auto=True: estimator=auto's default candidates, per family the unbiased
# estimators of at most two evaluations of f per draw that lead or tie for
# the lead among such estimators in the advisor's tables
# (docs/results/advisor_sbn_linear*.md, advisor_catvae.md), and the Gaussian
# pathwise gradient.
_layer("reinforce", {f: protocol.reinforce for f in FAMILIES}, True,
       "1 evaluation of f", _WILLIAMS,
       one_layer={f: _MODULES[f].reinforce for f in FAMILIES})
_layer("nvil", {f: protocol.nvil for f in FAMILIES}, True,
       "1 evaluation of f", _NVIL, (RESCALED,), ("nvil_decay",))
_stateless("reinforce_loo", FAMILIES, True,
           "n evaluations of f (`loo_samples=n`)", _LOO, num_samples=True,
           auto=True)
_stateless("arm", (_B,), True, "2 evaluations of f", _ARM)
_stateless("disarm", (_B,), True, "2 evaluations of f", _DISARM, auto=True)
_layer("arms", {_B: protocol.arms}, True,
       "K evaluations of f (`loo_samples=K`)", _ARMS, (),
       ("loo_samples", "copula"), {_B: bernoulli.arms})
_layer("double_cv", {_B: protocol.double_cv}, True,
       "K evaluations and K gradients of f", _DOUBLE_CV, (),
       ("loo_samples", "alpha", "tune"), {_B: bernoulli.double_cv})
_layer("rodeo", {_B: protocol.rodeo}, True,
       "K evaluations and K gradients of f", _RODEO, (),
       ("loo_samples", "alpha", "tune", "rodeo_hidden"),
       {_B: bernoulli.rodeo})
_stateless("indecater", (_B, _C), True,
           {_B: "N (D + 1) evaluations of f (D latents)",
            _C: "N (V (C - 1) + 1) evaluations of f (V variables)"},
           _INDECATER)
_stateless("muprop", (_B,), True, "2 evaluations and 1 gradient of f",
           _MUPROP)
_layer("muprop_baseline", {_B: protocol.muprop_baseline}, True,
       "2 evaluations and 1 gradient of f", _MUPROP, (RESCALED,),
       ("nvil_decay",), auto=True)
_layer("concrete", {_B: protocol.relaxed_objective}, False,
       "1 gradient of f", _CONCRETE, (RELAXED,), ("temperature",),
       {_B: bernoulli.concrete})
_stateless("straight_through", (_B,), False, "1 gradient of f", _ST)
_stateless("straight_through_gumbel", (_B, _C), False, "1 gradient of f",
           _ST + "; " + _CONCRETE, ("temperature",))
_stateless("reinmax", (_B, _C), False, "1 gradient of f", _REINMAX,
           ("temperature",))
_layer("rebar", {_B: protocol.rebar, _C: protocol.rebar}, True,
       "1 evaluation and 2 gradients of f", _REBAR, (RELAXED,),
       ("temperature", "eta", "tune"),
       {_B: bernoulli.rebar, _C: categorical.rebar})
_layer("relax", {_B: protocol.relax, _C: protocol.relax}, True,
       "1 evaluation and 2 gradients of f", _RELAX, (RELAXED,),
       ("temperature", "tune", "relax_hidden"),
       {_B: bernoulli.relax, _C: categorical.relax})
_stateless("ars", (_C,), True, "C evaluations of f (C classes)", _ARSM)
_stateless("arsm", (_C,), True, "C(C-1)/2 + 1 evaluations of f", _ARSM)
_stateless("ars_plus", (_C,), True, "C evaluations of f", _ARSM)
_stateless("arsm_plus", (_C,), True, "C(C-1)/2 + 1 evaluations of f", _ARSM)
for _name in ("disarm_stick_breaking", "disarm_stick_breaking_rb",
              "disarm_stick_breaking_iw"):
  _stateless(_name, (_C,), True, "2 evaluations of f", _STICK,
             module=stick_breaking, auto=_name.endswith("_iw"))
_stateless("carms", (_C,), True, "K evaluations of f (`loo_samples=K`)",
           _CARMS, num_samples=True, module=carms)
_layer("gumbel_softmax", {_C: protocol.relaxed_objective}, False,
       "1 gradient of f", _CONCRETE, (RELAXED,), ("temperature",),
       {_C: categorical.gumbel_softmax})
_stateless("gumbel_rao", (_C,), False, "1 gradient of f (averaged over "
           "`num_samples` relaxations)", _GUMBEL_RAO, ("temperature",))
_stateless("gapped_straight_through", (_C,), False, "1 gradient of f",
           _GAPPED, ("temperature",))
_stateless("unordered_set", (_C,), True,
           "V k evaluations of f (`loo_samples=k`)", _UNORDERED,
           num_samples=True, module=unordered_set)
_stateless("pathwise", (_G,), True, "1 gradient of f", _REPARAM,
           capabilities=(PATHWISE,), auto=True)

_multisample("iwae_reinforce", multisample.iwae_reinforce_surrogate, GRAD_IW,
             _IWAE, (RENYI,))
_multisample("vimco_arithmetic", functools.partial(
    multisample.vimco_surrogate, baseline="arithmetic"), GRAD_IW, _VIMCO,
             (RENYI,))
_multisample("vimco_geometric", functools.partial(
    multisample.vimco_surrogate, baseline="geometric"), GRAD_IW, _VIMCO,
             (RENYI,))
_multisample("ovis_gamma0", functools.partial(
    multisample.ovis_gamma_surrogate, gamma=0.0), GRAD_IW, _OVIS, (RENYI,))
_multisample("ovis_gamma0.5", functools.partial(
    multisample.ovis_gamma_surrogate, gamma=0.5), None, _OVIS, (RENYI,))
_multisample("ovis_gamma1", functools.partial(
    multisample.ovis_gamma_surrogate, gamma=1.0), None, _OVIS, (RENYI,))
_multisample("ovis_mc", multisample.ovis_mc_surrogate, GRAD_IW, _OVIS,
             (RENYI, NEEDS_AUX), cost=_K_CHAINS + " and S auxiliary chains "
             "(`aux_samples`)", options=("aux_samples",))
_multisample("rws", multisample.rws_surrogate, None, _RWS)
_multisample("elbo_loo", multisample.elbo_loo_surrogate, GRAD_ELBO, _LOO)
_multisample("vargrad", multisample.vargrad_surrogate, GRAD_ELBO, _VARGRAD)
_multisample("tvo", multisample.tvo_surrogate, None, _TVO, (PARTITIONED,),
             options=("tvo_partitions", "tvo_beta_min"))
_multisample("iwae_pathwise", multisample.iwae_pathwise_views, GRAD_IW, _IWAE,
             (RENYI,), REPARAMETERISED, _K_CHAINS + ", pathwise",
             families=(_G,))
_multisample("dreg", multisample.dreg_views, GRAD_IW, _DREG, (),
             REPARAMETERISED, _K_CHAINS + ", pathwise", families=(_G,))
_multisample("disarm_iw", "disarm", GRAD_IW, _DISARM, (), LOCAL,
             _K_CHAINS + ", 2 continuations of each chain per layer",
             families=(_B,))


def objective(entry: Entry, alpha: Any = 0.0, tvo_partitions: int = 5,
              tvo_beta_min: float = 0.01) -> Callable[..., Any]:
  """The surrogate of a MULTISAMPLE or REPARAMETERISED entry with its options.

  alpha: the Renyi alpha (RENYI entries only; may be traced); tvo_partitions,
  tvo_beta_min: the TVO's partition (`multisample.tvo_partition`).
  """
  if entry.has(PARTITIONED):
    return functools.partial(entry.objective, betas=tuple(
        multisample.tvo_partition(tvo_partitions, tvo_beta_min)))
  if entry.has(RENYI) and not (isinstance(alpha, (int, float))
                               and alpha == 0):
    return functools.partial(entry.objective, alpha=alpha)
  return entry.objective
