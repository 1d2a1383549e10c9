"""Network presets: ``small`` (CPU default), ``medium`` (one level more: the shipped 2D start),
``large`` (the paper's six levels), ``auto`` by device."""

import numpy as np
import pytest
import torch

from napari_spoco.errors import SpocoError
from napari_spoco.io import load_model, save_model
from napari_spoco.model import NETWORK_CHOICES, NETWORKS, ModelConfig, network_config, network_name
from napari_spoco.training import TrainConfig, train


def test_presets_and_auto_by_device():
    assert NETWORK_CHOICES == ("auto", "small", "medium", "large")
    assert network_config("auto", "cpu") == NETWORKS["small"] == ModelConfig()
    medium = network_config("medium", "cpu")
    assert medium.depth == 4 and 2 * ModelConfig().receptive_radius < medium.receptive_radius < 100
    assert network_config("auto", torch.device("cuda")) == NETWORKS["large"]  # no GPU needed to decide
    large = network_config("large", "cpu")
    assert large.depth == 6 and large.receptive_radius > 8 * ModelConfig().receptive_radius
    with pytest.raises(SpocoError, match="not one of auto, small, medium, large"):
        network_config("huge")


def test_the_preset_is_known_again_from_a_saved_model(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.int32)
    labels[8:20, 8:20], labels[30:44, 30:44] = 1, 2
    config = TrainConfig(steps=1, patch_shape=(64, 64), batch_size=1, device="cpu")
    model = train([image], [labels], config, model_config=network_config("large", "cpu"))
    again = load_model(save_model(model, tmp_path / "large.spoco.pt"))
    assert network_name(again.config) == "large" and again.config.depth == 6
    assert network_name(ModelConfig(base_features=8)) == "custom"


@pytest.mark.parametrize("ndim,shape", [(2, (1, 2, 48, 40)), (3, (1, 2, 16, 24, 24))])
def test_batchnorm_folded_for_inference_computes_the_same_and_leaves_the_network_alone(ndim, shape):
    import torch

    from napari_spoco.model import ModelConfig, SpocoModel, folded_for_inference

    net = SpocoModel.new(ModelConfig(ndim=ndim, in_channels=2, base_features=4, depth=3), seed=0).student
    for mod in net.modules():  # statistics as after training
        if hasattr(mod, "running_var"):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.3, 3.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.3, 0.3)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = folded_for_inference(net)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net.eval()(x)
        got = folded(x)
    assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()))


def _concatenating_forward(net, x):
    """The UNet as written in the paper's reference: upsample, concatenate, convolve."""
    skips = []
    for i, enc in enumerate(net.encoders):
        x = enc(net.pool(x) if i > 0 else x)
        skips.append(x)
    skips.pop()
    for dec in net.decoders:
        skip = skips.pop()
        x = dec(torch.cat([skip, torch.nn.functional.interpolate(x, size=skip.shape[2:], mode="nearest")], dim=1))
    return net.head(x)


def _same(a, b, tol=1e-10):
    """Equal up to float64 rounding, relative to the larger values (random weights make them large)."""
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


@pytest.mark.parametrize("ndim,shape", [(2, (2, 3, 32, 48)), (3, (2, 1, 8, 16, 24))])
def test_the_decoder_without_concatenation_is_the_same_function_with_the_same_gradients(ndim, shape):
    """The decoder splits its first convolution by input channel and convolves the upsampled
    part at the low resolution, one 2-tap kernel per output parity (model._decode); in float64
    values and gradients must equal the concatenating form's, including at the zero-padded
    borders, in training mode (batch statistics) and in the exported (scripted) form."""
    import copy

    from napari_spoco.model import UNet

    torch.manual_seed(0)
    net = UNet(ModelConfig(ndim=ndim, in_channels=shape[1], depth=3)).double().train()
    for p in net.parameters():  # random, not the initial constants, so that every tap matters
        p.data.normal_()
    reference = copy.deepcopy(net)
    x = torch.randn(shape, dtype=torch.float64)
    ours, theirs = net(x), _concatenating_forward(reference, x)
    assert _same(ours, theirs)
    (ours * theirs.detach()).sum().backward()
    (theirs * theirs.detach()).sum().backward()
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert _same(p.grad, q.grad, 1e-9), name
    scripted = torch.jit.script(net.eval())
    assert _same(scripted(x), _concatenating_forward(reference.eval(), x))


def test_the_decoder_falls_back_to_upsampling_when_the_sizes_do_not_double():
    from napari_spoco.model import UNet, _decode

    torch.manual_seed(1)
    net = UNet(ModelConfig(ndim=2, depth=2)).double().eval()
    dec = net.decoders[0]
    skip, low = torch.randn(1, 16, 13, 10, dtype=torch.float64), torch.randn(1, 32, 6, 5, dtype=torch.float64)
    up = torch.nn.functional.interpolate(low, size=(13, 10), mode="nearest")
    assert _same(_decode(dec, skip, low), dec(torch.cat([skip, up], dim=1)))


def test_3d_pooling_stays_in_bfloat16_under_autocast_with_the_same_values_and_gradients(monkeypatch):
    """torch's CPU autocast runs max_pool3d in float32 (a float32 copy of every bfloat16 map);
    the network pools outside autocast (model._pool), so the pooled map stays bfloat16, and its
    output and gradients are those of autocast's float32 pooling, bit for bit."""
    import napari_spoco.model as model_module
    from napari_spoco.model import UNet

    torch.manual_seed(0)
    net = UNet(ModelConfig(ndim=3, depth=3)).train()
    # Not smaller: on a CPU with AVX-512 but without AMX, torch's bfloat16 weight gradient of a
    # 3D convolution over a 2x4x4 map (the bottleneck of an 8x16x16 input) differs between two
    # identical runs; from 4x8x8 on it is repeatable (measured on an AMD EPYC, 2026-12-07).
    x = torch.randn(2, 1, 16, 32, 32)
    seen = []
    net.encoders[1].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))

    def run():
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
        y.float().square().sum().backward()
        return y.detach(), [p.grad.clone() for p in net.parameters()]

    ours = run()
    monkeypatch.setattr(model_module, "_pool", lambda pool, t: pool(t))  # autocast's policy
    theirs = run()
    assert seen == [torch.bfloat16, torch.float32]
    assert torch.equal(ours[0], theirs[0])
    assert all(torch.equal(a, b) for a, b in zip(ours[1], theirs[1]))
