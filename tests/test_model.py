"""rdcnet.RDCNet: shapes, padding/cropping, semi-convolutional embeddings, gradients, iterations."""

import numpy as np
import pytest
import torch

from rdcnet.model import RDCNet, RDCNetConfig, ssdc_unfused


def small(ndim=2, **kw):
    cfg = dict(ndim=ndim, in_channels=1, factor=4 if ndim == 2 else (1, 4, 4), downsampling_channels=4, groups=2,
               channels_per_group=4, dilations=(1, 2), iterations=2, fused=False)
    cfg.update(kw)
    return RDCNet(**cfg)


@pytest.mark.parametrize("ndim,factor,shape", [
    (2, 4, (64, 64)), (2, 4, (61, 77)), (2, (2, 4), (33, 50)), (2, 1, (9, 11)), (2, 3, (20, 25)),
    (3, (1, 4, 4), (5, 30, 41)), (3, (1, 8, 8), (4, 32, 33)), (3, (2, 2, 2), (7, 9, 10)),
])
def test_output_shapes_and_dtypes(ndim, factor, shape):
    model = small(ndim, factor=factor, in_channels=2, n_classes=3)
    out = model(torch.randn(2, 2, *shape))
    assert out.embeddings.shape == (2, ndim, *shape)
    assert out.probabilities.shape == (2, 3, *shape)
    assert out.logits.shape == (2, 3, *shape)
    assert out.embeddings.dtype == out.probabilities.dtype == torch.float32
    torch.testing.assert_close(out.probabilities.sum(1), torch.ones(2, *shape))


@pytest.mark.parametrize("ndim,spacing,origin", [
    (2, None, None), (2, (0.5, 2.0), (10, 300)), (3, (2.0, 0.26, 0.26), (4, 128, 0)),
])
def test_embeddings_equal_coordinates_when_offsets_are_zero(ndim, spacing, origin):
    model = small(ndim, spacing=spacing).eval()
    with torch.no_grad():
        model.up.weight.zero_()
        model.up.bias.zero_()
    shape = (13, 17) if ndim == 2 else (3, 9, 10)
    out = model(torch.randn(1, 1, *shape), origin=origin)
    sp = spacing or (1.0,) * ndim
    org = origin or (0,) * ndim
    grids = np.meshgrid(*[(np.arange(n) + o) * s for n, o, s in zip(shape, org, sp)], indexing="ij")
    expected = torch.from_numpy(np.stack(grids)).float()
    torch.testing.assert_close(out.embeddings[0], expected)


def test_tile_origin_makes_embeddings_translation_consistent():
    """A tile processed with its origin gives the whole image's embeddings away from the cut (the
    network is translation-equivariant up to its stride, so tiles start at multiples of it)."""
    torch.manual_seed(0)
    model = small(2, dilations=(1,), iterations=1).eval()
    x = torch.randn(1, 1, 64, 64)
    whole = model(x).embeddings
    tile = model(x[..., 16:, 32:], origin=(16, 32)).embeddings
    torch.testing.assert_close(tile[..., 16:-16, 16:-16], whole[..., 32:-16, 48:-16], atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(1)
    model = small(3, factor=(1, 2, 2), dropout=0.0)
    out = model(torch.randn(2, 1, 4, 12, 12))
    (out.embeddings.square().mean() + out.probabilities[:, 1].mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_return_all_gives_every_iteration_and_the_last_equals_forward():
    torch.manual_seed(2)
    model = small(2, iterations=3).eval()
    x = torch.randn(1, 1, 32, 32)
    outs = model(x, return_all=True)
    assert len(outs) == 3
    torch.testing.assert_close(outs[-1].embeddings, model(x).embeddings)
    assert not torch.allclose(outs[0].embeddings, outs[-1].embeddings)
    assert len(model(x, return_all=True, iterations=5)) == 5
    torch.testing.assert_close(model(x, iterations=1).probabilities, outs[0].probabilities)


def test_weights_are_shared_across_iterations():
    a, b = small(2, iterations=1), small(2, iterations=10)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


def test_ssdc_unfused_matches_explicit_per_group_computation():
    torch.manual_seed(3)
    G, C, D = 2, 3, (1, 2, 3)
    x = torch.randn(2, G * C, 9, 11)
    w, b = torch.randn(G * C, C, 3, 3), torch.randn(G * C)
    rw, rb = torch.randn(G * C, len(D) * C, 1, 1), torch.randn(G * C)
    got = ssdc_unfused(x, w, b, rw, rb, D, G, 0.3)
    for g in range(G):
        sl = slice(g * C, (g + 1) * C)
        acts = [torch.nn.functional.leaky_relu(
            torch.nn.functional.conv2d(x[:, sl], w[sl], b[sl], padding=d, dilation=d), 0.3) for d in D]
        ref = torch.nn.functional.conv2d(torch.cat(acts, 1), rw[sl], rb[sl])
        torch.testing.assert_close(got[:, sl], ref)


def test_config_roundtrip_rebuilds_the_same_model():
    model = small(3, factor=(1, 8, 8), spacing=(2.0, 0.26, 0.26))
    again = RDCNet.from_config(model.config.to_dict(), fused=False)
    again.load_state_dict(model.state_dict())
    assert again.config == model.config
    assert isinstance(model.config, RDCNetConfig)


@pytest.mark.parametrize("kwargs,match", [
    (dict(ndim=4), "ndim"), (dict(factor=(1, 2, 3)), "factor"), (dict(factor=0), "factor"),
    (dict(spacing=(1.0, -1.0)), "spacing"), (dict(dilations=()), "dilations"), (dict(groups=0), "groups"),
    (dict(n_classes=1), "n_classes"), (dict(dropout=1.5), "dropout"),
])
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small(**kwargs)


def test_bad_input_raises():
    model = small(2)
    with pytest.raises(ValueError, match="x: expected"):
        model(torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="origin"):
        model(torch.randn(1, 1, 16, 16), origin=(1, 2, 3))


# ---- fused sSDC in the model (issue 4) -----------------------------------------------------------

fused_available = pytest.mark.skipif(not hasattr(__import__("rdcnet_ext").ops, "ssdc"),
                                     reason="this rdcnet_ext has no fused sSDC")


@fused_available
@pytest.mark.parametrize("ndim", [2, 3])
def test_fused_and_unfused_models_give_the_same_outputs_and_gradients(ndim):
    torch.manual_seed(5)
    factor = 2 if ndim == 2 else (1, 2, 2)
    unfused = small(ndim, factor=factor, dropout=0.0, dilations=(1, 2, 3), fused=False)
    fused = RDCNet.from_config(unfused.config.to_dict(), fused=True)
    fused.load_state_dict(unfused.state_dict())  # one checkpoint serves both paths
    x = torch.randn(2, 1, *((13, 18) if ndim == 2 else (3, 10, 12)))
    outs = []
    for model in (unfused, fused):
        model.zero_grad()
        out = model(x, origin=(1,) * ndim)
        (out.embeddings.square().mean() + out.probabilities[:, 1].mean()).backward()
        outs.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = outs
    torch.testing.assert_close(b.embeddings, a.embeddings, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.probabilities, a.probabilities, rtol=1e-5, atol=1e-6)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-6, msg=name)


@fused_available
def test_fused_default_is_off_on_cpu_and_can_be_forced():
    x = torch.zeros(1, 1)
    assert not small(2, fused=None).block.ssdc.use_fused(x)
    assert not small(2, fused=None, channels_per_group=64).block.ssdc.use_fused(x)
    assert not small(2, fused=False).block.ssdc.use_fused(x)
    assert small(2, fused=True).block.ssdc.use_fused(x)
