"""The model's sSDC paths (rdcnet.ssdc): one result three ways, the "auto" selection rule, the
memory the recompute path saves, and every path under torch.autocast (issue 8, items 1 and 2)."""

from __future__ import annotations

import pytest
import torch

import rdcnet.ssdc as ssdc_mod
from rdcnet import RDCNet
from rdcnet.losses import RDCNetLoss
from rdcnet.ssdc import SSDC_PATHS, MEASURED_FASTEST, apply_ssdc, choose_ssdc_path, requested_path
from rdcnet_ext import ops, reference

CUDA_OK = torch.cuda.is_available() and bool(getattr(__import__("rdcnet_ext"), "has_cuda", False))


def block_inputs(batch, groups, channels, spatial, n_dilations, dtype=torch.float64, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    nd = len(spatial)
    gc = groups * channels

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_(grad)

    return [randn(batch, gc, *spatial), randn(gc, channels, *(3,) * nd, scale=(channels * 3**nd) ** -0.5),
            randn(gc, scale=0.1), randn(gc, n_dilations * channels, *(1,) * nd, scale=(n_dilations * channels) ** -0.5),
            randn(gc, scale=0.1)]


def outputs_and_grads(path, inputs, dilations, groups, slope=0.3):
    y = apply_ssdc(*inputs, dilations, groups, slope, path)
    probe = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)  # not a symmetric loss
    return (y,) + torch.autograd.grad((y * probe).sum(), inputs)


# ---- one result, three ways --------------------------------------------------------------------

@pytest.mark.parametrize("batch,groups,channels,spatial,dilations", [
    (2, 3, 4, (13, 17), (1, 2, 3)),
    (1, 1, 8, (9, 5), (1,)),
    (3, 2, 2, (4, 6), (1, 4, 8)),          # dilations larger than the map
    (1, 2, 3, (5, 7, 6), (1, 2)),
    (2, 1, 4, (3, 4, 5), (2, 3, 1)),       # unordered dilations
])
@pytest.mark.parametrize("path", ["recompute", "fused"])
def test_paths_equal_the_chain_in_float64(path, batch, groups, channels, spatial, dilations):
    inputs = block_inputs(batch, groups, channels, spatial, len(dilations))
    want = outputs_and_grads("chain", inputs, dilations, groups)
    got = outputs_and_grads(path, inputs, dilations, groups)
    for name, g, w in zip(("y", "x", "weight", "bias", "reduce_weight", "reduce_bias"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


def test_recompute_gradcheck():
    inputs = block_inputs(1, 2, 2, (4, 5), 2)
    assert torch.autograd.gradcheck(lambda *t: apply_ssdc(*t, (1, 2), 2, 0.3, "recompute"), inputs, fast_mode=True)


def test_recompute_skips_gradients_nobody_asked_for():
    x, w, b, rw, rb = block_inputs(1, 2, 3, (6, 7), 2)
    w.requires_grad_(False)
    rw.requires_grad_(False)
    y = apply_ssdc(x, w, b, rw, rb, (1, 2), 2, 0.3, "recompute")
    gx, gb, grb = torch.autograd.grad(y.sum(), (x, b, rb))
    chain = [t.detach().requires_grad_() for t in (x, w, b, rw, rb)]
    want = torch.autograd.grad(reference.ssdc(*chain, (1, 2), 2, 0.3).sum(), (chain[0], chain[2], chain[4]))
    for g, expected in zip((gx, gb, grb), want):
        torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-10)


# ---- memory: what autograd keeps between forward and backward --------------------------------------

def saved_bytes(path, inputs, dilations, groups):
    """Bytes autograd saves for backward in one forward (distinct storages), inputs excluded."""
    seen, input_ptrs = {}, {t.untyped_storage().data_ptr() for t in inputs}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in input_ptrs:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        apply_ssdc(*inputs, dilations, groups, 0.3, path)
    return sum(seen.values())


def test_recompute_keeps_no_activations_while_the_chain_keeps_every_dilation():
    dilations, groups = (1, 2, 4, 8), 2
    inputs = block_inputs(2, groups, 8, (24, 20), len(dilations), dtype=torch.float32)
    activation = inputs[0].numel() * 4
    assert saved_bytes("chain", inputs, dilations, groups) >= len(dilations) * activation
    assert saved_bytes("recompute", inputs, dilations, groups) == 0
    assert saved_bytes("fused", inputs, dilations, groups) == 0


# ---- the selection rule --------------------------------------------------------------------------

@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_auto_picks_the_measured_fastest_path_which_today_is_the_chain(device_type, dtype):
    # Measured (benchmarks/README.md): the framework chain beats today's fused kernel on the H200 and
    # on CPU, for every dtype measured; unmeasured pairs default to the chain, which exists everywhere.
    assert choose_ssdc_path("auto", device_type, dtype) == "chain"


def test_auto_follows_the_measurement_table_and_never_picks_a_missing_kernel(monkeypatch):
    monkeypatch.setitem(MEASURED_FASTEST, ("cuda", torch.bfloat16), "fused")
    monkeypatch.setitem(MEASURED_FASTEST, ("cpu", torch.float32), "recompute")
    monkeypatch.setattr(ssdc_mod, "fused_ssdc_available", lambda device_type: True)
    assert choose_ssdc_path("auto", "cuda", torch.bfloat16) == "fused"
    assert choose_ssdc_path("auto", "cpu", torch.float32) == "recompute"
    assert choose_ssdc_path("auto", "cuda", torch.float32) == "chain"
    monkeypatch.setattr(ssdc_mod, "fused_ssdc_available", lambda device_type: False)
    assert choose_ssdc_path("auto", "cuda", torch.bfloat16) == "chain"
    assert choose_ssdc_path("auto", "mps", torch.float32) == "chain"


def test_explicit_paths_are_kept_and_a_missing_fused_kernel_is_a_clear_error(monkeypatch):
    for path in SSDC_PATHS:
        if path != "fused":
            assert choose_ssdc_path(path, "mps", torch.float16) == path
    assert choose_ssdc_path("fused", "cpu", torch.bfloat16) == "fused"  # the op upcasts: no crash
    monkeypatch.setattr(ssdc_mod, "fused_ssdc_available", lambda device_type: False)
    with pytest.raises(RuntimeError, match="no fused sSDC for cuda.*'recompute'"):
        choose_ssdc_path("fused", "cuda", torch.float32)


def test_requested_path_validates_and_maps_the_older_fused_switch():
    assert requested_path(None) == "auto"
    assert requested_path(None, fused=True) == "fused"
    assert requested_path(None, fused=False) == "chain"
    assert requested_path("fused", fused=True) == "fused"
    with pytest.raises(ValueError, match="contradicts"):
        requested_path("recompute", fused=True)
    with pytest.raises(ValueError, match="ssdc_path: expected 'auto' or one of .*got 'fast'"):
        requested_path("fast")
    with pytest.raises(ValueError, match="ssdc_path"):
        RDCNet(ssdc_path="unfused")


def test_model_reports_its_path_per_input_including_autocast():
    model = RDCNet(groups=2, channels_per_group=4, ssdc_path="recompute")
    x = torch.zeros(1, 8, 4, 4)
    assert model.block.ssdc.path_for(x) == "recompute"
    assert RDCNet(groups=2, channels_per_group=4).block.ssdc.path_for(x) == "chain"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert RDCNet(groups=2, channels_per_group=4, fused=True).block.ssdc.path_for(x) == "fused"


# ---- autocast -------------------------------------------------------------------------------------

def tiny_model(**kw):
    torch.manual_seed(3)
    return RDCNet(ndim=2, in_channels=1, factor=2, downsampling_channels=4, groups=2, channels_per_group=4,
                  dilations=(1, 2), iterations=2, dropout=0.0, **kw)


def one_training_step(model, device="cpu", dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 24, 20, generator=gen).to(device)
    labels = torch.zeros(2, 24, 20, dtype=torch.long)
    labels[:, 3:10, 4:12], labels[:, 12:20, 8:16] = 1, 2
    labels = labels.to(device)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.autocast(device, dtype=dtype):
        out = model(x)
        loss, _ = RDCNetLoss(margin=2.0)(out, labels)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert "block.ssdc.weight" in changed and "block.ssdc.reduce_weight" in changed
    return out


@pytest.mark.parametrize("kw", [dict(fused=None), dict(fused=True), dict(fused=False), dict(ssdc_path="recompute")],
                         ids=["fused=None", "fused=True", "fused=False", "recompute"])
def test_model_trains_one_step_under_cpu_autocast_bf16(kw):
    out = one_training_step(tiny_model(**kw))
    assert out.embeddings.shape == (2, 2, 24, 20)


def test_paths_agree_under_cpu_autocast():
    x = torch.randn(1, 1, 24, 20, generator=torch.Generator().manual_seed(1))
    ref = tiny_model(ssdc_path="chain").eval()
    with torch.no_grad():
        want = ref(x).embeddings.float()
        for path in ("recompute", "fused"):
            model = tiny_model(ssdc_path=path).eval()
            model.load_state_dict(ref.state_dict())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = model(x).embeddings.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                chain = ref(x).embeddings.float()
            # bf16 rounding differs between paths; against float32 both are within bf16 accuracy.
            assert (got - want).norm() / want.norm() < 2e-2, path
            assert (got - chain).norm() / chain.norm() < 2e-2, path


def test_fused_op_under_autocast_casts_to_one_dtype_and_upcasts_where_it_has_no_kernel():
    inputs = block_inputs(1, 2, 4, (9, 8), 2, dtype=torch.float32)
    want = reference.ssdc(*inputs, (1, 2), 2, 0.3)
    x_bf16 = inputs[0].detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.ssdc(x_bf16, *inputs[1:], (1, 2), 2, 0.3)  # x bf16 (as after an autocast conv), weights fp32
    assert y.dtype == torch.bfloat16
    assert (y.float() - want).norm() / want.norm() < 1e-2
    grads = torch.autograd.grad(y.float().sum(), [x_bf16] + inputs[1:])
    assert [g.dtype for g in grads] == [torch.bfloat16] + [torch.float32] * 4
    # Outside autocast a bf16 call on CPU computes in float32 and answers in bf16.
    plain = ops.ssdc(*(t.detach().bfloat16() for t in inputs), (1, 2), 2, 0.3)
    assert plain.dtype == torch.bfloat16
    assert (plain.float() - want).norm() / want.norm() < 1e-2
    with pytest.raises(TypeError, match="weight: expected dtype torch.bfloat16"):
        ops.ssdc(inputs[0].detach().bfloat16(), *inputs[1:], (1, 2), 2, 0.3)  # mixed dtypes, no autocast


def test_embeddings_and_probabilities_stay_float32_under_autocast():
    """Positions in bfloat16 would be 4-8 px coarse at a coordinate of 1000: the head adds the
    coordinates in float32 whatever the autocast dtype."""
    model = tiny_model().eval()
    with torch.no_grad():
        model.up.weight.zero_()
        model.up.bias.zero_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(1, 1, 8, 6), origin=(1001, 2003))
    assert out.embeddings.dtype == out.probabilities.dtype == torch.float32
    want = model.coordinates((8, 6), origin=(1001, 2003))
    assert torch.equal(out.embeddings[0], want)


def test_float64_is_left_alone_under_autocast():
    inputs = block_inputs(1, 1, 4, (6, 7), 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for path in SSDC_PATHS:
            assert apply_ssdc(*inputs, (1, 2), 1, 0.3, path).dtype == torch.float64, path


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU and a CUDA build of rdcnet_ext")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", ["auto", "chain", "recompute", "fused"])
def test_model_trains_one_step_under_cuda_autocast(path, dtype):
    one_training_step(tiny_model(ssdc_path=path).cuda(), device="cuda", dtype=dtype)


# ---- mixed-precision training and the command line -------------------------------------------------

def test_training_with_bf16_autocast_and_the_recompute_path(tmp_path):
    from rdcnet.data import nuclei_2d
    from rdcnet.postprocess import PostprocessConfig
    from rdcnet.checkpoint import load_checkpoint
    from rdcnet.train import TrainConfig, train

    pairs = nuclei_2d(3, (48, 48), seed=31)
    model = tiny_model(ssdc_path="recompute")
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), margin=4.0, crop=(32, 32), epochs=1, steps_per_epoch=3,
                      augment="none", device="cpu", amp="bf16", tune_postprocess=False,
                      postprocess=PostprocessConfig(margin=4.0, min_votes=2))
    result = train(model, pairs[:2], pairs[2:], cfg, progress=False)
    assert len(result.history) == 1 and torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    loaded, _, ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["train_config"]["amp"] == "bf16"
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in loaded.parameters())


def test_amp_settings_are_checked():
    from rdcnet.train import TrainConfig, train

    with pytest.raises(ValueError, match="amp: expected None or one of 'bf16', 'fp16', got 'fp8'"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="amp: 'fp16' needs a CUDA device"):
        train(tiny_model(), [], [], TrainConfig(amp="fp16", device="cpu"), progress=False)


def test_cli_passes_amp_and_the_ssdc_path():
    from rdcnet import cli

    args = cli.build_parser().parse_args(["train", "--images", "a", "--labels", "b", "--out", "c", "--amp", "bf16",
                                          "--ssdc", "recompute"])
    assert (args.amp, args.ssdc) == ("bf16", "recompute")
    assert cli.build_parser().parse_args(["predict", "x.tif", "--model", "m.pt", "--out", "o"]).ssdc == "auto"
    model = tiny_model()
    model.ssdc_path = "recompute"
    assert model.block.ssdc.path == "recompute"
    with pytest.raises(ValueError, match="ssdc_path"):
        model.ssdc_path = "fastest"
