"""Starting models shipped inside the package (no download): what "start from the default"
means in the GUI and ``--init default`` on the command line. See docs/models.md."""

from __future__ import annotations

from importlib.resources import as_file, files

from .errors import SpocoError
from .io import load_model
from .model import SpocoModel

DEFAULT_MODELS = {2: "default_2d.spoco.pt", 3: "default_3d.spoco.pt"}
#: The network preset (``model.NETWORKS``) of each shipped model, known without loading it:
#: the 2D start has one level more than a new CPU network (docs/models.md).
DEFAULT_NETWORKS = {2: "medium", 3: "small"}


def fine_tunes_default(ndim: int, network: str = "auto") -> bool:
    """Whether a first training with the network choice ``network`` (``auto`` or a preset) on
    ``ndim``-D images fine-tunes the shipped model: only ``auto`` and the shipped model's own
    preset do; any other preset asks for a new network of that shape."""
    return has_default_model(ndim) and network in ("auto", DEFAULT_NETWORKS.get(ndim))


def has_default_model(ndim: int = 2) -> bool:
    name = DEFAULT_MODELS.get(ndim)
    return bool(name) and files("napari_spoco._models").joinpath(name).is_file()


def load_default_model(ndim: int = 2) -> SpocoModel:
    """The shipped starting model for ``ndim``-D images (a fresh copy on every call)."""
    if not has_default_model(ndim):
        raise SpocoError(
            f"napari-spoco ships no {ndim}D starting model; start from a new model "
            "(--init none) or from a model file."
        )
    with as_file(files("napari_spoco._models").joinpath(DEFAULT_MODELS[ndim])) as path:
        model = load_model(path)
    model.history["source"] = f"shipped default ({DEFAULT_MODELS[ndim]})"
    return model
