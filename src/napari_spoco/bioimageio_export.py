"""Export a napari-spoco model to the bioimage.io model format (a zip other tools can run).

The package holds the model's predicting network (``SpocoModel.predictor``: the student, or the
EMA teacher of a fine-tuned model) as TorchScript (no napari-spoco code needed to run it),
the percentile normalisation as bioimage.io preprocessing, a test input with the output it must
reproduce, and a README that says what the output is: per-pixel embeddings (plus the foreground
logit), which still have to be clustered into instances (``napari_spoco.cluster_embeddings`` or
any mean-shift with bandwidth δ_v). Needs the optional ``bioimageio.spec`` package
(``pip install "napari-spoco[bioimageio]"``); ``bioimageio.core`` validates the result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data import check_image, normalize
from .errors import SpocoError
from .model import ModelConfig, SpocoModel

SPOCO_PAPER = (
    "Wolny, Yu, Pape, Kreshuk: Sparse object-level supervision for instance segmentation with "
    "pixel embeddings. CVPR 2022."
)
SPOCO_URL = "https://arxiv.org/abs/2103.14572"


#: The largest halo declared, per dimensionality: the large network's full reach (252 px)
#: would ask for tiles (and a test image) over 500 px a side, and 3D test volumes grow as its cube.
MAX_HALO = {2: 64, 3: 32}


def export_halo(config: ModelConfig) -> int:
    """Pixels to crop at each tile border (bioimage.io "halo"): the network's receptive radius
    on its size grid (28 small, 64 medium), beyond which a tile's output equals the whole
    image's exactly; at most :data:`MAX_HALO` (the large network). Measured on the three- and
    four-level 2D starts, outputs 16-20 px from a cut differ by up to 4 and 7 embedding units
    (objects are 4 apart), so a smaller halo would merge or split objects at tile seams
    (docs/models.md)."""
    div = config.size_divisor
    return min(MAX_HALO[config.ndim], div * -(-config.receptive_radius // div))


def min_tile_side(config: ModelConfig) -> int:
    """The smallest input side the package accepts: more than two halos, on the size grid."""
    div = config.size_divisor
    return div * -(-(2 * export_halo(config) + 1) // div)


#: Characters bioimage.io allows in a model's name (5 to 128 of them; bioimage.io spec 0.5).
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


def check_description(name: str, authors: Sequence[str]) -> None:
    """Refuse a name or author that bioimage.io's format does not accept, before any work, with
    what it accepts: its own error would come only after the network is scripted, and reads
    as a fault of ours."""
    bad = sorted(set(name) - NAME_CHARACTERS)
    if bad or not 5 <= len(name) <= 128:
        what = f"has {''.join(bad)!r}" if bad else f"has {len(name)} characters"
        raise SpocoError(f"The model name {name!r} {what}; bioimage.io accepts 5 to 128 letters, digits, spaces "
                         "and _ + - ( ), e.g. 'Nuclei v1-2 (U2OS)'.")
    for author in authors:
        if not author.strip() or "/" in author or "\\" in author:
            raise SpocoError(f"The author name {author!r} is empty or has a slash; bioimage.io accepts a name "
                             "without / or \\.")


def _require_spec():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise SpocoError(
            'Exporting to bioimage.io needs the bioimageio.spec package: pip install "napari-spoco[bioimageio]".'
        ) from exc


def _scripted(model: SpocoModel) -> torch.jit.ScriptModule:
    """The predicting network (student or, after fine-tuning, the EMA teacher) as TorchScript,
    in evaluation mode, on the CPU."""
    import copy

    net = copy.deepcopy(model.predictor).to("cpu", memory_format=torch.contiguous_format).eval()
    return torch.jit.script(net)


def _default_test_image(model: SpocoModel) -> np.ndarray:
    """A real crop of the shipped sample for 2D models; smooth synthetic blobs for 3D; as
    ``(C, *spatial)`` copies for models of several channels."""
    side = min_tile_side(model.config)
    if model.config.ndim == 2:
        from .sample import load_sample

        image = load_sample().test_image  # 256 x 256
        image = np.pad(image, [(0, max(0, side - n)) for n in image.shape], mode="reflect")
        image = image[: max(128, side), : max(128, side)]
    else:
        rng = np.random.default_rng(0)
        from scipy import ndimage as ndi

        shape = (max(48, side), max(64, side), max(64, side))
        vol = ndi.gaussian_filter(rng.random(shape).astype(np.float32), 3)
        image = (vol > np.percentile(vol, 80)).astype(np.float32) * 1000 + rng.normal(100, 10, vol.shape).astype(np.float32)
    c = model.config.in_channels
    return image if c == 1 else np.stack([image] * c)


def _readme(model: SpocoModel, name: str) -> str:
    e = model.config.embedding_dim
    halo, radius = export_halo(model.config), model.config.receptive_radius
    reach = ("" if halo >= radius else f" (the network reaches {radius} pixels: outputs within that "
             "distance of a seam can differ from whole-image ones; overlap tiles by that much to avoid it)")
    fg = f"\nChannel {e} is a foreground logit (sigmoid > 0.5: object)." if model.config.foreground_head else ""
    axes = "z, y, x" if model.config.ndim == 3 else "y, x"
    c = model.config.in_channels
    channels = "one grey channel" if c == 1 else f"{c} channels, each scaled on its own"
    scale = model.pixel_scale
    resize = (
        f"\n\n**Resize first:** this model was trained on images resized by {scale:g} per axis (its\n"
        f"objects were {'large' if scale < 1 else 'small'}). Resize input images by the same factor, and the label "
        "image back."
        if scale != 1.0 else ""
    )
    return f"""# {name}

A SPOCO embedding network exported by napari-spoco ({model.config.ndim}D UNet,
{model.config.base_features} base features, depth {model.config.depth}).

## What it computes

Input `raw`: {channels}, axes batch, channel, {axes}; each side a multiple of
{model.config.size_divisor}, at least {min_tile_side(model.config)}. Preprocessing (in this package): per-image percentile scaling, 1st
percentile to 0 and 99.8th to 1.{resize}

Output `embeddings`: channels 0–{e - 1} are a {e}-D embedding vector per pixel. Pixels of one
object lie within δ_v = 0.5 of their object's mean embedding; different objects are at least
2δ_d = 4 apart.{fg}

The output is **not** a label image. To get instances, cluster the embeddings of foreground
pixels: mean-shift with bandwidth 0.5, split clusters into connected components, merge touching
pieces whose mean embeddings are closer than 2.0. napari-spoco does this with
`napari_spoco.cluster_embeddings(embeddings, foreground_probability)` or
`napari-spoco predict` on the original `.spoco.pt` model. When tiling, crop {halo} pixels
from each tile border{reach}.

## Validation

The test input in this package is reproduced by the packaged weights (bioimage.io test). For
accuracy on held-out images, see napari-spoco's docs/benchmarks.md and docs/models.md.

## Training

{model.history.get('steps', 0)} training steps recorded in the napari-spoco model file.
Method: {SPOCO_PAPER} ({SPOCO_URL}).
"""


def export_bioimageio(
    model: SpocoModel,
    path: str | Path,
    *,
    name: str = "napari-spoco embedding model",
    description: str = "SPOCO pixel-embedding network for instance segmentation, trained with napari-spoco.",
    authors: Sequence[str] = ("napari-spoco user",),
    license: str = "CC-BY-4.0",
    test_image: np.ndarray | None = None,
    channel_axis: int | None = None,
) -> Path:
    """Write ``model`` as a bioimage.io model package (a ``.zip``) at ``path``.

    ``test_image`` (2D or 3D, matching the model) becomes the package's test input; its sides
    are cropped to multiples of the network's size divisor. Returns the written path. A model
    with NaN or infinite weights is refused (it would pass bioimage.io's test and output NaN).
    """
    from .io import check_finite

    check_description(name, authors)
    check_finite(model)
    _require_spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model.v0_5 import (
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        ModelDescr,
        OutputTensorDescr,
        ParameterizedSize,
        ScaleRangeDescr,
        ScaleRangeKwargs,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxisWithHalo,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )
    from pydantic import ValidationError

    path = Path(path)
    if path.suffix != ".zip":
        raise SpocoError(f"A bioimage.io package is a .zip file; got {path.name}.")
    cfg = model.config
    div = cfg.size_divisor
    c = cfg.in_channels
    if test_image is None:
        test_image, channel_axis = _default_test_image(model), (0 if c > 1 else None)
    image = check_image(test_image, "test image", c, channel_axis)
    image = image if c > 1 else image[None]  # (C, *spatial)
    if image.ndim - 1 != cfg.ndim:
        raise SpocoError(f"The test image is {image.ndim - 1}D but the model is {cfg.ndim}D.")
    crop = (slice(None),) + tuple(slice(0, (n // div) * div) for n in image.shape[1:])
    image = np.ascontiguousarray(image[crop], dtype=np.float32)
    halo, min_side = export_halo(cfg), min_tile_side(cfg)  # tiles must be larger than their two halos
    if min(image.shape[1:]) < min_side:
        raise SpocoError(f"The test image must be at least {min_side} pixels on each side.")

    scripted = _scripted(model)
    x = torch.from_numpy(normalize(image, channels=c) if c > 1 else normalize(image))[None]
    with torch.no_grad():
        y = scripted(x).numpy()

    spatial = ["z", "y", "x"][-cfg.ndim:]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "test_input.npy", image[None])
        np.save(tmp / "test_output.npy", y)
        scripted.save(str(tmp / "weights.torchscript.pt"))
        (tmp / "README.md").write_text(_readme(model, name), encoding="utf-8")

        raw = TensorId("raw")
        inputs = [
            InputTensorDescr(
                id=raw,
                description="grey-value image" if c == 1 else f"image of {c} channels, each normalised on its own",
                axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier("grey")] if c == 1
                                               else [Identifier(f"channel{i}") for i in range(c)])]
                + [SpaceInputAxis(id=AxisId(a), size=ParameterizedSize(min=min_side, step=div)) for a in spatial],
                test_tensor=FileDescr(source=tmp / "test_input.npy"),
                data=IntervalOrRatioDataDescr(type="float32"),
                preprocessing=[
                    ScaleRangeDescr(
                        kwargs=ScaleRangeKwargs(
                            axes=tuple(AxisId(a) for a in spatial), min_percentile=1.0, max_percentile=99.8
                        )
                    )
                ],
            )
        ]
        channels = [Identifier(f"embedding{i}") for i in range(cfg.embedding_dim)]
        if cfg.foreground_head:
            channels.append(Identifier("foreground_logit"))
        outputs = [
            OutputTensorDescr(
                id=TensorId("embeddings"),
                description="per-pixel embedding vectors (and the foreground logit); cluster them into instances",
                axes=[BatchAxis(), ChannelAxis(channel_names=channels)]
                + [
                    SpaceOutputAxisWithHalo(id=AxisId(a), size=SizeReference(tensor_id=raw, axis_id=AxisId(a)), halo=halo)
                    for a in spatial
                ],
                test_tensor=FileDescr(source=tmp / "test_output.npy"),
                data=IntervalOrRatioDataDescr(type="float32"),
            )
        ]
        try:
            descr = ModelDescr(
                name=name,
                description=description,
                authors=[Author(name=a) for a in authors],
                cite=[CiteEntry(text=SPOCO_PAPER, url=SPOCO_URL)],
                license=license,
                documentation=FileDescr(source=tmp / "README.md"),
                tags=["instance-segmentation", "pixel-embeddings", "spoco", "napari-spoco", f"{cfg.ndim}d"],
                inputs=inputs,
                outputs=outputs,
                weights=WeightsDescr(
                    torchscript=TorchscriptWeightsDescr(
                        source=tmp / "weights.torchscript.pt",
                        pytorch_version=Version(torch.__version__.split("+")[0]),
                    )
                ),
                config={"napari_spoco": {"model_config": cfg.to_dict(), "delta_var": 0.5, "delta_dist": 2.0,
                                         "steps": int(model.history.get("steps", 0))}},
            )
        except ValidationError as exc:  # what the user gave (a licence that is no SPDX identifier, ...)
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "the description"
            hint = (f" ({license!r}: give an SPDX licence identifier such as CC-BY-4.0 or MIT)"
                    if where.startswith("license") else "")
            raise SpocoError(f"bioimage.io refuses the package's {where}: {first.get('msg', exc)}{hint}.") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        save_bioimageio_package(descr, output_path=path)
    return path


def validate_bioimageio(path: str | Path) -> tuple[bool, str]:
    """Run bioimage.io's own model test (format + reproducing the test output) on a package.

    Returns (passed, a text summary). Needs ``bioimageio.core``.
    """
    try:
        from bioimageio.core import test_model
    except ImportError as exc:  # pragma: no cover
        raise SpocoError('Validating needs bioimageio.core: pip install "napari-spoco[bioimageio]".') from exc
    summary = test_model(str(path))
    return summary.status == "passed", summary.format()
