"""h2 and its standard errors against GEMMA's pve and se(pve), on GEMMA's own example.

Run by hand (needs the Debian packages ``gemma`` and ``gemma-doc``):

    python benchmarks/heritability_gemma.py

GEMMA (``-lmm``) double-centres the kinship over the individuals analysed before its
eigendecomposition and reports the REML ``pve`` with ``se(pve)`` from the observed
information. emlmm's ``h2`` with ``bse_h2_observed`` is the same quantity: with the
kinship centred the same way the two agree; ``bse_h2`` (expected information) and the
profile-likelihood interval ``h2_conf_int()`` are printed beside them.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

# The example's unpacking is gemma_workflow's (this folder is on sys.path when run).
from gemma_workflow import PREFIX, unpack

from emlmm import EMLMM, read_plink


def gemma_log(folder: Path, name: str) -> dict[str, float]:
    text = (folder / "output" / f"{name}.log.txt").read_text()
    pattern = r"## (pve estimate in the null model|se\(pve\) in the null model) = (\S+)"
    found = dict(re.findall(pattern, text))
    return {
        "pve": float(found["pve estimate in the null model"]),
        "se": float(found["se(pve) in the null model"]),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        unpack(folder)
        prefix = folder / PREFIX
        print("phenotype  who            pve/h2     se(obs)    se(exp)   profile 95% CI")
        for column in (1, 2, 3):
            run = ["gemma", "-bfile", PREFIX, "-n", str(column)]
            subprocess.run([*run, "-gk", "1", "-o", f"k{column}"], cwd=folder, check=True,
                           capture_output=True)  # fmt: skip
            subprocess.run(
                [*run, "-k", f"output/k{column}.cXX.txt", "-lmm", "1", "-o", f"a{column}"],
                cwd=folder, check=True, capture_output=True,
            )  # fmt: skip
            gemma = gemma_log(folder, f"a{column}")
            kinship = np.loadtxt(folder / "output" / f"k{column}.cXX.txt")
            with read_plink(prefix) as plink:
                y = plink.phenotype(column)
                ids = plink.sample_ids
            kept = y.notna().to_numpy()
            block = kinship[np.ix_(kept, kept)]
            n = block.shape[0]
            centre = np.eye(n) - 1.0 / n
            labels = ids[kept]
            data = y.rename("y").to_frame().loc[labels]
            print(f"{column:>9}  GEMMA          {gemma['pve']:.6f}   {gemma['se']:.6f}")
            for name, matrix in (
                ("emlmm centred", centre @ block @ centre),
                ("emlmm as is", block),
            ):
                frame = pd.DataFrame(matrix, index=labels, columns=labels)
                fit = EMLMM.from_formula("y ~ 1", data, kinship=frame).fit(reml=True)
                low, high = fit.h2_conf_int()
                print(f"{'':>9}  {name:<13}  {fit.h2:.6f}   {fit.bse_h2_observed:.6f}   "
                      f"{fit.bse_h2:.6f}  [{low:.4f}, {high:.4f}]")  # fmt: skip


if __name__ == "__main__":
    main()
