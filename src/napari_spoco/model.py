"""The embedding network: a 2D/3D UNet, its configuration, and the EMA teacher.

BatchNorm (not GroupNorm) is used on purpose: in eval mode it is a fixed affine map, so the
network is translation-equivariant and tiled inference reproduces whole-image inference (see
``inference.py``). Pooling is isotropic; inputs are padded to a multiple of ``2**(depth-1)``.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .errors import SpocoError

#: Where a model can run; ``auto`` picks the best available (:func:`select_device`).
DEVICES = ("auto", "cpu", "cuda", "mps")


def select_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an unavailable explicit choice is refused."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpocoError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu.")
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise SpocoError("--device mps was asked for, but Apple MPS is not available; use --device cpu.")
    if device not in DEVICES:
        raise SpocoError(f"Unknown device {device!r}; choose auto, cpu, cuda or mps.")
    return torch.device(device)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; stored in every model file."""

    ndim: int = 2
    in_channels: int = 1
    embedding_dim: int = 16
    base_features: int = 16
    depth: int = 3
    #: Extra output channel: a foreground logit (objects vs. known non-object pixels, docs/method.md).
    foreground_head: bool = True

    @property
    def out_channels(self) -> int:
        return self.embedding_dim + int(self.foreground_head)

    @property
    def size_divisor(self) -> int:
        return 2 ** (self.depth - 1)

    @property
    def receptive_radius(self) -> int:
        """How far (pixels) an input pixel can influence the output: the encoder's and the
        decoder's 3×3 convolutions at each scale, plus pooling and upsampling offsets (an upper
        bound; 28 for the CPU default). Tiles overlapping by twice this agree in the middle wherever
        they start; tiles on the network's size grid need only :attr:`tile_reach`."""
        d = self.depth
        return 2 * (2**d - 1) + 2 * (2 ** (d - 1) - 1) + 2**d

    @property
    def tile_reach(self) -> int:
        """How far (pixels) from a tile's zero-padded border its output can differ from the whole
        image's, for tiles that start and end on multiples of :attr:`size_divisor`: then the
        pooling windows line up with the whole image's and add no offsets, so the reach is what
        the 3×3 convolutions spread, halved by each pooling and doubled by each upsampling
        (22 px for the CPU default, 46 for the medium network, against receptive radii of 28
        and 60). Aligned tiles overlapping by twice this agree exactly in the middle
        (:func:`napari_spoco.inference.embed`; tests/test_inference.py measures it)."""
        wrong = []  # border pixels an encoder level gets wrong, in that level's pixels
        for _ in range(self.depth):
            carried = -(-wrong[-1] // 2) if wrong else 0  # max pooling: a window with one wrong pixel
            wrong.append(carried + 2)  # two 3x3 convolutions with zero padding
        reach = wrong[-1]
        for level in range(self.depth - 2, -1, -1):  # upsample, concatenate the skip, two convolutions
            reach = max(2 * reach, wrong[level]) + 2
        return reach

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Rebuild a config read from a model file; values outside what the network can be
        built with (a hand-edited file) raise ``ValueError`` naming the field."""
        if not isinstance(d, dict):
            raise ValueError("the model configuration is not a mapping")
        known = {f for f in cls.__dataclass_fields__}
        config = cls(**{k: v for k, v in d.items() if k in known})
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ``ValueError`` for a field the network cannot be built with."""
        limits = {"ndim": (2, 3), "in_channels": (1, 64), "embedding_dim": (1, 256),
                  "base_features": (1, 512), "depth": (1, 8)}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"model config field {name!r} is {value!r}; expected a whole number in {lo}-{hi}")
        if not isinstance(self.foreground_head, bool):
            raise ValueError(f"model config field 'foreground_head' is {self.foreground_head!r}; expected true or false")


#: The interactive CPU default, one level deeper, and the reference-size network of the paper.
CPU_DEFAULT = ModelConfig()
MEDIUM = ModelConfig(depth=4)
REFERENCE = ModelConfig(base_features=16, depth=6)

#: Network presets (``--network`` and the GUI's choice): ``small`` is the CPU default for a new
#: network (receptive radius 28 px, 0.12 M parameters in 2D); ``medium`` has one more level (60 px,
#: 0.49 M; the shipped 2D starting model's shape); ``large`` is the paper's six-level network
#: (252 px, 7.9 M, for a GPU). ``auto`` picks by device. docs/method.md, "Network".
NETWORKS: dict[str, ModelConfig] = {"small": CPU_DEFAULT, "medium": MEDIUM, "large": REFERENCE}
NETWORK_CHOICES = ("auto", *NETWORKS)


def network_name(config: ModelConfig) -> str:
    """The preset a configuration was built from (``small``, ``medium``, ``large``), else ``custom``."""
    for name, preset in NETWORKS.items():
        if (config.base_features, config.depth, config.embedding_dim) == (
                preset.base_features, preset.depth, preset.embedding_dim):
            return name
    return "custom"


def network_config(network: str = "auto", device: str | torch.device = "auto") -> ModelConfig:
    """The configuration of a new network: a preset by name, or for ``auto`` the large network
    on a GPU and the small one on a CPU."""
    if network not in NETWORK_CHOICES:
        raise SpocoError(f"Network {network!r} is not one of {', '.join(NETWORK_CHOICES)}.")
    if network == "auto":
        dev = device if isinstance(device, torch.device) else select_device(device)
        network = "large" if dev.type in ("cuda", "mps") else "small"
    return NETWORKS[network]


def _layers(ndim: int):
    if ndim == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
    if ndim == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d
    raise ValueError(f"ndim must be 2 or 3, got {ndim}")


class _DoubleConv(nn.Sequential):
    def __init__(self, ndim: int, cin: int, cout: int):
        conv, norm, _ = _layers(ndim)
        super().__init__(
            conv(cin, cout, 3, padding=1, bias=False),
            norm(cout),
            nn.ReLU(inplace=True),
            conv(cout, cout, 3, padding=1, bias=False),
            norm(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """UNet with nearest-neighbour upsampling and concatenation skips.

    Input ``(B, C, *spatial)`` with spatial sizes divisible by ``config.size_divisor``; output
    ``(B, config.out_channels, *spatial)``: ``embedding_dim`` embedding channels, then the
    optional foreground logit.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        conv, _, pool = _layers(config.ndim)
        feats = [config.base_features * 2**i for i in range(config.depth)]
        self.encoders = nn.ModuleList()
        cin = config.in_channels
        for f in feats:
            self.encoders.append(_DoubleConv(config.ndim, cin, f))
            cin = f
        self.pool = pool(2)
        self.decoders = nn.ModuleList()
        for f_skip, f_in in zip(reversed(feats[:-1]), reversed(feats[1:])):
            self.decoders.append(_DoubleConv(config.ndim, f_in + f_skip, f_skip))
        self.head = conv(feats[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = self.pool(x) if torch.jit.is_scripting() else _pool(self.pool, x)
            x = enc(x)
            skips.append(x)
        skips.pop()
        for dec in self.decoders:
            skip = skips.pop()
            if torch.jit.is_scripting():  # the exported network (bioimageio_export) keeps the plain form
                x = nn.functional.interpolate(x, size=skip.shape[2:], mode="nearest")
                x = dec(torch.cat([skip, x], dim=1))
            else:
                x = _decode(dec, skip, x)
        return self.head(x)


@torch.jit.unused
def _pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)`` in ``x``'s own number format. Under CPU autocast torch runs ``max_pool3d``
    in float32, so a bfloat16 map was copied to float32 (twice its bytes) before every 3D
    pooling and cast back by the next convolution; the maximum of bfloat16 values is the same
    in either format, so pooling outside autocast gives the same output in a fraction of the
    time (docs/benchmarks.md, "3D pooling in bfloat16")."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return pool(x)


@torch.jit.unused
def _decode(dec: nn.Sequential, skip: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``dec(torch.cat([skip, upsampled low], dim=1))``, computed without the concatenation and,
    where the upsampling doubles every axis, without the upsampled copy: the first
    convolution's weights are split by input channel, the skip's part is one convolution and
    the upsampled part is :func:`_add_upsampled_conv`. The same function of the same
    parameters, with fewer operations (docs/benchmarks.md, "The decoder without concatenation")."""
    conv = dec[0]
    c = skip.shape[1]
    out = conv._conv_forward(skip, conv.weight[:, :c], conv.bias)
    doubled = all(s == 2 * n for s, n in zip(skip.shape[2:], low.shape[2:]))
    if doubled and _plain_3x3(conv):
        _add_upsampled_conv(out, low, conv.weight[:, c:])
    else:
        up = nn.functional.interpolate(low, size=skip.shape[2:], mode="nearest")
        out = out + conv._conv_forward(up, conv.weight[:, c:], None)
    for layer in list(dec)[1:]:
        out = layer(out)
    return out


def _plain_3x3(conv: nn.Module) -> bool:
    k = conv.kernel_size
    return (all(n == 3 for n in k) and all(p == 1 for p in conv.padding) and all(s == 1 for s in conv.stride)
            and all(d == 1 for d in conv.dilation) and conv.groups == 1 and conv.padding_mode == "zeros")


def _parity_weights(weight: torch.Tensor) -> torch.Tensor:
    """3-tap kernels ``(O, I, 3, ...)`` as the 2-tap kernels they become on a nearest-upsampled
    input, one per parity of the output position along each axis: ``(2**nd * O, I, 2, ...)``,
    parities first (axis 0's outermost). An even output position 2i sees input i−1 through the
    first tap and input i through the other two; an odd one, 2i+1, sees i through the first two
    and i+1 through the last."""
    nd = weight.dim() - 2
    w = weight
    for a in range(nd):
        axis = 2 * a + 2  # a parity dims in front, then O, I, then a already-halved axes
        left, mid, right = w.unbind(axis)
        even = torch.stack([left, mid + right], axis)
        odd = torch.stack([left + mid, right], axis)
        w = torch.stack([even, odd], a)
    return w.reshape((-1,) + tuple(weight.shape[1:2]) + (2,) * nd)


def _add_upsampled_conv(out: torch.Tensor, low: torch.Tensor, weight: torch.Tensor) -> None:
    """``out += conv(nearest-upsample-by-2(low), weight, padding=1)``, in place, computed at
    ``low``'s resolution: one 2-tap convolution per output parity (all parities as one
    convolution over ``low`` padded by one), interleaved into ``out``'s positions. A 3×3×3
    convolution over the doubled volume costs 27 taps at 8 times the voxels; this costs 8 taps
    at 8 times the output channels (a third of the arithmetic in 3D, 4/9 in 2D) and no upsampled
    copy."""
    nd = low.dim() - 2
    conv = nn.functional.conv3d if nd == 3 else nn.functional.conv2d
    parts = conv(nn.functional.pad(low, (1, 1) * nd), _parity_weights(weight))
    out.add_(_Interleave.apply(parts, weight.shape[0]).to(out.dtype))


def _parity_slices(nd: int, n: tuple[int, ...]):
    """For each output parity: its index into the parity dims of the 2-tap convolution's output,
    the window of that output it takes (shifted by the parity), and its positions in the output
    viewed as ``(B, C, n0, 2, n1, 2, ...)``."""
    for parity in itertools.product((0, 1), repeat=nd):
        window = (slice(None), slice(None)) + tuple(slice(p, p + size) for p, size in zip(parity, n))
        target = (slice(None), slice(None)) + tuple(x for p in parity for x in (slice(None), p))
        yield parity, window, target


class _Interleave(torch.autograd.Function):
    """The parities of :func:`_add_upsampled_conv`, ``(B, 2**nd * C, n0 + 1, ...)``, placed at
    their positions of a ``(B, C, 2 n0, ...)`` map. Written as one function so that the backward
    pass gathers the gradient into one buffer instead of one zero-filled copy per parity."""

    @staticmethod
    def forward(ctx, parts: torch.Tensor, channels: int) -> torch.Tensor:
        nd = parts.dim() - 2
        n = tuple(s - 1 for s in parts.shape[2:])
        ctx.shape, ctx.channels = parts.shape, channels
        grouped = parts.unflatten(1, (2,) * nd + (channels,))
        shape = [parts.shape[0]]
        for size in n:
            shape += [size, 2]
        last = parts.is_contiguous(memory_format=torch.channels_last_3d if nd == 3 else torch.channels_last)
        if last:  # channels last, as the convolutions before and after it
            out = parts.new_empty(shape + [channels]).movedim(-1, 1)
        else:
            out = parts.new_empty([shape[0], channels] + shape[1:])
        for parity, window, target in _parity_slices(nd, n):
            out[target] = grouped[(slice(None),) + parity][window]
        return out.view([parts.shape[0], channels] + [2 * size for size in n])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        nd = len(ctx.shape) - 2
        n = tuple(s - 1 for s in ctx.shape[2:])
        split = [grad.shape[0], ctx.channels]
        for size in n:
            split += [size, 2]
        grad = grad.reshape(split)
        result = grad.new_zeros(ctx.shape)
        grouped = result.unflatten(1, (2,) * nd + (ctx.channels,))
        for parity, window, target in _parity_slices(nd, n):
            grouped[(slice(None),) + parity][window] = grad[target]
        return result, None


def split_output(out: torch.Tensor, config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split network output into (embeddings, foreground logit or None)."""
    emb = out[:, : config.embedding_dim]
    fg = out[:, config.embedding_dim] if config.foreground_head else None
    return emb, fg


@dataclass
class SpocoModel:
    """Student network, its EMA teacher, and the record of how they were trained."""

    config: ModelConfig
    student: UNet
    teacher: UNet
    history: dict = field(default_factory=dict)

    @classmethod
    def new(cls, config: ModelConfig | None = None, seed: int | None = 0) -> SpocoModel:
        config = config or ModelConfig()
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                student = UNet(config)
        else:
            student = UNet(config)
        teacher = make_teacher(student)
        return cls(config=config, student=student, teacher=teacher)

    def to(self, device: torch.device | str) -> SpocoModel:
        self.student.to(device)
        self.teacher.to(device)
        return self

    @property
    def pixel_scale(self) -> float:
        """Factor images are resized by before the network (napari_spoco.scaling); models
        written before scaling existed hold none and work at 1.0."""
        return float(self.history.get("pixel_scale", 1.0))

    @property
    def voxel_size(self) -> tuple[float, ...] | None:
        """The voxel size of the images it was trained on (None: taken as isotropic); images
        segmented without a voxel size of their own are taken to share it."""
        v = self.history.get("voxel_size")
        return tuple(float(x) for x in v) if v else None

    def network_factors(self, voxel_size=None) -> tuple[float, ...]:
        """Per-axis resize factors from an image to the network's grid: the pixel scale times
        the anisotropy correction of ``voxel_size`` (default: the training voxel size)."""
        from .scaling import axis_factors

        return axis_factors(self.pixel_scale, voxel_size if voxel_size is not None else self.voxel_size,
                            self.config.ndim)

    @property
    def predicts_with_teacher(self) -> bool:
        """Whether :attr:`predictor` is the EMA teacher: set by fine-tuning from a trained model
        (docs/method.md, "Fine-tuning a trained model"); older files and models trained from
        scratch predict with the student."""
        return self.history.get("predict_with") == "teacher"

    @property
    def predictor(self) -> UNet:
        """The network that segments (``segment``, the napari previews, bioimage.io export)."""
        return self.teacher if self.predicts_with_teacher else self.student

    @property
    def partner(self) -> UNet:
        """The other network: what consistency clustering checks the predictor's clusters against."""
        return self.student if self.predicts_with_teacher else self.teacher

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    @torch.no_grad()
    def widen_input(self, channels: int) -> None:
        """Let a model that reads one channel read ``channels`` (docs/method.md, "Colour and
        channels"): each channel gets the grey weights of the first convolution divided by the
        channel count, so the widened network starts out seeing the mean of its normalised
        channels — the grey image it was trained on, near enough — and fine-tuning learns
        what the channels add. Student and teacher alike; the record says it happened."""
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 64:
            raise SpocoError(f"A model reads 1 to 64 channels; cannot widen it to {channels!r}.")
        if self.config.in_channels == channels:
            return
        if self.config.in_channels != 1:
            raise SpocoError(f"This model reads {self.config.in_channels} channels; only a one-channel model "
                             f"can be widened (to {channels}).")
        for net in (self.student, self.teacher):
            old = net.encoders[0][0]
            new = type(old)(channels, old.out_channels, old.kernel_size, padding=old.padding, bias=False)
            new.weight.copy_(old.weight.repeat(1, channels, *([1] * (old.weight.ndim - 2))) / channels)
            new.weight.requires_grad_(old.weight.requires_grad)
            net.encoders[0][0] = new.to(old.weight.device)
        self.config = replace(self.config, in_channels=channels)
        self.student.config = self.teacher.config = self.config
        self.history["widened_from_channels"] = 1

    def snapshot(self) -> SpocoModel:
        """A CPU copy in evaluation mode, for previews while the original keeps training
        (possibly on a GPU, in channels-last layout, in training mode)."""
        with torch.no_grad():
            student = copy.deepcopy(self.student).to("cpu", memory_format=torch.contiguous_format).eval()
            teacher = copy.deepcopy(self.teacher).to("cpu", memory_format=torch.contiguous_format).eval()
        history = {k: copy.deepcopy(v) for k, v in self.history.items() if k != "losses"}
        return SpocoModel(self.config, student, teacher, history)


@torch.no_grad()
def folded_for_inference(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in evaluation mode whose BatchNorm layers are folded into the
    convolution before them (weights scaled, a bias added): the same function in evaluation
    mode, one pass over each feature map fewer. Embedding takes about 0.8x the time (2D and 3D;
    docs/benchmarks.md, "Segmentation time"). The network itself is left as it is, so a
    network in training is never touched."""
    net = copy.deepcopy(net).eval()
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for conv_name, norm_name in zip(names, names[1:]):
            conv, norm = seq._modules[conv_name], seq._modules[norm_name]
            if not (isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(norm, (nn.BatchNorm2d, nn.BatchNorm3d))
                    and norm.track_running_stats and norm.running_var is not None):
                continue
            scale = norm.running_var.add(norm.eps).rsqrt()
            if norm.affine:
                scale = scale * norm.weight
            shift = -norm.running_mean * scale + (norm.bias if norm.affine else 0.0)
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                               padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                               padding_mode=conv.padding_mode).to(conv.weight.device, conv.weight.dtype)
            fused.weight.copy_(conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1)))
            fused.bias.copy_(shift)
            seq._modules[conv_name] = fused
            seq._modules[norm_name] = nn.Identity()
    return net.eval()


def make_teacher(student: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """g ← m·g + (1−m)·f on the weights; normalisation buffers are copied from f.

    The reference averages only the weights; copying BatchNorm statistics keeps the teacher's
    normalisation consistent with the weights it is averaging.
    """
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)
    for bt, bs in zip(teacher.buffers(), student.buffers()):
        bt.copy_(bs)


def ema_momentum(step: int, cap: float = 0.999) -> float:
    """Momentum warm-up, min(cap, (1+t)/(10+t)): a teacher that tracks the student early on.

    With a fixed 0.999 a run of a few hundred CPU steps would keep a teacher close to its random
    initialisation, and the consistency term would pull the student towards it.
    """
    return min(cap, (1.0 + step) / (10.0 + step))
