"""emlmm: linear mixed models with a kinship matrix, fitted by EM, for statsmodels."""

from emlmm.model import EMLMM
from emlmm.results import EMLMMResults, LikelihoodRatioTest

__all__ = ["EMLMM", "EMLMMResults", "LikelihoodRatioTest"]
__version__ = "0.1.0.dev0"
