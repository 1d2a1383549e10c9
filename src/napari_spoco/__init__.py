"""napari-spoco: label a few objects, segment all of them (SPOCO, Wolny et al., CVPR 2022).

The compute core below imports neither Qt nor napari; the napari plugin lives in ``_napari``.
"""

from .clustering import ClusterConfig, cluster_embeddings
from .errors import SpocoError
from .inference import Embedding, embed
from .io import load_model, read_image, save_model, write_labels
from .losses import LossConfig, spoco_loss
from .metrics import average_precision, evaluate, symmetric_best_dice
from .model import ModelConfig, SpocoModel, UNet
from .segmentation import segment
from .training import TrainConfig, TrainProgress, train

__version__ = "0.1.0"

__all__ = [
    "ClusterConfig", "Embedding", "LossConfig", "ModelConfig", "SpocoError", "SpocoModel",
    "TrainConfig", "TrainProgress", "UNet", "average_precision", "cluster_embeddings", "embed",
    "evaluate", "load_model", "read_image", "save_model", "segment", "spoco_loss",
    "symmetric_best_dice", "train", "write_labels",
]
