"""Do this user's objects stand on background or fill the image? Measured on the painted objects.

Post-processing has two answers to a merged piece, and each is wrong for the other kind of
image: where objects stand on background (nuclei, cells on a dish) a neck in a piece is a merge
and the shape split cuts it; where objects tile the image (EM profiles, epidermis, packed
tissue) two cells meet along a straight membrane and the boundary merge instead joins pieces
that the foreground head does not separate. A fixed rule on the predicted foreground fraction
(above half the tile: tiled) chose wrongly on packed small nuclei, where the head calls 63 % of
the volume foreground and the boundary merge joined hundreds of nuclei into a handful of pieces
(AP50 0.01, against 0.34 with the shape split). So at the end of training, the model segments
crops around the painted objects both ways and keeps the layout that recovers more painted
objects (IoU >= 0.5) beyond chance; otherwise the foreground-fraction rule stays (docs/method.md, "Which
post-processing: measured on the painted objects"). The edge calibration (edges.py) is scored
in the same segmentations, so each window is embedded once for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The two post-processings a measured layout chooses between (ClusterConfig.layout).
LAYOUTS = ("separate", "tiled")

#: Training images looked at (a seeded sample where there are more).
MAX_IMAGES = 6
#: Pixels (voxels) segmented per layout at most, over all windows: seconds on a CPU.
MAX_PIXELS = {2: 1_500_000, 3: 1_000_000}
#: A window that holds fewer painted objects whole than its share of this (this over the number
#: of images measured) grows, up to ``GROWN`` times its share of ``MAX_PIXELS``, until it holds
#: its share or every painted object of its image. Large nuclei at a coarse z-step (25 px across, 7–11 planes deep) left 3 of
#: 34 painted nuclei in 1 M voxels, no decision, and the foreground rule then joined the packed
#: nuclei: AP50 0.04 where the shape split gave 0.80 (docs/benchmarks.md, "Other samplings and
#: sizes of the packed 3D nuclei"). Only where the images hold at least ``DECIDABLE`` painted
#: objects whole: the sign test cannot decide on fewer (six of six is p = 0.03).
MIN_OBJECTS = 12
GROWN = 4
DECIDABLE = 6
#: A layout is chosen only where it recovers more painted objects than the other beyond
#: chance (sign test at this level); otherwise the foreground-fraction rule stays. Measured:
#: EM seed 2 recovered 58 against 54 of 66 painted profiles with the shape split, yet lost on
#: the held-out images (docs/method.md).
SIGNIFICANCE = 0.05


def _window(objects: np.ndarray, pixels: int, divisor: int, margin: int) -> tuple[slice, ...]:
    """A box of at most ``pixels`` around the painted objects of ``objects`` and ``margin`` beyond
    them (centred on their median position where they spread wider), sides multiples of
    ``divisor`` where possible."""
    where = np.argwhere(objects > 0)
    lo, hi = where.min(0) - margin, where.max(0) + 1 + margin
    centre = np.median(where, 0)
    shape = np.asarray(objects.shape)
    side = np.minimum(shape, np.maximum(hi - lo, 1)).astype(float)
    while np.prod(side) > pixels:  # shrink the longest side until it fits
        side[np.argmax(side)] *= 0.9
    out = []
    for c, s, n in zip(centre, side, shape):
        s = int(min(n, max(divisor, s // divisor * divisor if s >= divisor else s)))
        start = int(min(max(0, round(c - s / 2)), n - s))
        out.append(slice(start, start + s))
    return tuple(out)


def whole_objects(objects: np.ndarray, region: tuple[slice, ...], shape: tuple[int, ...]) -> list[int]:
    """Ids of the painted objects in ``objects`` (the ``region`` of an image of ``shape``) that lie
    whole in it: clear of the region's edges, except where those are the image's own."""
    from scipy import ndimage as ndi

    return [q for q, b in enumerate(ndi.find_objects(objects), start=1)
            if b is not None and all((s.start > 0 or r.start == 0) and (s.stop < n or r.stop == m)
                                     for s, n, r, m in zip(b, objects.shape, region, shape))]


def recovered(labels: np.ndarray, painted: np.ndarray, ids: list[int]) -> np.ndarray:
    """Best IoU of each painted object ``ids`` (in ``painted``) with one piece of ``labels``."""
    out = np.zeros(len(ids))
    sizes = np.bincount(labels.ravel())
    for k, i in enumerate(ids):
        obj = painted == i
        hit, counts = np.unique(labels[obj], return_counts=True)
        keep = hit > 0
        if keep.any():
            inter = counts[keep].astype(float)
            out[k] = float(np.max(inter / (obj.sum() + sizes[hit[keep]] - inter)))
    return out


@dataclass
class Window:
    """A crop around painted objects of one training image, segmented as ``segment`` would, both
    ways and without any growth: what the layout and the edge are measured on."""

    image: Any  # the TrainingImage (data.py) it was cut from, at the network's scale
    region: tuple[slice, ...]  # where, in that image
    ids: list[int]  # the painted objects inside it, clear of its edges (except the image's own)
    labels: dict[str, np.ndarray]  # "separate" / "tiled": the instances each layout returns
    foreground_fraction: float  # of the window: what the fraction rule of segment() reads
    foreground: np.ndarray | None = None  # the head's probability there (edges.growth_helps)

    def segmented(self, layout: str | None) -> np.ndarray:
        """The instances under ``layout``; None or "auto": the one the foreground-fraction rule
        picks for this window (boundaries.applies), as segment() does without a measured layout."""
        if layout not in LAYOUTS:
            from .boundaries import applies

            layout = "tiled" if applies(self.foreground_fraction) else "separate"
        return self.labels[layout]


def window_image(d, region: tuple[slice, ...]):
    """``region`` of a training image (``TrainingImage``, already normalised to 0-1 per channel)
    as the network's input."""
    from .inference import PreparedImage

    channels = d.image.shape[0]
    image = d.image[(slice(None),) + region] if channels > 1 else d.image[0][region]
    value_range = tuple((0.0, 1.0) for _ in range(channels)) if channels > 1 else (0.0, 1.0)
    return PreparedImage(image, value_range, channels)


def unexpanded_config(model, shape: tuple[int, ...], layout: str = "auto"):
    """The clustering settings ``segment`` uses for this model in a crop of ``shape``, with
    ``layout`` and without any growth (neither the calibrated one nor the growth into the
    uncertain edge): what the end-of-training measurements score."""
    from dataclasses import replace

    from .clustering import ClusterConfig
    from .segmentation import auto_max_size, model_cluster_config

    config = model_cluster_config(model, ClusterConfig(layout=layout, calibrated_edge=False, edge_growth=False))
    return replace(config, expand=0, max_size=auto_max_size(model, shape))


def segment_windows(model, data: list, seed: int = 0) -> list[Window]:
    """Each of up to ``MAX_IMAGES`` training images (a seeded sample of those with painted
    objects) cut to a window around its painted objects, an object's width beyond them
    (``MAX_PIXELS`` in all, however large the images or the scale; up to ``GROWN`` times that
    where fewer than ``MIN_OBJECTS`` painted objects would lie whole in them), embedded once and
    clustered once per layout with the model's own settings and no growth. Windows with no
    painted object clear of their edges are left out. Shared by :func:`measure_layout` and
    :func:`napari_spoco.edges.edge_expand`, so that training's end costs one network pass per window."""
    from .clustering import ClusterConfig, cluster_embeddings
    from .inference import embed

    painted = [k for k, d in enumerate(data) if any(b is not None for b in d.boxes)]
    if not painted:
        return []
    rng = np.random.default_rng(seed)
    images = sorted(rng.choice(painted, min(len(painted), MAX_IMAGES), replace=False).tolist())
    share_pixels = MAX_PIXELS.get(model.config.ndim, MAX_PIXELS[3]) // len(images)
    available = [sum(b is not None for b in data[k].boxes) for k in images]  # painted objects per image
    wanted = -(-MIN_OBJECTS // len(images)) if sum(available) >= DECIDABLE else 0  # per image
    windows = []
    for k, whole in zip(images, available):
        d = data[k]
        width = int(np.median([max(s.stop - s.start for s in b) for b in d.boxes if b is not None]))
        largest = _window(d.objects, int(np.prod(d.objects.shape)), model.config.size_divisor, width)
        share = share_pixels
        while True:
            region = _window(d.objects, share, model.config.size_divisor, width)
            objects = d.objects[region]
            ids = whole_objects(objects, region, d.objects.shape)
            # enough, or as large as allowed, or the box spans all it can (growing adds nothing)
            if len(ids) >= min(wanted, whole) or share >= GROWN * share_pixels or region == largest:
                break
            share = min(GROWN * share_pixels, max(share + 1, int(share * 1.5)))
        if not ids:
            continue
        emb = embed(model, window_image(d, region), device="cpu")  # once for both layouts
        labels = {layout: np.asarray(cluster_embeddings(emb.embeddings, emb.foreground,
                                                        unexpanded_config(model, objects.shape, layout),
                                                        emb.teacher_embeddings))
                  for layout in LAYOUTS}
        fraction = float(np.mean(emb.foreground >= ClusterConfig().foreground_threshold)) if emb.foreground is not None else 0.0
        windows.append(Window(d, region, ids, labels, fraction, emb.foreground))
    return windows


def measure_layout(model, data: list, seed: int = 0, windows: list[Window] | None = None) -> tuple[str | None, dict[str, float]]:
    """("separate" | "tiled" | None, share of scored painted objects recovered at IoU >= 0.5 per
    layout) for a trained ``model`` and its ``TrainingImage`` list (at the network's scale).

    Every painted object in the windows of :func:`segment_windows` (computed here unless given)
    is scored both ways. None when neither layout recovers more beyond chance (then segment()
    keeps its foreground-fraction rule)."""
    windows = segment_windows(model, data, seed) if windows is None else windows
    scores: dict[str, list[bool]] = {layout: [] for layout in LAYOUTS}
    for w in windows:
        objects = w.image.objects[w.region]
        for layout in LAYOUTS:
            scores[layout].extend((recovered(w.labels[layout], objects, w.ids) >= 0.5).tolist())
    if not scores["separate"]:
        return None, {}
    share = {layout: round(float(np.mean(v)), 4) for layout, v in scores.items()}
    share["objects"] = len(scores["separate"])
    return decide(np.asarray(scores["separate"]), np.asarray(scores["tiled"])), share


def decide(separate: np.ndarray, tiled: np.ndarray) -> str | None:
    """The layout that recovers more of the same painted objects (booleans per object), by an
    exact sign test on the objects only one of them recovers (two-sided, ``SIGNIFICANCE``); None
    when the difference could be chance."""
    from scipy.stats import binomtest

    only_separate = int(np.sum(separate & ~tiled))
    only_tiled = int(np.sum(tiled & ~separate))
    n = only_separate + only_tiled
    if n == 0 or binomtest(only_separate, n, 0.5).pvalue >= SIGNIFICANCE:
        return None
    return "separate" if only_separate > only_tiled else "tiled"


def layout_note(history: dict) -> str:
    """One sentence for the user on what training measured (\"\" where nothing was measured),
    shared by the CLI and the GUI."""
    scores = history.get("layout_scores") or {}
    if "objects" not in scores:
        return ""
    n = scores["objects"]
    # n counts the painted objects lying whole in the measured windows, not every painted one
    got = (f"of the {n} painted objects measured whole, splitting merged pieces recovers "
           f"{scores['separate']:.0%}, joining unseparated ones {scores['tiled']:.0%}")
    layout = history.get("layout")
    if layout == "separate":
        return f"Objects stand apart ({got}): segmenting splits merged pieces."
    if layout == "tiled":
        return f"Objects fill the image ({got}): segmenting joins pieces with no boundary between them."
    return f"Objects: no clear layout ({got}); segmenting decides by how much of the image is foreground."
