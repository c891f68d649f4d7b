"""pytest set-up: absl flags are parsed (absltest helpers such as
create_tempdir read --test_tmpdir), and the repository root is importable so
tests can load configs/."""
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
