"""emlmm: linear mixed models with a kinship matrix, fitted by EM, for statsmodels."""

from emlmm import datasets
from emlmm.gwas import GenomeScan, ScanFileError, ScanOutput, ScanSummary, gwas
from emlmm.io import (
    read_covariates,
    read_grm,
    read_lab,
    read_phenotypes,
    read_plink,
    write_grm,
)
from emlmm.kinship import LowRankKinship, kinship
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
