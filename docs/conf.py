"""Sphinx configuration for emlmm's documentation (built offline, strictly)."""

import os
from pathlib import Path

import emlmm

# Tutorials check their numbers against the reference values the tests use; the
# notebook kernels inherit this variable, wherever emlmm is installed.
os.environ["EMLMM_REFERENCE_RESULTS"] = str(Path(__file__).parent.parent / "tests" / "results")

project = "emlmm"
author = "the emlmm developers"
copyright = "2026, the emlmm developers"
release = emlmm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    # MathJax 3's files, copied into _static/mathjax: math renders with no network.
    "sphinx-mathjax-offline",
    "numpydoc",
    "myst_nb",
]

exclude_patterns = [
    "_build",
    "_templates",
    "jupyter_execute",
    "**/.ipynb_checkpoints",
    "inventories",
]

# API reference: the numpydoc docstrings say everything; type hints in signatures
# would only repeat them with private module paths.
autosummary_generate = True
templates_path = ["_templates"]
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# The models and results also document what they inherit from statsmodels
# (_templates/autosummary/class_inherited.rst), whose docstrings refer to two names
# that no committed inventory holds.
nitpick_ignore = [
    ("py:obj", "statsmodels.stats.contrast.ContrastResults"),
    ("py:obj", "patsy.DesignInfo.linear_constraint"),
]

# Tutorials are MyST notebooks without stored outputs, executed at every build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
# No page loads a script from the network (tests/test_docs_build.py checks the built
# site): no require.js or ipywidgets bundle from a CDN, even if a notebook had widgets.
nb_ipywidgets_js = {}

# Offline: each project's inventory is a committed file (inventories/make_inventories.py).
_inventories = Path(__file__).parent / "inventories"
intersphinx_mapping = {
    name: (url, str(_inventories / f"{name}.inv"))
    for name, url in {
        "python": "https://docs.python.org/3/",
        "numpy": "https://numpy.org/doc/stable/",
        "scipy": "https://docs.scipy.org/doc/scipy/",
        "pandas": "https://pandas.pydata.org/docs/",
        "statsmodels": "https://www.statsmodels.org/stable/",
        "matplotlib": "https://matplotlib.org/stable/",
    }.items()
}

html_theme = "pydata_sphinx_theme"
html_title = "emlmm"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": False,
    # The navbar keeps to one line: a few short titles (set in index.md's toctrees),
    # the rest under "More".
    "header_links_before_dropdown": 4,
}
# Every page, a tutorial too, shows the whole site's navigation on the left
# (_templates/sidebar-nav-all.html); the theme's own shows only a page's subsection.
html_sidebars = {"**": ["sidebar-nav-all"]}
# A page's contents list names members without their class: "conf_int()", not
# "EMLMMResults.conf_int()".
toc_object_entries_show_parents = "hide"
