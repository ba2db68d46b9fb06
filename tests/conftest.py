import numpy as np
import pandas as pd
import pytest
from dense import random_genotype_kinship


@pytest.fixture
def grouped():
    """Grouped data (unequal group sizes) and its block-diagonal kinship A = Z Z'."""
    rng = np.random.default_rng(11)
    sizes = rng.integers(2, 9, size=45)
    groups = np.repeat(np.arange(sizes.size), sizes)
    n = groups.size
    df = pd.DataFrame(
        {
            "g": groups,
            "x": rng.normal(size=n),
            "sex": rng.choice(["F", "M"], size=n),
        }
    )
    df["y"] = (
        3.0
        + 1.5 * df.x
        + 0.7 * (df.sex == "M")
        + rng.normal(scale=1.2, size=sizes.size)[groups]
        + rng.normal(size=n)
    )
    kinship = (groups[:, None] == groups[None, :]).astype(float)
    return df, kinship


@pytest.fixture
def genomic():
    """n = 80 individuals with a full-rank genomic kinship and a heritable trait."""
    rng = np.random.default_rng(5)
    n = 80
    kinship = random_genotype_kinship(rng, n, 400)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    a = np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    y = X @ np.array([10.0, 0.5]) + 2.0 * a + rng.normal(size=n)
    return y, X, kinship
