"""Which doubt signals point at wrong instances? Each signal of ``suggestions.instance_signals``,
and their combinations, scored as a detector of the predicted instances that are wrong.

Issue 14 asks for the score's signals to be chosen and combined by measurement. The simulated
user (``active_labelling.py``) measures the whole loop but costs an hour and a half per run; this
measures the part the score is for, on the saved models of ``sparse_accuracy.py --save-dir DIR``
(``{dataset}_seed{N}.spoco.pt``): every held-out image is segmented as the user would (test-time
augmentation on), every predicted instance gets its signals, and it is *wrong* when no true object
overlaps it with IoU > 0.5 (a merge, a fragment, a false object or a badly drawn one). Per signal
or combination (the mean of its signals):

* **AUROC**: the chance that a wrong instance scores above a right one (0.5: no better than
  chance);
* **wrong in top k**: the share of wrong instances among the k top-scored of each image (what a
  user looking at k suggestions meets), beside the share of wrong instances overall.

Besides the library's signals, ``views``: how far the four mirrored views of test-time
augmentation disagree over the instance (the mean over its pixels of the root-mean-square
distance of the views' embeddings from their mean, in units of δ_v), computed here by embedding
each view separately.

Usage:  python benchmarks/suggestion_signals.py --models DIR [--datasets ...] [--seeds 0 1 2]
            [--fraction 0.1] [--top 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tta_views import each_view, saved_models  # noqa: E402

from napari_spoco import inference, segment, segmentation  # noqa: E402
from napari_spoco.inference import Embedding  # noqa: E402
from napari_spoco.suggestions import instance_signals  # noqa: E402

LIBRARY = ("spread", "crowding", "foreground", "size")


def _embed_with_view_spread(*args, **kwargs) -> Embedding:
    """The four views' mean embedding and foreground (what ``embed(tta=True)`` gives), with the
    views' per-pixel disagreement handed over as a stand-in teacher: ``teacher - embeddings`` is
    the disagreement along the first channel, so the library's ``disagreement`` signal reads it."""
    views = each_view(*args, **kwargs)
    stack = np.stack([v.embeddings for v in views])
    mean = stack.mean(axis=0)
    rms = np.sqrt(((stack - mean) ** 2).sum(axis=1).mean(axis=0))
    teacher = mean.copy()
    teacher[0] += rms
    fg = None if views[0].foreground is None else np.mean([v.foreground for v in views], axis=0)
    return Embedding(mean, fg, teacher)


def wrong_instances(gt: np.ndarray, pred: np.ndarray) -> dict[int, bool]:
    """Per predicted id: True when no true object overlaps it with IoU > 0.5."""
    g, p = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    pairs, inter = np.unique(g * (int(p.max()) + 1) + p, return_counts=True)
    gi, pi = pairs // (int(p.max()) + 1), pairs % (int(p.max()) + 1)
    gsize = np.bincount(g, minlength=int(g.max()) + 1)
    psize = np.bincount(p, minlength=int(p.max()) + 1)
    ok = set()
    for a, b, n in zip(gi, pi, inter):
        if a > 0 and b > 0 and n / (gsize[a] + psize[b] - n) > 0.5:
            ok.add(int(b))
    return {int(i): int(i) not in ok for i in np.unique(p) if i > 0}


def auroc(scores: np.ndarray, wrong: np.ndarray) -> float:
    """Mann-Whitney: the chance a wrong instance outscores a right one (ties count half)."""
    pos, neg = scores[wrong], scores[~wrong]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True)
    p.add_argument("--datasets", nargs="*", default=["bbbc039-nuclei", "usiigaci-phc", "isbi2012-em"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--fraction", type=float, default=0.1, help="painted share the models were trained with (sizes)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    signals = LIBRARY + ("views",)
    combos = [c for r in range(1, len(signals) + 1) for c in itertools.combinations(signals, r)]
    rows = []  # one per predicted instance
    for split, seed, data, model in saved_models(a.models, a.datasets, a.seeds):
        sizes = [int(n) for m in data.painted(a.fraction, seed) for n in np.bincount(m.ravel())[1:] if n]
        segmentation.embed = _embed_with_view_spread
        try:
            for k, (_stem, img, gt) in enumerate(data.tests):
                pred, emb = segment(model, img, device="cpu", return_embedding=True)
                sig = instance_signals(pred, emb, sizes)
                wrong = wrong_instances(gt, pred)
                for label, s in sig.items():
                    s["views"] = s.pop("disagreement")
                    rows.append({"dataset": split.name, "seed": seed, "image": k, "label": label,
                                 "wrong": wrong[label], **s})
        finally:
            segmentation.embed = inference.embed
        n = sum(1 for r in rows if r["dataset"] == split.name and r["seed"] == seed)
        print(f"{split.name} seed {seed}: {n} instances", flush=True)
    print("\n| data set | wrong share | " + " | ".join(signals) + " | library mean (4) | best combination |")
    print("|---|---|" + "---|" * (len(signals) + 2))
    summary = {}
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        wrong = np.array([r["wrong"] for r in rs])
        res = {}
        for c in combos:
            score = np.mean([[r[s] for s in c] for r in rs], axis=1)
            res["+".join(c)] = auroc(score, wrong)
        summary[name] = {"wrong_share": float(wrong.mean()), "auroc": res, "top": {}}
        best = max(res, key=res.get)
        cells = [f"{res[s]:.3f}" for s in signals]
        print(f"| {name} | {wrong.mean():.2f} | " + " | ".join(cells) +
              f" | {res['+'.join(LIBRARY)]:.3f} | {best} {res[best]:.3f} |")
    print(f"\nWrong among each image's top {a.top} (mean over images and seeds):\n")
    shown = [LIBRARY, ("views",), LIBRARY + ("views",), ("spread", "views"), ("foreground", "views"),
             ("spread", "crowding", "foreground", "views")]
    print("| data set | " + " | ".join("+".join(c) for c in shown) + " |\n|---|" + "---|" * len(shown))
    for name in summary:
        cells = []
        for c in shown:
            shares = []
            for _key, group in itertools.groupby(
                    sorted((r for r in rows if r["dataset"] == name), key=lambda r: (r["seed"], r["image"])),
                    key=lambda r: (r["seed"], r["image"])):
                g = list(group)
                g.sort(key=lambda r: -np.mean([r[s] for s in c]))
                shares.append(np.mean([r["wrong"] for r in g[: a.top]]))
            summary[name]["top"]["+".join(c)] = float(np.mean(shares))
            cells.append(f"{np.mean(shares):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if a.json:
        columns = list(rows[0]) if rows else []
        table = [[round(v, 3) if isinstance(v, float) else v for v in (r.get(c) for c in columns)] for r in rows]
        Path(a.json).write_text(json.dumps({"summary": summary, "instances": {"columns": columns, "rows": table}},
                                           separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
