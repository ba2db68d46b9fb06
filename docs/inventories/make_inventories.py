"""Write the intersphinx inventories the offline docs build links with.

The build machine cannot download the projects' ``objects.inv``. This script writes
inventories (Sphinx's version 2 format) holding just the names emlmm's documentation
refers to, each pointing at the page where the project documents it, following
that project's URL layout. Run it after referring to a new external name, and
commit the ``*.inv`` files:

    python docs/inventories/make_inventories.py
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).parent

#: project -> (base URL, version, {name: (role, page relative to the base)})
PROJECTS: dict[str, tuple[str, str, dict[str, tuple[str, str]]]] = {
    "python": (
        "https://docs.python.org/3/",
        "3",
        {
            "int": ("class", "library/functions.html#int"),
            "float": ("class", "library/functions.html#float"),
            "bool": ("class", "library/functions.html#bool"),
            "str": ("class", "library/stdtypes.html#str"),
            "dict": ("class", "library/stdtypes.html#dict"),
            "list": ("class", "library/stdtypes.html#list"),
            "tuple": ("class", "library/stdtypes.html#tuple"),
            "callable": ("function", "library/functions.html#callable"),
            "os.PathLike": ("class", "library/os.html#os.PathLike"),
            "pathlib.Path": ("class", "library/pathlib.html#pathlib.Path"),
            "ValueError": ("exception", "library/exceptions.html#ValueError"),
            "TypeError": ("exception", "library/exceptions.html#TypeError"),
            "FileNotFoundError": ("exception", "library/exceptions.html#FileNotFoundError"),
            "ImportError": ("exception", "library/exceptions.html#ImportError"),
        },
    ),
    "numpy": (
        "https://numpy.org/doc/stable/",
        "2",
        {
            "numpy.ndarray": ("class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
            "numpy.loadtxt": ("function", "reference/generated/numpy.loadtxt.html#numpy.loadtxt"),
            "numpy.typing.ArrayLike": ("data", "reference/typing.html#numpy.typing.ArrayLike"),
        },
    ),
    "scipy": (
        "https://docs.scipy.org/doc/scipy/",
        "1",
        {
            "scipy.stats.chi2": (
                "data",
                "reference/generated/scipy.stats.chi2.html#scipy.stats.chi2",
            ),
            "scipy.stats.f": ("data", "reference/generated/scipy.stats.f.html#scipy.stats.f"),
        },
    ),
    "pandas": (
        "https://pandas.pydata.org/docs/",
        "2",
        {
            name: (role, f"reference/api/{name}.html#{name}")
            for name, role in {
                "pandas.DataFrame": "class",
                "pandas.Series": "class",
                "pandas.Index": "class",
                "pandas.read_csv": "function",
            }.items()
        },
    ),
    "statsmodels": (
        "https://www.statsmodels.org/stable/",
        "0.15",
        {
            name: (role, f"{page}/{name}.html#{name}")
            for name, role, page in [
                ("statsmodels.base.model.LikelihoodModel", "class", "dev/generated"),
                ("statsmodels.base.model.LikelihoodModelResults", "class", "dev/generated"),
                ("statsmodels.base.model.Model.from_formula", "method", "dev/generated"),
                ("statsmodels.regression.mixed_linear_model.MixedLM", "class", "generated"),
                ("statsmodels.regression.linear_model.OLS", "class", "generated"),
                ("statsmodels.tools.sm_exceptions.ConvergenceWarning", "class", "generated"),
                ("statsmodels.tools.sm_exceptions.ModelWarning", "class", "generated"),
                ("statsmodels.iolib.summary.Summary", "class", "generated"),
                ("statsmodels.tools.tools.add_constant", "function", "generated"),
            ]
        }
        | {
            "statsmodels.api.add_constant": (
                "function",
                "generated/statsmodels.tools.tools.add_constant.html"
                "#statsmodels.tools.tools.add_constant",
            ),
        },
    ),
    "matplotlib": (
        "https://matplotlib.org/stable/",
        "3",
        {
            "matplotlib.axes.Axes": (
                "class",
                "api/_as_gen/matplotlib.axes.Axes.html#matplotlib.axes.Axes",
            ),
            "matplotlib.figure.Figure": (
                "class",
                "api/_as_gen/matplotlib.figure.Figure.html#matplotlib.figure.Figure",
            ),
        },
    ),
}


def write_inventory(project: str, version: str, entries: dict[str, tuple[str, str]]) -> Path:
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(
        f"{name} py:{role} 1 {page} -\n" for name, (role, page) in sorted(entries.items())
    )
    path = HERE / f"{project}.inv"
    path.write_bytes(header.encode() + zlib.compress(body.encode()))
    return path


if __name__ == "__main__":
    for project, (_, version, entries) in PROJECTS.items():
        print(write_inventory(project, version, entries))
