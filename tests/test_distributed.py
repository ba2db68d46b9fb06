"""A scan on a Dask cluster gives the in-process scan's results."""

import numpy as np
import pandas as pd
import pytest

from emlmm import gwas
from emlmm.datasets import load_lab

distributed = pytest.importorskip("distributed")
dask_array = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as connected:
            yield connected


def test_scan_on_a_local_cluster_equals_the_in_process_scan(client):
    lab = load_lab()
    data, genotypes = lab.phenotype.to_frame(), lab.genotypes.iloc[:, :120]
    local = gwas("y ~ 1 + snp", data, genotypes, lab.kinship, chunk_size=25)
    seen = []
    remote = gwas("y ~ 1 + snp", data, genotypes, lab.kinship, chunk_size=25, client=client,
                  progress=lambda done, total: seen.append(done))
    # Workers run BLAS on one thread, so products may round differently in the last bits.
    pd.testing.assert_frame_equal(remote, local, rtol=1e-8, check_exact=False)
    assert seen == [25, 50, 75, 100, 120]
    lazy = dask_array.from_array(genotypes.to_numpy(), chunks=(300, 40))
    from_dask = gwas("y ~ 1 + snp", data, lazy, lab.kinship, chunk_size=25, client=client)
    np.testing.assert_allclose(from_dask.p_lrt, local.p_lrt, rtol=1e-8)
    assert list(from_dask.index[:2]) == ["snp1", "snp2"]
