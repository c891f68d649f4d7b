"""Links in docs/results/ and docs/toy/ pages written from the repository root.

Those pages are written to be read in the repository, and a few of their
links name a file from the root (`docs/results/variance.png`); in the site
such a path is resolved against the page. This hook rewrites a link or image
target that starts with `docs/` to the same file relative to the page, at
read time, and gives a page that the scripts wrote without a heading its file
name as its title (the site's navigation needs one); the files themselves
are not changed.
"""
import os
import re


def rewrite(app, docname, source):
  if not docname.startswith(("results/", "toy/")):
    return
  here = os.path.dirname(docname)

  def relative(match):
    target = match.group(2)[len("docs/"):]
    return match.group(1) + os.path.relpath(target, here or ".")

  source[0] = re.sub(r"(\]\()(docs/[^)\s#]+)", relative, source[0])
  if not re.match(r"\s*# ", source[0]):
    name = os.path.basename(docname)
    source[0] = f"# `{name}.md`\n\n" + source[0]


def setup(app):
  app.connect("source-read", rewrite)
  return {"parallel_read_safe": True}
