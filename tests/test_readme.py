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
