"""The scratch embedding store's layout (embedding_store.py): whole-core chunks with zarr's
default Zstandard (before 2026-12-05) against chunks of at most 64 voxels a side within each core
with LZ4 on shuffled bytes (the library's now), side by side in one process.

    python benchmarks/embedding_store_layout.py [--data DIR] [--mosaic 2] [--reps 2]

The cells3d nuclei volume mirrored into an n×n mosaic (as blockwise_scaling.py builds it) is
embedded once in memory with the shipped 3D start (one pass), the embedding of pixels below the
foreground threshold set to zero as block-wise segmentation stores it; then, per layout and
rep (alternating), every embedding core is written through ``EmbeddingStore`` as
``segment_blockwise`` plans them and every block's region (core plus clustering halo) is read
back. Prints seconds to write and to read, disk used, and whether both layouts read the same values.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, read, use_data_dir  # noqa: E402

import napari_spoco.embedding_store as es  # noqa: E402


def whole_cores(core, side=None):
    return tuple(core)


def zarr_default():
    return "auto"  # zarr's default codec for format 2 (Zstandard, level 0, in zarr 3)


LAYOUTS = {"whole cores, Zstandard (before)": (whole_cores, zarr_default),
           "chunks within cores, LZ4 (now)": (es.chunks_within, es._compressor)}


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--mosaic", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    use_data_dir(args.data, needs=("cells3d-nuclei",))
    from blockwise_scaling import mirrored_mosaic

    from napari_spoco.blockwise import REGION_PIXELS, cluster_halo, plan_blocks, plan_core_shape
    from napari_spoco.clustering import ClusterConfig
    from napari_spoco.inference import embed, prepare_image
    from napari_spoco.pretrained import load_default_model

    volume, labels = read("cells3d-nuclei", "cells3d_nuclei", "images"), read("cells3d-nuclei", "cells3d_nuclei", "masks")
    image, _ = mirrored_mosaic(volume, labels, args.mosaic)
    model = load_default_model(3)
    e = embed(model, prepare_image(model, image, None, None), device="cpu", tta=False)
    threshold = ClusterConfig().foreground_threshold
    vectors = np.where(e.foreground[None] >= threshold, e.embeddings, 0.0).astype(np.float32)
    shape = image.shape
    ecore = es.plan_cores(shape, model, REGION_PIXELS[3])
    cores = es.core_regions(shape, ecore, es.context(model))
    halo = cluster_halo(model)
    blocks = plan_blocks(shape, plan_core_shape(shape, halo, None), halo)
    times: dict[str, dict[str, list[float]]] = {k: {"write": [], "read": []} for k in LAYOUTS}
    sizes, reads = {}, {}
    saved = es.chunks_within, es._compressor
    work = Path(tempfile.mkdtemp(prefix="spoco-store-"))
    try:
        for _ in range(args.reps):
            for name, (chunks, codec) in LAYOUTS.items():
                es.chunks_within, es._compressor = chunks, codec
                path = work / "e.zarr"
                store = es.EmbeddingStore(str(path), model.config.embedding_dim, True)
                store.create(shape, ecore)
                t0 = time.perf_counter()
                for core, _ in cores:
                    store.write(core, vectors[(slice(None),) + core], e.foreground[core])
                times[name]["write"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                got = [store.read(b.region) for b in blocks]
                times[name]["read"].append(time.perf_counter() - t0)
                sizes[name] = disk_mb(path)
                reads[name] = got
                shutil.rmtree(path)
    finally:
        es.chunks_within, es._compressor = saved
        shutil.rmtree(work, ignore_errors=True)
    a, b = reads.values()
    same = all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    print(f"Machine: {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}; cells3d "
          f"{args.mosaic}x{args.mosaic} mosaic {shape}, {len(cores)} embedding cores of {ecore}, {len(blocks)} blocks; "
          f"{args.reps} reps alternating; both layouts read the same values: {same}\n")
    print("| layout | chunks | write s (all reps) | read s (all reps) | write + read, median | disk MB |")
    print("|---|---|---|---|---|---|")
    for name, (chunks, _) in LAYOUTS.items():
        t = times[name]
        total = statistics.median(w + r for w, r in zip(t["write"], t["read"]))
        print(f"| {name} | {chunks(ecore)} | {', '.join(f'{x:.2f}' for x in t['write'])} | "
              f"{', '.join(f'{x:.2f}' for x in t['read'])} | {total:.2f} | {sizes[name]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
