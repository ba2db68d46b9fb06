"""emlmm: linear mixed models with a kinship matrix, fitted by EM, for statsmodels."""

from emlmm import datasets
from emlmm.gwas import GenomeScan, ScanOutput, gwas
from emlmm.io import read_lab, read_plink
from emlmm.kinship import kinship
from emlmm.model import EMLMM
from emlmm.results import EMLMMResults, LikelihoodRatioTest

__all__ = [
    "EMLMM",
    "EMLMMResults",
    "GenomeScan",
    "LikelihoodRatioTest",
    "ScanOutput",
    "datasets",
    "gwas",
    "kinship",
    "read_lab",
    "read_plink",
]
__version__ = "0.1.0.dev0"
