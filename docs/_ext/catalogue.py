"""The estimator catalogue, generated from the registry at build time.

Sphinx extension: on `builder-inited` it writes `catalogue.md` beside
conf.py (ignored by git) from

* the registry `rebar_jax.estimators.registry`: each entry's families, kind,
  unbiasedness, cost, capabilities, paper and options (`options.OPTIONS`);
* each estimator function's signature and docstring (the summary line, the
  first displayed equation, the `Args:` descriptions of its options).

Nothing about an estimator is written here.
"""
import dataclasses
import functools
import inspect
import pathlib
import re
import textwrap
from typing import Any, Callable, Optional

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

FAMILIES = ("bernoulli", "categorical", "gaussian")
UNBIASED_FOR = {
    "layer": "yes, for d/dlogits E[f(b)]",
    "iw": "yes, for -grad E[L_K] (the importance-weighted bound)",
    "elbo": "yes, for -grad ELBO"}


def _unbiased(registry, entry) -> str:
  return {None: "**no**", registry.GRAD_F: UNBIASED_FOR["layer"],
          registry.GRAD_IW: UNBIASED_FOR["iw"],
          registry.GRAD_ELBO: UNBIASED_FOR["elbo"]}[entry.unbiased_for]


def entries() -> dict[str, list[Entry]]:
  """Every estimator, by section, from the registry."""
  from rebar_jax.estimators import registry  # pylint: disable=g-import-not-at-top
  out: dict[str, list[Entry]] = {}
  for family in FAMILIES:
    out[family] = []
    for name, fn in registry.one_layer(family).items():
      e = registry.get(name)
      notes = []
      if e.has(registry.RELAXED):
        notes.append("**Needs** f continuous on the relaxed domain (it is "
                     "evaluated and differentiated at relaxed samples; see "
                     "{py:mod}`rebar_jax.estimators.continuity`).")
      out[family].append(Entry(name, family, fn, _unbiased(registry, e),
                               e.cost[family], notes=notes))
  out["multisample"] = []
  for name in registry.ENTRIES:
    e = registry.get(name)
    if not e.is_multisample:
      continue
    notes = []
    if e.has(registry.NEEDS_AUX):
      notes.append("Also takes `log_w_aux`, the log-weights of independent "
                   "auxiliary chains.")
    if e.has(registry.RENYI):
      notes.append("Takes `alpha=`, the Rényi bound's alpha "
                   "({py:func}`rebar_jax.estimators.multisample.renyi_bound`)."
                   )
    cost = next(iter(e.cost.values()))
    if e.kind == registry.LOCAL:
      from rebar_jax import gradients  # pylint: disable=g-import-not-at-top
      notes.append(
          f"Runs [`{e.objective}`](#{anchor('bernoulli', e.objective)}) for "
          "each chain and layer; built by {py:mod}`rebar_jax.gradients`, "
          "which holds the chains.")
      out["multisample"].append(Entry(
          name, "multisample", gradients._local_gradients,  # pylint: disable=protected-access
          _unbiased(registry, e), cost, notes=notes))
      continue
    fn = e.objective
    if e.kind == registry.REPARAMETERISED:
      notes.append("Every layer Gaussian (reparameterised chains).")
      from rebar_jax.estimators import multisample  # pylint: disable=g-import-not-at-top
      fn = getattr(multisample, f"{name}_surrogate", None) or fn
    fixed = dict(getattr(fn, "keywords", {}) or {})
    out["multisample"].append(Entry(name, "multisample", fn,
                                    _unbiased(registry, e), cost, fixed,
                                    notes))
  return out


def training_rows() -> list[str]:
  """The registry's layer estimators, one table per family."""
  from rebar_jax.estimators import registry  # pylint: disable=g-import-not-at-top
  out = []
  for family in FAMILIES:
    out += [f"**{FAMILY_TITLES[family]}** "
            f"(`--config.estimator=NAME` or `{family}:NAME`):", "",
            "| name | what it runs | options | paper | note |",
            "| --- | --- | --- | --- | --- |"]
    for name in registry.names(family=family, kind=registry.LAYER):
      e = registry.get(name)
      build = e.families[family]
      if family in e.one_layer:
        runs = f"[`{name}`](#{anchor(family, name)}) per layer"
      else:
        runs = (f"{{py:func}}`{qualified(build)}`: "
                f"{md(summary(docstring(build)))}")
      note = []
      if e.has(registry.RELAXED):
        note.append("relaxed: needs a continuous learning signal")
      if e.has(registry.RESCALED):
        note.append("unbiased up to a positive scale per layer")
      if e.has(registry.PATHWISE):
        note.append("pathwise")
      if e.auto:
        note.append("a default candidate of `--config.estimator=auto`")
      opts = ", ".join(f"`{o}`" for o in e.options) or "none"
      out.append(f"| `{name}` | {runs} | {opts} | {md(e.reference)} | "
                 f"{'; '.join(note)} |")
    out.append("")
  return out


def option_rows() -> list[str]:
  """The options' schema: name, config field, default, meaning."""
  from rebar_jax.estimators import options as options_lib  # pylint: disable=g-import-not-at-top
  out = ["| option | config field | default | meaning |",
         "| --- | --- | --- | --- |"]
  for o in options_lib.OPTIONS.values():
    out.append(f"| `{o.name}` | `config.{o.field}` | `{o.default!r}` | "
               f"{md(o.meaning)} |")
  return out + [""]


def render() -> str:
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
  for family in FAMILIES:
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
  for family in FAMILIES:
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
            "`rebar_jax.estimators.registry.build(name, family, options)` "
            "builds an `init` / `estimate` / `summary` triple "
            "({py:class}`rebar_jax.estimators.protocol.Estimator`) from the "
            "options below ({py:mod}`rebar_jax.estimators.options`); an "
            "option an estimator does not read must keep its default. "
            "Most are a one-layer estimator above, vmapped over data points "
            "and layers; \"tuned\" ones train their control variate on its "
            "own variance.", ""]
  lines += training_rows()
  lines += ["### Options", ""] + option_rows()
  return "\n".join(lines) + "\n"


def write(app) -> None:
  path = pathlib.Path(app.srcdir) / "catalogue.md"
  text = render()
  if not path.exists() or path.read_text() != text:
    path.write_text(text)


def setup(app) -> dict[str, Any]:
  app.connect("builder-inited", write)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
