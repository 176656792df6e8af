# Sphinx configuration of the docker2vm documentation (doc/source).
# Build: tox -e docs, or
#   sphinx-build -W -b html doc/source doc/build/html
# The pages are Markdown (MyST); index.rst and the section indexes hold the
# toctrees. Option references come from the code (oslo_config.sphinxext,
# _exts/optiongroups.py) and
# the error catalogue of the troubleshooting page from the product code's
# raise statements (_exts/errorcatalog.py), so neither is copied by hand.

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_exts"))
sys.path.insert(0, TOP)  # the option modules, when docker2vm is not installed

project = "docker2vm"
copyright = "docker2vm developers"  # noqa: A001 (Sphinx's name)

extensions = [
    "myst_parser",
    "sphinx.ext.graphviz",
    "oslo_config.sphinxext",
    "optiongroups",
    "errorcatalog",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_exts"]

# MyST: ```{directive} fences, :::{note} blocks, `(label)=` targets and
# header anchors for cross-page links such as [x](disk.md#benchmark).
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

graphviz_output_format = "svg"

# The OpenStack theme when installed (doc/requirements.txt) and the tree is a
# git checkout (the theme reads the commit and warns without one, which -W
# turns into an error), else Sphinx's stock theme.
try:
    import openstackdocstheme  # noqa: F401
    subprocess.run(["git", "rev-parse", "HEAD"], cwd=TOP, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
except (ImportError, OSError, subprocess.CalledProcessError):
    html_theme = "alabaster"
else:
    extensions.append("openstackdocstheme")
    html_theme = "openstackdocs"
    # No bug links to Launchpad (no bug project), no PDF, no version lookup
    # through pbr. The repository name only appears in an HTML comment.
    openstackdocs_repo_name = "docker2vm"
    openstackdocs_use_storyboard = False
    openstackdocs_auto_name = False
    openstackdocs_auto_version = False
    openstackdocs_pdf_link = False
    # No analytics script (the theme's default loads Google's), and this
    # project's own title instead of "OpenStack Docs".
    html_theme_options = {"analytics_tracking_code": "", "root_title": "docker2vm",
                          "display_badge": False}

html_title = "docker2vm"
html_static_path = []
