"""emlmm: linear mixed models with a kinship matrix, fitted by EM, for statsmodels."""

from typing import TYPE_CHECKING, Any

from emlmm import _threads

# Before anything loads numpy, and with it OpenBLAS (see the function).
_threads.calm_idle_blas_threads()

from emlmm import datasets  # noqa: E402
from emlmm.gwas import GenomeScan, ScanFileError, ScanOutput, ScanSummary, gwas  # noqa: E402
from emlmm.io import (  # noqa: E402
    read_covariates,
    read_grm,
    read_lab,
    read_phenotypes,
    read_plink,
    write_grm,
)
from emlmm.kinship import LowRankKinship, kinship  # noqa: E402

if TYPE_CHECKING:
    from emlmm.model import EMLMM
    from emlmm.results import EMLMMResults, LikelihoodRatioTest

__all__ = [
    "EMLMM",
    "EMLMMResults",
    "GenomeScan",
    "LikelihoodRatioTest",
    "LowRankKinship",
    "ScanFileError",
    "ScanOutput",
    "ScanSummary",
    "datasets",
    "gwas",
    "kinship",
    "read_covariates",
    "read_grm",
    "read_lab",
    "read_phenotypes",
    "read_plink",
    "write_grm",
]
__version__ = "0.1.0.dev0"

#: Names imported on first use: the model layer brings statsmodels' (and with it
#: scipy.stats), about half a second that reading files and computing kinships
#: (``emlmm kinship``) do not need.
_LAZY = {
    "EMLMM": "emlmm.model",
    "EMLMMResults": "emlmm.results",
    "LikelihoodRatioTest": "emlmm.results",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emlmm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
