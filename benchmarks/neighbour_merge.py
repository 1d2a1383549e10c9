"""The neighbour merge with one heap entry per touching pair against one per fragment, side by side.

    python benchmarks/neighbour_merge.py [--data DIR] [--model-3d FILE] [--shape 80 320 320] [--json FILE]

``clustering.merge_similar_neighbours`` joins touching pieces with close mean embeddings, closest
pair first. Until 2026-12-04 its heap held every touching pair and a grown piece re-pushed all its
neighbours; the library now keeps one entry per piece (its nearest neighbour) and recomputes an
entry whose neighbour has changed when it is popped. This script segments a packed 3D volume
(benchmarks/synthetic_nuclei.py, seed 303, ``--shape`` at z-step 2, with its truth) and a few
2D images of the shared sets, records every input the merge receives, and times both versions
on the same inputs (the old one is kept below as the reference); it checks that they give the
same partition. Then it times the whole Segment of the volume with each merge, and scores both.

``--model-3d``: a model trained on the packed nuclei (e.g. ``sparse_accuracy.py --datasets
synthetic-nuclei-3d --seeds 0 --save-dir DIR``); by default the shipped 3D start, which has never
seen them. 2D images use the shipped 2D start.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, use_data_dir  # noqa: E402

import napari_spoco.clustering as clustering  # noqa: E402


def pair_heap_merge(labels: np.ndarray, embeddings: np.ndarray, max_distance: float) -> np.ndarray:
    """The library's neighbour merge as it was before 2026-12-04: every touching pair in the heap,
    every neighbour of a grown piece pushed again after each merge."""
    n = int(labels.max(initial=0))
    if n < 2:
        return labels
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    ids = flat[inside]
    size = np.bincount(ids, minlength=n + 1).astype(np.float64)
    emb = embeddings.reshape(embeddings.shape[0], -1)
    sums = np.stack([np.bincount(ids, weights=emb[c, inside], minlength=n + 1) for c in range(len(emb))], 1)
    pairs, _ = clustering.adjacency(labels)
    if len(pairs) == 0:
        return labels
    parent = list(range(n + 1))
    sizes = size.tolist()
    neighbours: list = [set() for _ in range(n + 1)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    means = sums / np.maximum(size, 1.0)[:, None]
    d0 = np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1)
    close = d0 < max_distance
    version = [0] * (n + 1)
    heap = [(d, a, b, 0, 0) for d, (a, b) in zip(d0[close].tolist(), pairs[close].tolist())]
    heapq.heapify(heap)
    while heap:
        d, a, b, va, vb = heapq.heappop(heap)
        if d >= max_distance:
            break
        if version[a] != va or version[b] != vb or parent[a] != a or parent[b] != b:
            continue
        parent[b] = a
        version[a] = va = va + 1
        sums[a] += sums[b]
        sizes[a] += sizes[b]
        mean = sums[a] / sizes[a]
        means[a] = mean
        clustering.join_neighbours(neighbours, a, b)
        if not neighbours[a]:
            continue
        others = list(neighbours[a])
        diff = means[others] - mean
        near = np.sqrt((diff * diff).sum(1))
        for c, dc in zip(others, near.tolist()):
            if dc < max_distance:
                heapq.heappush(heap, (dc, a, c, va, version[c]))
    for i in range(n + 1):
        j = i
        while parent[j] != j:
            j = parent[j]
        parent[i] = j
    return np.asarray(parent)[labels]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = len(set(zip(a.ravel().tolist(), b.ravel().tolist())))
    return pairs == len(np.unique(a)) == len(np.unique(b))


def timed(fn, *args) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def capture(model, image, voxel_size=None) -> tuple[list, np.ndarray, float]:
    """Segment ``image`` with the library's merge, recording each input it receives."""
    from napari_spoco.segmentation import segment

    inputs = []
    library = clustering.merge_similar_neighbours

    def recording(labels, embeddings, max_distance):
        inputs.append((labels.copy(), embeddings.copy(), max_distance))
        return library(labels, embeddings, max_distance)

    clustering.merge_similar_neighbours = recording
    try:
        labels, seconds = timed(lambda: segment(model, image, voxel_size=voxel_size))
    finally:
        clustering.merge_similar_neighbours = library
    return inputs, labels, seconds


def segment_with(merge, model, image, voxel_size=None) -> tuple[np.ndarray, float]:
    from napari_spoco.segmentation import segment

    library = clustering.merge_similar_neighbours
    clustering.merge_similar_neighbours = merge
    try:
        return timed(lambda: segment(model, image, voxel_size=voxel_size))
    finally:
        clustering.merge_similar_neighbours = library


def compare_inputs(name: str, inputs: list) -> list[dict]:
    rows = []
    for k, (labels, emb, max_distance) in enumerate(inputs):
        pairs, _ = clustering.adjacency(labels)
        degree = np.bincount(pairs.ravel(), minlength=int(labels.max()) + 1) if len(pairs) else np.zeros(1, int)
        old, t_old = timed(pair_heap_merge, labels, emb, max_distance)
        new, t_new = timed(clustering.merge_similar_neighbours, labels, emb, max_distance)
        row = dict(case=name, call=k, shape=list(labels.shape), pieces=int(labels.max()), pairs=int(len(pairs)),
                   max_degree=int(degree.max()), merged_to=int(len(np.unique(new)) - 1), pair_heap_s=t_old,
                   nearest_heap_s=t_new, same_partition=same_partition(old, new))
        rows.append(row)
        print(f"| {name} #{k} | {'×'.join(map(str, labels.shape))} | {row['pieces']} | {row['pairs']} | "
              f"{row['max_degree']} | {row['merged_to']} | {t_old:.2f} | {t_new:.2f} | {t_old / max(t_new, 1e-9):.1f}× | "
              f"{'yes' if row['same_partition'] else '**no**'} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--model-3d", type=Path, help="3D model file (default: the shipped 3D start)")
    parser.add_argument("--shape", type=int, nargs=3, default=[80, 320, 320], metavar=("Z", "Y", "X"))
    parser.add_argument("--images-2d", type=int, default=2, help="images per shared 2D set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch
    from sparse_accuracy import cpu_name
    from synthetic_nuclei import VOXEL_SIZE, packed_nuclei_3d

    from napari_spoco import evaluate
    from napari_spoco.io import load_model
    from napari_spoco.pretrained import load_default_model

    torch.set_num_threads(args.threads)
    machine = f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    print(f"Machine: {machine}")
    rows, totals = [], []
    print("\n| case | merge input | pieces | touching pairs | most neighbours of one piece | pieces after | "
          "pair heap s | nearest heap s | ratio | same partition |\n|---|---|---|---|---|---|---|---|---|---|")
    model2 = load_default_model(2)
    if args.images_2d > 0:
        from sparse_accuracy import read, splits

        use_data_dir(args.data)
        for split in splits():
            if split.ndim != 2 or split.optional:
                continue
            for stem in split.test[: args.images_2d]:
                image = read(split.name, stem, "images")
                inputs, _, _ = capture(model2, image)
                rows += compare_inputs(f"{split.name} {stem[:12]}", inputs)
    model3 = load_model(args.model_3d) if args.model_3d else load_default_model(3)
    t0 = time.perf_counter()
    volume, truth = packed_nuclei_3d(303, shape=tuple(args.shape),
                                     attempts=int(20000 * np.prod(args.shape) / (40 * 160 * 160)))
    print(f"\n(packed volume {tuple(args.shape)}: {int(truth.max())} nuclei, drawn in {time.perf_counter() - t0:.0f} s)")
    inputs, labels_new, t_new = capture(model3, volume, VOXEL_SIZE)
    rows += compare_inputs("packed 3D", inputs)
    labels_old, t_old = segment_with(pair_heap_merge, model3, volume, VOXEL_SIZE)
    s_old, s_new = evaluate(truth, labels_old), evaluate(truth, labels_new)
    mvox = volume.size / 1e6
    print(f"\nWhole Segment of the packed volume ({mvox:.1f} M voxels as stored): pair heap {t_old:.1f} s "
          f"({t_old / mvox:.1f} s per million voxels), nearest heap {t_new:.1f} s ({t_new / mvox:.1f}); "
          f"ratio {t_old / t_new:.2f}×; AP50 {s_old['AP50']:.3f} / {s_new['AP50']:.3f}, "
          f"mAP {s_old['mAP']:.3f} / {s_new['mAP']:.3f}, objects {int(labels_old.max())} / {int(labels_new.max())}, "
          f"same partition: {same_partition(labels_old, labels_new)}")
    totals.append(dict(case="packed 3D segment", voxels=int(volume.size), pair_heap_s=t_old, nearest_heap_s=t_new,
                       scores_pair_heap=s_old, scores_nearest_heap=s_new,
                       same_partition=same_partition(labels_old, labels_new)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(machine=machine, merges=rows, segments=totals), indent=1))


if __name__ == "__main__":
    main()
