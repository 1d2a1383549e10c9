"""Images larger than memory: peak memory and time against volume size, throughput, worker
scaling and stitching accuracy of block-wise segmentation, side by side in one run.

    python benchmarks/blockwise_scaling.py [--data DIR] [--sizes 2 4 8] [--workers 1]
                                           [--batch 16] [--skip PART ...] [--json FILE] [--out FILE]
                                           [--embed-first on|off|both]

The memory, stitching and throughput parts run block-wise segmentation both ways side by side
(``--embed-first both``, the default): embedding the image once into a scratch store and
clustering the blocks from it (the library's default where it applies), and each block
embedding its own region and halo (the earlier path).

Parts (``--skip`` any of them):

* ``memory``: mirrored mosaics of the cells3d nuclei volume (60×256×256), n×n volumes in Y and X
  for each n of ``--sizes`` (2 4 8: 1.6·10⁷ to 2.5·10⁸ voxels, 16×), written as OME-Zarr and
  segmented block by block with the shipped 3D model in a fresh subprocess each; peak RSS of the
  whole process tree (workers included) sampled every 0.1 s; seconds per million voxels.
* ``stitching``: the smallest mosaic segmented in memory (:func:`napari_spoco.segment`) and block
  by block with the same intensity range: object counts and AP50 against the mosaic's truth
  (target: counts within 1 %, AP50 within 0.01), and their agreement with each other. The same
  for a 2D mosaic of BBBC039 fields (2048²).
* ``throughput``: 2D megapixels per second, block by block, on a 4096² BBBC039 mosaic.
* ``workers``: ``napari-spoco predict`` of ``--batch`` BBBC039 fields with ``--workers 1`` and
  ``--workers 2``, and on a dask.distributed ``LocalCluster`` of two worker processes
  (``--scheduler``): wall time and the speed-up of two workers over one (target ≥ 1.7×).

Targets (issue "Beyond one machine"): peak RSS ≤ 2 GB whatever the size; 3D ≤ 2 s per million
voxels, 2D ≥ 1 Mpx/s; two workers ≥ 1.7× one. Prints a markdown report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, read, stems, use_data_dir  # noqa: E402

PARTS = ("memory", "stitching", "throughput", "workers")


def mirrored_mosaic(volume: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n×n copies of ``volume`` in its last two axes, every other copy mirrored so that
    neighbours meet without a seam; label ids made unique per copy."""
    rows, lab_rows = [], []
    offset = 0
    for i in range(n):
        row, lab_row = [], []
        for j in range(n):
            v, lab = volume, labels.astype(np.int64)
            if i % 2:
                v, lab = np.flip(v, -2), np.flip(lab, -2)
            if j % 2:
                v, lab = np.flip(v, -1), np.flip(lab, -1)
            row.append(v)
            lab_row.append(np.where(lab > 0, lab + offset, 0))
            offset += int(labels.max())
        rows.append(np.concatenate(row, -1))
        lab_rows.append(np.concatenate(lab_row, -1))
    return np.concatenate(rows, -2), np.concatenate(lab_rows, -2)


def write_ome_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    import zarr

    axes = "zyx"[-data.ndim:]
    group = zarr.open_group(store=str(path), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in axes],
                                   "datasets": [{"path": "0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [1.0] * data.ndim}]}]}]
    arr = group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=chunks,
                             chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[...] = data


class TreeRSS:
    """Peak resident memory of a process and all its children, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.1):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                break
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


#: test-time augmentation in every part (``--tta``; the library's default is on)
TTA = True


def run_child(args: list[str]) -> tuple[dict, float, float]:
    """Run this script's ``--child`` mode in a subprocess; its JSON result, peak tree RSS (MB)
    and wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args, "--tta", "on" if TTA else "off"],
                            stdout=subprocess.PIPE, text=True)
    rss = TreeRSS(proc.pid)
    out, _ = proc.communicate()
    peak = rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak, time.perf_counter() - t0


def child(argv: list[str]) -> None:
    """Segment one zarr store block by block; print what it took as JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--ndim", type=int, default=3)
    p.add_argument("--precision", default="auto")
    p.add_argument("--embed-first", default="on", choices=("on", "off"))
    p.add_argument("--tta", default="on", choices=("on", "off"))
    a = p.parse_args(argv)
    from napari_spoco.blockwise import segment_blockwise
    from napari_spoco.lazy_io import open_lazy
    from napari_spoco.pretrained import load_default_model

    model = load_default_model(a.ndim)
    image = open_lazy(a.source)
    t0 = time.perf_counter()
    r = segment_blockwise(model, image, a.out, workers=a.workers, precision=a.precision,
                          embed_first=None if a.embed_first == "on" else False, tta=a.tta == "on")
    print(json.dumps({"seconds": time.perf_counter() - t0, "objects": r.objects, "blocks": r.blocks,
                      "voxels": int(np.prod(r.shape)), "failed": len(r.failed), "embed_first": a.embed_first}))


def part_memory(work: Path, sizes: list[int], workers: int, volume, labels, precision: str = "auto",
                modes: tuple[str, ...] = ("on",)) -> list[dict]:
    rows = []
    for n in sizes:
        img, _ = mirrored_mosaic(volume, labels, n)
        src = work / f"cells3d_{n}x{n}.zarr"
        write_ome_zarr(src, img, (img.shape[0], 256, 256))
        del img
        for mode in modes:  # side by side on the same store
            res, peak, wall = run_child([str(src), str(work / f"labels_{n}.zarr"), "--workers", str(workers),
                                         "--precision", precision, "--embed-first", mode])
            res.update(mosaic=f"{n}x{n}", peak_rss_mb=round(peak), wall_s=round(wall, 1),
                       s_per_mvox=round(res["seconds"] / (res["voxels"] / 1e6), 2))
            rows.append(res)
            print(f"memory: {res}", file=sys.stderr, flush=True)
            shutil.rmtree(work / f"labels_{n}.zarr", ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
    return rows


def _compare(name: str, model, image, truth, work: Path, block_shape=None, precision: str = "auto",
             modes: tuple[str, ...] = ("on",)) -> list[dict]:
    from napari_spoco import evaluate, segment
    from napari_spoco.blockwise import segment_blockwise
    from napari_spoco.data import intensity_range

    vr = intensity_range(image)
    t0 = time.perf_counter()
    whole = segment(model, image, device="cpu", value_range=vr, precision=precision, tta=TTA)
    t_whole = time.perf_counter() - t0
    rows = []
    for mode in modes:
        t0 = time.perf_counter()
        r = segment_blockwise(model, image, work / f"{name}.zarr", value_range=vr, block_shape=block_shape,
                              precision=precision, embed_first=None if mode == "on" else False, tta=TTA)
        t_blocks = time.perf_counter() - t0
        blocks = np.asarray(r.labels[...])
        shutil.rmtree(work / f"{name}.zarr", ignore_errors=True)
        ap_whole, ap_blocks = evaluate(truth, whole)["AP50"], evaluate(truth, blocks)["AP50"]
        n_whole, n_blocks = int(whole.max()), int(r.objects)
        row = {"case": name, "embed_first": mode, "shape": list(image.shape), "blocks": r.blocks,
               "objects_in_memory": n_whole, "objects_blockwise": n_blocks,
               "count_diff_pct": round(100 * abs(n_blocks - n_whole) / max(1, n_whole), 2),
               "AP50_in_memory": round(ap_whole, 4), "AP50_blockwise": round(ap_blocks, 4),
               "AP50_diff": round(abs(ap_blocks - ap_whole), 4),
               "agreement_AP50": round(evaluate(whole, blocks)["AP50"], 4),
               "s_in_memory": round(t_whole, 1), "s_blockwise": round(t_blocks, 1)}
        print(f"stitching: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def bbbc_fields() -> tuple[list[np.ndarray], list[np.ndarray]]:
    names = stems("bbbc039-nuclei")
    images = [read("bbbc039-nuclei", s, "images") for s in names]
    masks = [read("bbbc039-nuclei", s, "masks") for s in names]
    return images, masks


def mosaic_2d(images, masks, size: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = images[0].shape
    rows, cols = -(-size // h), -(-size // w)
    img = np.zeros((rows * h, cols * w), np.float32)
    lab = np.zeros((rows * h, cols * w), np.int64)
    offset = 0
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        i = k % len(images)
        img[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
        lab[r * h:(r + 1) * h, c * w:(c + 1) * w] = np.where(masks[i] > 0, masks[i] + offset, 0)
        offset += int(masks[i].max())
    return img[:size, :size], lab[:size, :size]


def part_throughput_2d(work: Path, images, masks, precision: str = "auto",
                       modes: tuple[str, ...] = ("on",)) -> list[dict]:
    img, _ = mosaic_2d(images, masks, 4096)
    src = work / "bbbc_4096.zarr"
    write_ome_zarr(src, img, (1024, 1024))
    rows = []
    for mode in modes:
        res, peak, wall = run_child([str(src), str(work / "bbbc_4096_labels.zarr"), "--ndim", "2",
                                     "--precision", precision, "--embed-first", mode])
        shutil.rmtree(work / "bbbc_4096_labels.zarr", ignore_errors=True)
        res.update(peak_rss_mb=round(peak), mpx_per_s=round(res["voxels"] / 1e6 / res["seconds"], 2))
        print(f"throughput: {res}", file=sys.stderr, flush=True)
        rows.append(res)
    shutil.rmtree(src, ignore_errors=True)
    return rows


def part_workers(work: Path, images, count: int, precision: str = "auto") -> dict:
    import tifffile

    folder = work / "batch"
    folder.mkdir(exist_ok=True)
    for k in range(count):
        tifffile.imwrite(folder / f"field_{k:03d}.tif", np.rot90(images[k % len(images)], k // len(images)).copy())
    from napari_spoco.io import save_model
    from napari_spoco.pretrained import load_default_model

    model = work / "model.spoco.pt"
    save_model(load_default_model(2), model)
    times = {}

    def predict(tag: str, *extra: str) -> float:
        out = work / f"pred_{tag}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "napari_spoco.cli", "predict", "--model", str(model), "--images",
                        str(folder), "--out", str(out), "--precision", precision, *([] if TTA else ["--no-tta"]), *extra],
                       check=True, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)
        return time.perf_counter() - t0

    times["workers_1_s"] = predict("w1")
    times["workers_2_s"] = predict("w2", "--workers", "2")
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        times["local_cluster_2_s"] = predict("cluster", "--scheduler", cluster.scheduler_address)
    times = {k: round(v, 1) for k, v in times.items()}
    times.update(files=count, speedup_2_vs_1=round(times["workers_1_s"] / times["workers_2_s"], 2),
                 speedup_cluster_vs_1=round(times["workers_1_s"] / times["local_cluster_2_s"], 2))
    print(f"workers: {times}", file=sys.stderr, flush=True)
    return times


def report(result: dict) -> str:
    lines = [f"Machine: {result['machine']}; {result['date']}; command: `{result['command']}`; "
             f"network in {result.get('precision', 'float32')} (2D and 3D alike since 2026-12-03); "
             f"test-time augmentation {result.get('tta', 'off (before it existed)')}", ""]
    if result.get("memory"):
        lines += ["| volume | embed first | voxels | blocks | objects | time (s) | s per million voxels | peak RSS (MB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in result["memory"]:
            lines.append(f"| cells3d {r['mosaic']} | {r.get('embed_first', 'off')} | {r['voxels']:.2e} | {r['blocks']} | "
                         f"{r['objects']} | {r['seconds']:.0f} | {r['s_per_mvox']} | {r['peak_rss_mb']} |")
        lines.append("")
    if result.get("stitching"):
        lines += ["| case | embed first | blocks | objects in memory / block-wise (diff) | AP50 in memory / block-wise "
                  "(diff) | agreement AP50 | time in memory / block-wise (s) |", "|---|---|---|---|---|---|---|"]
        for r in result["stitching"]:
            lines.append(f"| {r['case']} {tuple(r['shape'])} | {r.get('embed_first', 'off')} | {r['blocks']} | "
                         f"{r['objects_in_memory']} / "
                         f"{r['objects_blockwise']} ({r['count_diff_pct']} %) | {r['AP50_in_memory']} / "
                         f"{r['AP50_blockwise']} ({r['AP50_diff']}) | {r['agreement_AP50']} | "
                         f"{r['s_in_memory']} / {r['s_blockwise']} |")
        lines.append("")
    if result.get("throughput"):
        rows = result["throughput"] if isinstance(result["throughput"], list) else [result["throughput"]]
        for t in rows:
            lines += [f"2D throughput, 4096² block by block, embed first {t.get('embed_first', 'off')}: "
                      f"{t['mpx_per_s']} Mpx/s ({t['seconds']:.0f} s, {t['blocks']} blocks, peak RSS "
                      f"{t['peak_rss_mb']} MB)", ""]
    if result.get("workers"):
        w = result["workers"]
        lines += [f"Batch of {w['files']} files: 1 worker {w['workers_1_s']} s, 2 workers {w['workers_2_s']} s "
                  f"(**{w['speedup_2_vs_1']}×**), LocalCluster of 2 worker processes {w['local_cluster_2_s']} s "
                  f"({w['speedup_cluster_vs_1']}×)", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_argument(p)
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--workers", type=int, default=1, help="workers for the memory part (default 1)")
    p.add_argument("--batch", type=int, default=16, help="files in the workers part")
    p.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="number format of the network in every part (napari_spoco.precision; default: auto, "
                   "the library's)")
    p.add_argument("--embed-first", default="both", choices=("on", "off", "both"),
                   help="block-wise segmentation embedding the image once into a scratch store first (on: the "
                   "library's default where it applies), each block embedding its own region (off), or both side by "
                   "side on the same inputs (default)")
    p.add_argument("--tta", default="on", choices=("on", "off"),
                   help="test-time augmentation in every part (on: the library's default; off: one network pass "
                   "per tile, as every figure before 2026-12-01 was measured)")
    a = p.parse_args()
    global TTA
    TTA = a.tta == "on"
    modes = ("on", "off") if a.embed_first == "both" else (a.embed_first,)
    use_data_dir(a.data, needs=("cells3d-nuclei", "bbbc039-nuclei"))
    work = Path(tempfile.mkdtemp(prefix="spoco-blockwise-", dir=a.work))
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"{platform.python_version()}", "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": "python benchmarks/blockwise_scaling.py " + " ".join(sys.argv[1:])}
    import torch

    from napari_spoco.precision import resolve_precision

    result["precision"] = resolve_precision(a.precision, torch.device("cpu"), 3)  # what "auto" means here (2D and 3D alike)
    result["tta"] = a.tta
    try:
        volume = read("cells3d-nuclei", "cells3d_nuclei", "images")
        labels = read("cells3d-nuclei", "cells3d_nuclei", "masks")
        images, masks = bbbc_fields()
        if "memory" not in a.skip:
            result["memory"] = part_memory(work, a.sizes, a.workers, volume, labels, a.precision, modes)
        if "stitching" not in a.skip:
            from napari_spoco.pretrained import load_default_model

            img, lab = mirrored_mosaic(volume, labels, min(a.sizes))
            result["stitching"] = _compare(f"cells3d {min(a.sizes)}x{min(a.sizes)}", load_default_model(3), img,
                                           lab, work, precision=a.precision, modes=modes)
            img2, lab2 = mosaic_2d(images, masks, 2048)
            result["stitching"] += _compare("bbbc039 mosaic", load_default_model(2), img2, lab2, work,
                                            precision=a.precision, modes=modes)
        if "throughput" not in a.skip:
            result["throughput"] = part_throughput_2d(work, images, masks, a.precision, modes)
        if "workers" not in a.skip:
            result["workers"] = part_workers(work, images, a.batch, a.precision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(result)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
