"""Write a large PLINK fileset chunk by chunk, plus K.txt, for bench_memory.sh.

    python benchmarks/bench_memory_data.py --n 2000 --m 50000 --out /tmp/bench/mem/P50k

The .bed is written directly (SNP-major, 4 genotypes per byte, A1 counted), one
chunk of SNPs at a time, so memory stays O(n x chunk). The kinship (centered,
emlmm.kinship) is computed from the first chunk and written to <out>.K.txt; the
phenotype (h2 ~ 0.5 on that kinship) goes in the .fam. A small fileset is checked
against bed_reader before writing (--check).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sim import grm, simulate_genotypes, simulate_phenotype

_CODE = np.array([3, 2, 0], dtype=np.uint8)  # 0 copies of A1 -> 11, 1 -> 10, 2 -> 00


def bed_bytes(block: np.ndarray) -> bytes:
    """SNP-major .bed bytes for an n x k block of 0/1/2 (A1 counts), no missing."""
    n, k = block.shape
    codes = _CODE[block.astype(np.intp)].T  # k x n
    padded = np.zeros((k, -(-n // 4) * 4), dtype=np.uint8)
    padded[:, :n] = codes
    quads = padded.reshape(k, -1, 4)
    packed = quads[:, :, 0] | (quads[:, :, 1] << 2) | (quads[:, :, 2] << 4) | (quads[:, :, 3] << 6)
    return packed.astype(np.uint8).tobytes()


def write(prefix: str, n: int, m: int, chunk: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    with open(prefix + ".bed", "wb") as bed, open(prefix + ".bim", "w") as bim:
        bed.write(bytes([0x6C, 0x1B, 0x01]))
        for start in range(0, m, chunk):
            k = min(chunk, m - start)
            block, p = simulate_genotypes(n, k, rng)
            if start == 0:
                import emlmm

                kinship = emlmm.kinship(block)
                np.savetxt(prefix + ".K.txt", kinship, fmt="%.15g", delimiter="\t")
                y = simulate_phenotype(grm(block, p), 0.5, rng)
            bed.write(bed_bytes(block))
            bim.writelines(
                f"1\trs{j + 1}\t0\t{1000 * (j + 1)}\tA\tG\n" for j in range(start, start + k)
            )
    with open(prefix + ".fam", "w") as fam:
        fam.writelines(f"f{i + 1}\ts{i + 1}\t0\t0\t0\t{y[i]:.10g}\n" for i in range(n))
    print(
        f"wrote {prefix}.bed/.bim/.fam ({n} x {m}) and {prefix}.K.txt in "
        f"{time.perf_counter() - t:.1f} s"
    )


def check(tmpdir: str) -> None:
    from bed_reader import open_bed

    rng = np.random.default_rng(0)
    block = rng.integers(0, 3, size=(7, 5)).astype(float)
    prefix = os.path.join(tmpdir, "check")
    with open(prefix + ".bed", "wb") as bed:
        bed.write(bytes([0x6C, 0x1B, 0x01]) + bed_bytes(block))
    with open(prefix + ".bim", "w") as bim:
        bim.writelines(f"1\tr{j}\t0\t{j}\tA\tG\n" for j in range(5))
    with open(prefix + ".fam", "w") as fam:
        fam.writelines(f"f{i}\ts{i}\t0\t0\t0\t-9\n" for i in range(7))
    back = open_bed(prefix + ".bed").read(dtype="float64")
    assert np.array_equal(back, block), (back, block)
    print("bed writer check: OK (bed_reader reads back the same genotypes)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--m", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    check(os.path.dirname(os.path.abspath(args.out)))
    write(args.out, args.n, args.m, args.chunk, args.seed)


if __name__ == "__main__":
    main()
