"""The estimator catalogue, generated from the registries at build time.

Sphinx extension: on `builder-inited` it writes `catalogue.md` beside
conf.py (ignored by git) from

* the one-layer registries `rebar_jax.estimators.BERNOULLI`, `CATEGORICAL`
  and `rebar_jax.estimators.gaussian.REGISTRY`, with their unbiased sets
  `UNBIASED`, `UNBIASED_CATEGORICAL`, `gaussian.UNBIASED`;
* the training estimators of `rebar_jax.estimators.protocol.REGISTRY` (and
  its `RELAXED`, `RESCALED` and `PATHWISE` sets);
* the K-sample objectives of `rebar_jax.estimators.multisample`
  (`MULTISAMPLE`, `REPARAMETERISED`, `LOCAL`, `UNBIASED_FOR_IW`,
  `UNBIASED_FOR_ELBO`, `NEEDS_AUX`, `RENYI`);
* each estimator function's signature (its options and their defaults) and
  docstring (the summary line, the first displayed equation, the `Args:`
  descriptions of the options, the `Reference:` paragraph).

Nothing about an estimator is written here except its cost, which no
registry records yet: `COST` below, checked against the registries (a name
without a cost, or a cost without an estimator, stops the build). When the
registries become one typed registry, only `entries()` changes.
"""
import dataclasses
import functools
import inspect
import pathlib
import re
import textwrap
from typing import Any, Callable, Optional

# f evaluations (and gradients of f) of one draw, per family and name, until
# the registry holds it. "K" and "n" are the estimator's `num_samples`.
COST = {
    "bernoulli": {
        "reinforce": "1 evaluation of f",
        "reinforce_loo": "n evaluations of f (`num_samples=n`)",
        "arm": "2 evaluations of f",
        "disarm": "2 evaluations of f",
        "arms": "K evaluations of f (`num_samples=K`)",
        "double_cv": "K evaluations and K gradients of f",
        "rodeo": "K evaluations and K gradients of f",
        "indecater": "N (D + 1) evaluations of f (`num_samples=N`, D latents)",
        "muprop": "2 evaluations and 1 gradient of f",
        "concrete": "1 gradient of f",
        "straight_through": "1 gradient of f",
        "straight_through_gumbel": "1 gradient of f",
        "reinmax": "1 gradient of f",
        "rebar": "1 evaluation and 2 gradients of f",
        "relax": "1 evaluation and 2 gradients of f",
    },
    "categorical": {
        "reinforce": "1 evaluation of f",
        "reinforce_loo": "n evaluations of f (`num_samples=n`)",
        "ars": "C evaluations of f (C classes)",
        "arsm": "C(C-1)/2 + 1 evaluations of f",
        "ars_plus": "C evaluations of f",
        "arsm_plus": "C(C-1)/2 + 1 evaluations of f",
        "disarm_stick_breaking": "2 evaluations of f",
        "disarm_stick_breaking_rb": "2 evaluations of f",
        "disarm_stick_breaking_iw": "2 evaluations of f",
        "carms": "K evaluations of f (`num_samples=K`)",
        "gumbel_softmax": "1 gradient of f",
        "straight_through_gumbel": "1 gradient of f",
        "gumbel_rao": "1 gradient of f (averaged over `num_samples` "
                      "relaxations)",
        "reinmax": "1 gradient of f",
        "gapped_straight_through": "1 gradient of f",
        "indecater": "N (V (C - 1) + 1) evaluations of f (V variables)",
        "unordered_set": "V k evaluations of f (`num_samples=k`)",
        "rebar": "1 evaluation and 2 gradients of f",
        "relax": "1 evaluation and 2 gradients of f",
    },
    "gaussian": {
        "reinforce": "1 evaluation of f",
        "reinforce_loo": "n evaluations of f (`num_samples=n`)",
        "pathwise": "1 gradient of f",
    },
    "multisample": {
        "iwae_reinforce": "K chains",
        "vimco_arithmetic": "K chains",
        "vimco_geometric": "K chains",
        "ovis_gamma0": "K chains",
        "ovis_gamma0.5": "K chains",
        "ovis_gamma1": "K chains",
        "ovis_mc": "K chains and S auxiliary chains (`aux_samples`)",
        "rws": "K chains",
        "elbo_loo": "K chains",
        "vargrad": "K chains",
        "tvo": "K chains",
        "iwae_pathwise": "K chains, pathwise",
        "dreg": "K chains, pathwise",
        "disarm_iw": "K chains, 2 continuations of each chain per layer",
    },
}

# The estimator's own arguments, not options.
CONTRACT_ARGS = ("key", "logits", "params", "f", "noise", "log_w", "log_q",
                 "log_w_aux", "log_w_theta", "log_w_phi", "views")

FAMILY_TITLES = {"bernoulli": "Bernoulli latents",
                 "categorical": "Categorical latents",
                 "gaussian": "Gaussian latents"}
FAMILY_SHAPES = {
    "bernoulli": "`logits` of any shape; b in {0, 1}, shaped like the logits",
    "categorical": "`logits` of shape (..., C); one-hot b over the last axis",
    "gaussian": "`params` of shape (..., H, 2): each unit's mean and log "
                "standard deviation; real z",
}


@dataclasses.dataclass
class Entry:
  """One estimator as the catalogue shows it."""
  name: str
  family: str
  function: Callable
  unbiased: str
  cost: str
  fixed: dict = dataclasses.field(default_factory=dict)  # partial's keywords
  notes: list = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------
# Reading docstrings.
# ----------------------------------------------------------------------------

def _target(fn: Callable) -> Callable:
  return fn.func if isinstance(fn, functools.partial) else fn


def qualified(fn: Callable) -> str:
  fn = _target(fn)
  return f"{fn.__module__}.{fn.__qualname__}"


def docstring(fn: Callable) -> str:
  return inspect.getdoc(_target(fn)) or ""


def summary(doc: str) -> str:
  return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def first_equation(doc: str) -> Optional[str]:
  """The first indented block of the docstring's prose, dedented."""
  lines = doc.splitlines()
  block, started = [], False
  for line in lines:
    if re.match(r"^(Args|Returns|Raises|Attributes):", line):
      break
    if line.startswith("  ") and line.strip():
      started = True
      block.append(line)
    elif started and not line.strip():
      block.append(line)
    elif started:
      break
  while block and not block[-1].strip():
    block.pop()
  if not block:
    return None
  return textwrap.dedent("\n".join(block))


def arg_descriptions(doc: str) -> dict[str, str]:
  """{name: description} from the docstring's `Args:` section."""
  match = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)*)", doc, re.M)
  if not match:
    return {}
  out, current = {}, None
  for line in match.group(1).splitlines():
    item = re.match(r"^  (\*{0,2}\w+)(?: \([^)]*\))?: ?(.*)$", line)
    if item:
      current = item.group(1).lstrip("*")
      out[current] = item.group(2).strip()
    elif current and line.strip():
      out[current] += " " + line.strip()
  return out


def reference(doc: str) -> Optional[str]:
  match = re.search(r"^References?:\s*(.*?)(?:\n\n|\Z)", doc, re.M | re.S)
  return " ".join(match.group(1).split()) if match else None


def options(fn: Callable, fixed: dict) -> list[tuple[str, str, str]]:
  """(name, default, description) of each option of `fn` not fixed."""
  described = arg_descriptions(docstring(fn))
  out = []
  for p in inspect.signature(_target(fn)).parameters.values():
    if p.name in CONTRACT_ARGS or p.name in fixed:
      continue
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      continue
    default = "required" if p.default is p.empty else repr(p.default)
    out.append((p.name, default, described.get(p.name, "")))
  return out


# ----------------------------------------------------------------------------
# Markdown.
# ----------------------------------------------------------------------------

def md(text: str) -> str:
  """Plain docstring prose as Markdown: code spans kept, markup escaped."""
  parts = re.split(r"(`[^`]*`)", text)
  for i in range(0, len(parts), 2):
    parts[i] = re.sub(r"([\\*_\[\]<>|$#~])", r"\\\1", parts[i])
  return "".join(parts)


def anchor(family: str, name: str) -> str:
  return f"{family}-{name}".replace(".", "-").replace("_", "-")


def entry_markdown(e: Entry) -> list[str]:
  doc = docstring(e.function)
  out = [f"({anchor(e.family, e.name)})=", f"### `{e.name}`", ""]
  out += [md(summary(doc)), ""]
  eq = first_equation(doc)
  if eq:
    out += ["```text", eq, "```", ""]
  out.append(f"- **Unbiased:** {e.unbiased}")
  out.append(f"- **Cost per draw:** {e.cost}")
  fixed = ", ".join(f"`{k}={v!r}`" for k, v in e.fixed.items()
                    if k != "betas")
  opts = options(e.function, e.fixed)
  if opts:
    out.append("- **Options:**")
    for name, default, text in opts:
      line = f"  - `{name}` (default `{default}`)"
      out.append(line + (f": {md(text)}" if text else ""))
  else:
    out.append("- **Options:** none")
  if fixed:
    out.append(f"- **Fixed here:** {fixed}")
  for note in e.notes:
    out.append(f"- {note}")
  ref = reference(doc)
  if ref:
    out.append(f"- **Paper:** {md(ref)}")
  if not _target(e.function).__name__.startswith("_"):
    out.append(f"- **API:** {{py:func}}`{qualified(e.function)}`")
  out.append("")
  return out


# ----------------------------------------------------------------------------
# The registries.
# ----------------------------------------------------------------------------

def one_layer_registries():
  """(family, {name: fn}, unbiased names) of the one-layer estimators."""
  from rebar_jax import estimators  # pylint: disable=g-import-not-at-top
  from rebar_jax.estimators import gaussian  # pylint: disable=g-import-not-at-top
  return [("bernoulli", estimators.BERNOULLI, estimators.UNBIASED),
          ("categorical", estimators.CATEGORICAL,
           estimators.UNBIASED_CATEGORICAL),
          ("gaussian", gaussian.REGISTRY, gaussian.UNBIASED)]


def entries() -> dict[str, list[Entry]]:
  """Every estimator, by section, from the registries."""
  from rebar_jax.estimators import multisample  # pylint: disable=g-import-not-at-top
  from rebar_jax.estimators import protocol  # pylint: disable=g-import-not-at-top
  out: dict[str, list[Entry]] = {}
  for family, registry, unbiased in one_layer_registries():
    relaxed = protocol.RELAXED.get(family, frozenset())
    out[family] = []
    for name, fn in registry.items():
      notes = []
      if name in relaxed:
        notes.append("**Needs** f continuous on the relaxed domain (it is "
                     "evaluated and differentiated at relaxed samples; see "
                     "{py:mod}`rebar_jax.estimators.continuity`).")
      out[family].append(Entry(
          name, family, fn,
          "yes, for d/dlogits E[f(b)]" if name in unbiased else "**no**",
          _cost(family, name), notes=notes))
  out["multisample"] = []
  for name, fn in {**multisample.MULTISAMPLE,
                   **multisample.REPARAMETERISED}.items():
    if name in multisample.UNBIASED_FOR_IW or name in multisample.REPARAMETERISED:
      unbiased = "yes, for -grad E[L_K] (the importance-weighted bound)"
    elif name in multisample.UNBIASED_FOR_ELBO:
      unbiased = "yes, for -grad ELBO"
    else:
      unbiased = "**no**"
    notes = []
    if name in multisample.NEEDS_AUX:
      notes.append("Also takes `log_w_aux`, the log-weights of independent "
                   "auxiliary chains.")
    if name in multisample.RENYI:
      notes.append("Takes `alpha=`, the Rényi bound's alpha "
                   "({py:func}`rebar_jax.estimators.multisample.renyi_bound`)."
                   )
    if name in multisample.REPARAMETERISED:
      notes.append("Every layer Gaussian (reparameterised chains).")
      public = getattr(multisample, f"{name}_surrogate", None)
      fn = public or fn
    fixed = dict(getattr(fn, "keywords", {}) or {})
    out["multisample"].append(Entry(name, "multisample", fn, unbiased,
                                    _cost("multisample", name), fixed, notes))
  from rebar_jax import gradients  # pylint: disable=g-import-not-at-top
  for name, one_layer in multisample.LOCAL.items():
    out["multisample"].append(Entry(
        name, "multisample", gradients._local_gradients,  # pylint: disable=protected-access
        "yes, for -grad E[L_K]", _cost("multisample", name),
        notes=[f"Runs [`{one_layer}`](#{anchor('bernoulli', one_layer)}) for "
               "each chain and layer (`multisample.LOCAL`); built by "
               "{py:mod}`rebar_jax.gradients`, which holds the chains."]))
  _check_costs(out)
  return out


def _cost(family: str, name: str) -> str:
  try:
    return COST[family][name]
  except KeyError:
    raise ValueError(f"catalogue: no cost for {family} estimator {name!r}; "
                     f"add it to COST in {__file__}") from None


def _check_costs(out: dict[str, list[Entry]]) -> None:
  for family, costs in COST.items():
    extra = set(costs) - {e.name for e in out.get(family, [])}
    if extra:
      raise ValueError(f"catalogue: COST names {sorted(extra)} that no "
                       f"{family} registry holds")


def training_rows() -> list[str]:
  """The training estimators of `protocol.REGISTRY`, one table per family."""
  from rebar_jax.estimators import protocol  # pylint: disable=g-import-not-at-top
  one_layer = {f: r for f, r, _ in one_layer_registries()}
  out = []
  for family, registry in protocol.REGISTRY.items():
    out += [f"**{FAMILY_TITLES[family]}** "
            f"(`--config.estimator=NAME` or `{family}:NAME`):", "",
            "| name | what it runs | trained state | note |",
            "| --- | --- | --- | --- |"]
    for name, build in registry.items():
      if name in one_layer.get(family, {}):
        runs = f"[`{name}`](#{anchor(family, name)}) per layer"
      else:
        runs = f"{{py:func}}`{qualified(build)}`: {md(summary(docstring(build)))}"
      state = ("tuned" if _has_params(protocol, family, name) else "none")
      note = []
      if name in protocol.RELAXED.get(family, ()):
        note.append("relaxed: needs a continuous learning signal")
      if name in protocol.RESCALED:
        note.append("unbiased up to a positive scale per layer")
      if name in protocol.PATHWISE.get(family, ()):
        note.append("pathwise")
      out.append(f"| `{name}` | {runs} | {state} | {'; '.join(note)} |")
    out.append("")
  return out


@functools.lru_cache(maxsize=None)
def _has_params(protocol, family: str, name: str) -> bool:
  """Whether the estimator's built state holds trained parameters."""
  source = inspect.getsource(protocol.REGISTRY[family][name])
  return bool(re.search(r"\btuned\(|EstimatorState\(\s*\[|nvil|init_", source))


def render() -> str:
  from rebar_jax.estimators import protocol  # pylint: disable=g-import-not-at-top
  sections = entries()
  lines = [
      "# Estimator catalogue", "",
      "```{note}",
      "This page is generated at build time from the estimator registries "
      "and the estimator functions' docstrings (`docs/_ext/catalogue.py`); "
      "edit those, not this page.",
      "```", "",
      "Every one-layer estimator has the contract "
      "`grad = est(key, logits, f, **options)`: one draw of an estimate of "
      "d/dlogits E[f(b)], shaped like the logits "
      "(see {doc}`getting_started`). The math is the docstring's, in its "
      "notation: l the logits, b the sample, `g^` one draw of the estimate.",
      "",
      "| family | estimators | unbiased |", "| --- | --- | --- |"]
  for family, _, _ in one_layer_registries():
    es = sections[family]
    lines.append(
        f"| {FAMILY_TITLES[family]} | "
        + ", ".join(f"[`{e.name}`](#{anchor(family, e.name)})" for e in es)
        + f" | {sum(e.unbiased.startswith('yes') for e in es)} of {len(es)} |")
  ms = sections["multisample"]
  lines.append("| K-sample objectives | " + ", ".join(
      f"[`{e.name}`](#{anchor('multisample', e.name)})" for e in ms)
      + f" | {sum(e.unbiased.startswith('yes') for e in ms)} of {len(ms)} |")
  lines.append("")
  for family, _, _ in one_layer_registries():
    es = sections[family]
    lines += [f"## {FAMILY_TITLES[family]}", "",
              f"{FAMILY_SHAPES[family]}. `rebar_jax.estimators.get(name, "
              f"{family!r})` returns the function.", ""]
    lines += ["| name | unbiased | cost per draw |", "| --- | --- | --- |"]
    lines += [f"| [`{e.name}`](#{anchor(family, e.name)}) | "
              f"{'yes' if e.unbiased.startswith('yes') else 'no'} | "
              f"{e.cost} |" for e in es]
    lines.append("")
    for e in es:
      lines += entry_markdown(e)
  lines += ["## K-sample objectives", "",
            "Surrogate losses over K chains of one data point "
            "(`rebar_jax.estimators.multisample`): their gradient is the "
            "estimator. Train with `--config.iw_samples=K` and one of these "
            "names.", ""]
  for e in ms:
    lines += entry_markdown(e)
  lines += ["## Training estimators", "",
            "What `--config.estimator=` names in training: "
            "`rebar_jax.estimators.protocol.REGISTRY[family][name](options)` "
            "builds an `init` / `estimate` / `summary` triple "
            "({py:class}`rebar_jax.estimators.protocol.Estimator`) from the "
            "options of {py:class}`rebar_jax.estimators.protocol.Options`. "
            "Most are a one-layer estimator above, vmapped over data points "
            "and layers; \"tuned\" ones train their control variate on its "
            "own variance.", ""]
  lines += training_rows()
  del protocol
  return "\n".join(lines) + "\n"


def write(app) -> None:
  path = pathlib.Path(app.srcdir) / "catalogue.md"
  text = render()
  if not path.exists() or path.read_text() != text:
    path.write_text(text)


def setup(app) -> dict[str, Any]:
  app.connect("builder-inited", write)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
