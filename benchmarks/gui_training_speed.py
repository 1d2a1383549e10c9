"""Training speed as a user feels it: the napari panel's Train against the library's, side by side.

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \
        .venv/bin/python benchmarks/gui_training_speed.py --init default FILE --seconds 60

For each starting model (``--init``: ``default`` = the shipped start, or a model file), on the
shipped sample (its painted nuclei, as `napari-spoco demo` trains): ``napari_spoco.train`` for
``--seconds``, then the SPOCO panel's Train in a real napari window for as long with the live
preview off and with it every ``--preview`` seconds, one after the other in this process. It
prints steps per second and the longest pause of napari's event loop while training ran (what
makes the window feel stuck). Under Xvfb the window is drawn in software on the same cores, so
the GUI rows are a lower bound for a machine with a graphics card.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def library_run(init: str, seconds: float, threads: int) -> dict:
    """Steps of ``napari_spoco.train`` in ``seconds`` from ``init`` on the sample."""
    import torch

    from napari_spoco import TrainConfig, load_model, train
    from napari_spoco.pretrained import load_default_model
    from napari_spoco.sample import load_sample

    torch.set_num_threads(threads)
    s = load_sample()
    model = load_default_model(2) if init == "default" else load_model(init)
    last = []
    t0 = time.perf_counter()
    train([s.train_image], [s.train_sparse], TrainConfig(steps=0, minutes=seconds / 60.0), model=model,
          callback=last.append)
    elapsed = time.perf_counter() - t0
    return {"steps": last[-1].step, "steps_per_s": last[-1].steps_per_second, "wall_s": elapsed, "max_gap_s": None}


def gui_run(init: str, seconds: float, preview: float) -> dict:
    """Steps of the panel's Train in ``seconds``, and the longest event-loop pause meanwhile."""
    import napari
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(title="napari-spoco", show=True)
    viewer.open_sample("napari-spoco", "sparse_nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-spoco", "SPOCO")
    if init != "default" and not widget.model_panel.load_model_from(init):
        raise SystemExit(f"could not load {init}")
    train = widget.train_panel
    train.steps_spin.setValue(1_000_000)
    train.minutes_spin.setValue(seconds / 60.0)
    train.preview_spin.setValue(int(preview))
    for _ in range(50):
        app.processEvents()
        time.sleep(0.01)
    train.train_btn.click()
    t0 = last = time.perf_counter()
    gap = 0.0
    while not widget.state.job.idle or time.perf_counter() - t0 < 1.0:
        app.processEvents()
        now = time.perf_counter()
        gap = max(gap, now - last)
        last = now
        time.sleep(0.005)
        if now - t0 > seconds + 300:
            raise SystemExit("training did not end")
    elapsed = time.perf_counter() - t0
    p = train.last_progress
    previews = train.last_preview.step if train.last_preview is not None else None
    viewer.close()
    app.processEvents()
    return {"steps": p.step, "steps_per_s": p.steps_per_second, "wall_s": elapsed, "max_gap_s": gap,
            "last_preview_step": previews}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", nargs="+", default=["default"], metavar="default|FILE")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--preview", type=float, default=10.0, help="seconds between previews in the GUI row with previews")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the library row")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    rows = []
    for init in args.init:
        for kind, preview in (("library", None), ("panel, no preview", 0.0), (f"panel, preview every {args.preview:g} s", args.preview)):
            r = library_run(init, args.seconds, args.threads) if preview is None else gui_run(init, args.seconds, preview)
            r.update(init=init if init == "default" else Path(init).name, run=kind)
            rows.append(r)
            print(f"{r['init']} / {kind}: {r['steps']} steps, {r['steps_per_s']:.2f} steps/s", file=sys.stderr, flush=True)
    print(f"Machine: {platform.processor() or platform.machine()}, {args.seconds:g} s per run")
    print("| start | run | steps | steps/s | longest event-loop pause (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        gap = "—" if r["max_gap_s"] is None else f"{r['max_gap_s']:.2f}"
        print(f"| {r['init']} | {r['run']} | {r['steps']} | {r['steps_per_s']:.2f} | {gap} |")
    if args.json:
        args.json.write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
