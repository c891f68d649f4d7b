"""The README's estimator example runs as written and says what it claims."""
import io
import os
import re
import contextlib

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")


def test_readme_python_example_runs():
  blocks = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
  assert blocks, "README has no python example"
  namespace = {}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["grad"].shape == (3,)
  mean, exact = np.asarray(namespace["draws"]).mean(0), namespace["exact"]
  se = np.asarray(namespace["draws"]).std(0) / np.sqrt(10_000)
  assert np.all(np.abs(mean - exact) <= 4.5 * se)
  assert out.getvalue().strip()


def _readme_tables() -> dict[str, dict[str, str]]:
  """The README's estimator table: {block: {name: its "unbiased" cell}}.

  A row's backticked names share its cells; a name written `_suffix`
  continues the row's first name (`disarm_stick_breaking`, `_rb`).
  """
  text = open(README).read()
  table = text[text.index("| name | unbiased | reference |"):]
  table = table[:table.index("\n\n")]
  blocks, block = {}, None
  for row in table.splitlines()[2:]:
    cells = [c.strip() for c in row.strip("|").split("|")]
    heading = re.match(r"\*\*(.+?)\*\*", cells[0])
    if heading:
      block = blocks.setdefault(heading.group(1), {})
      continue
    names = re.findall(r"`([^`]+)`", cells[0])
    for name in names:
      block[names[0] + name if name.startswith("_") else name] = cells[1]
  return blocks


def test_readme_estimator_table_is_the_registry():
  """Every registered estimator has one row, and its "unbiased" is right."""
  from rebar_jax import estimators  # pylint: disable=g-import-not-at-top
  from rebar_jax.estimators import registry  # pylint: disable=g-import-not-at-top
  tables = _readme_tables()
  registries = {
      "Bernoulli": (estimators.BERNOULLI, estimators.UNBIASED),
      "Categorical": (estimators.CATEGORICAL, estimators.UNBIASED_CATEGORICAL),
      "Gaussian": (estimators.GAUSSIAN, estimators.UNBIASED_GAUSSIAN),
      "K-sample objectives": (
          [n for n in registry.ENTRIES if registry.get(n).is_multisample],
          registry.names(unbiased=True))}
  assert set(tables) == set(registries)
  for block, (listed, unbiased) in registries.items():
    rows = tables[block]
    assert set(rows) == set(listed), (block, set(rows) ^ set(listed))
    for name, cell in rows.items():
      assert cell.startswith("yes") == (name in unbiased), (block, name, cell)
