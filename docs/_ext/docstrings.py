"""Docstrings written as plain text with ASCII math, made safe for reST.

The library's docstrings are math first (`g^ = (f(b) - c) (b - sigmoid(l))`,
`|g^|^2`, `b_`), written for a reader of the source, not in reStructuredText.
Before napoleon reads the Google-style sections, this hook

* turns every indented block of prose (the equations) into a literal block,
  so its alignment is kept and nothing in it is parsed;
* escapes the characters reST would read as markup in the remaining prose
  (`\\`, `|`, `*` except a bullet's, and `_` closing a word), outside
  backtick spans.
"""
import re

SECTIONS = re.compile(
    r"^\s*(Args|Arguments|Attributes|Returns|Return|Raises|Yields|Yield|"
    r"Example|Examples|Note|Notes|Parameters|Keyword Args|Methods|"
    r"References|See Also|Warning|Warns|Todo):\s*$")
_WORD_END_UNDERSCORE = re.compile(r"(?<=[\w\]\)])_(?=[^\w]|$)")


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _escape(text: str) -> str:
  parts = re.split(r"(``.*?``|`[^`]*`)", text)
  out = []
  for i, part in enumerate(parts):
    if i % 2:  # a backtick span: literal or a cross-reference, left as is
      out.append(part)
      continue
    part = part.replace("\\", "\\\\").replace("|", "\\|")
    bullet = re.match(r"^(\s*)\* ", part) if i == 0 else None
    head, rest = (part[:bullet.end()], part[bullet.end():]) if bullet else (
        "", part)
    rest = rest.replace("*", "\\*")
    rest = _WORD_END_UNDERSCORE.sub(r"\\_", rest)
    out.append(head + rest)
  return "".join(out)


def make_safe(lines: list[str]) -> list[str]:
  """The docstring `lines` with equations as literal blocks, prose escaped."""
  out: list[str] = []
  in_section = False      # inside a Google-style section (napoleon's)
  section_indent = 0
  base = None             # indentation of the prose around here
  literal_indent = None   # inside a literal block indented this much
  for line in lines:
    if not line.strip():
      out.append(line)
      continue
    indent = _indent(line)
    if literal_indent is not None:
      if indent >= literal_indent:
        out.append(line)
        continue
      literal_indent = None
      if out and out[-1].strip():
        out.append("")
    if SECTIONS.match(line):
      in_section, section_indent = True, indent
      out.append(line)
      continue
    if in_section:
      if indent > section_indent:
        out.append(_escape(line))
        continue
      in_section = False
    if base is None or (out and not out[-1].strip() and indent < base):
      base = indent
    if indent > base and not re.match(r"^\s*([*-]|\d+\.) ", out[-1] if out
                                     else "") and not _continues_item(out,
                                                                      indent):
      # An indented block under prose: an equation, kept verbatim.
      while out and not out[-1].strip():
        out.pop()
      out.extend(["", " " * base + "::", "", line])
      literal_indent = base + 1
      continue
    out.append(_escape(line))
  return out


def _continues_item(out: list[str], indent: int) -> bool:
  """Whether a more indented line continues a bullet or numbered item."""
  for prev in reversed(out):
    if not prev.strip():
      return False
    m = re.match(r"^(\s*)([*-]|\d+\.) ", prev)
    if m:
      return indent > len(m.group(1))
    if _indent(prev) < indent:
      return False
  return False


def process(app, what, name, obj, options, lines):  # pylint: disable=unused-argument
  lines[:] = make_safe(list(lines))


def setup(app):
  # Before napoleon (priority 500) reads the sections.
  app.connect("autodoc-process-docstring", process, priority=400)
  return {"parallel_read_safe": True}
