import pytest
import torch

from defi.config import from_dict, replace
from defi.errors import ConfigError, ShapeError
from defi.eval.probes import r2_score, ridge_probe
from defi.models.inverse import GIDM, GIDMConfig, QuantizerConfig, table7_variant, table8_variant


def gidm_tiny() -> GIDMConfig:
    return GIDMConfig.preset("tiny")
from defi.models.inverse.quantizer import FiniteScalarQuantizer, VectorQuantizer, code_usage


def inputs(b=3, seed=0, cfg=None):
    cfg = cfg or gidm_tiny()
    g = torch.Generator().manual_seed(seed)
    cur = torch.randn(b, cfg.num_patches, cfg.feature_dim, generator=g)
    fut = torch.randn(b, cfg.num_patches, cfg.feature_dim, generator=g)
    text = torch.randn(b, 5, cfg.text_dim, generator=g)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return cur, fut, text, mask


def test_causal_temporal_mask_hides_the_future_from_the_current_step():
    torch.manual_seed(0)
    model = GIDM(gidm_tiny()).eval()
    cur, fut, text, mask = inputs()
    states = model.token_states(cur, fut, text, mask)
    states2 = model.token_states(cur, fut + 3 * torch.randn_like(fut), text, mask)
    assert states.shape == (3, 2, 16 + 5 + 2, 32)
    assert torch.allclose(states[:, 0], states2[:, 0], atol=1e-6)  # e_t step: unchanged
    assert not torch.allclose(states[:, 1], states2[:, 1], atol=1e-3)  # e_{t+n} step: sees the change
    # and the latent action depends on the future frame
    f1, _ = model.infer_latent_actions(cur, fut, text, mask)
    f2, _ = model.infer_latent_actions(cur, fut + 3 * torch.randn_like(fut), text, mask)
    assert not torch.allclose(f1, f2)
    # padded text tokens are masked: changing them changes nothing
    text2 = text.clone()
    text2[0, 3:] += 5.0
    states3 = model.token_states(cur, fut, text2, mask)
    real = torch.ones(states.shape[2], dtype=torch.bool)
    real[16 + 3 : 16 + 5] = False  # the padded positions of sample 0 carry their own (ignored) values
    assert torch.allclose(states3[0][:, real], states[0][:, real], atol=1e-6)
    assert torch.allclose(states3[1:], states[1:], atol=1e-6)


def test_vq_straight_through_gradients_and_codebook_updates():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, code_dim=4, commitment_weight=0.0))
    vq.train()
    vq(torch.randn(4, 2, 4))  # first batch initialises the codebook from data
    z = torch.randn(4, 2, 4, requires_grad=True)
    out = vq(z)
    w = torch.randn_like(z)
    (out.quantized * w).sum().backward()
    assert torch.allclose(z.grad, w)  # straight-through: d quantized / d z = identity
    assert out.indices.shape == (4, 2) and vq.codebook.grad is None  # EMA mode: the codebook is not optimised
    assert torch.allclose(out.quantized.detach(), vq.codebook[out.indices].detach())  # values are codes
    # commitment loss pulls z towards its code; loss-based updates also train the codebook
    vq2 = VectorQuantizer(QuantizerConfig(codebook_size=8, code_dim=4, update="loss"))
    vq2.train()
    vq2(torch.randn(4, 2, 4))
    z2 = torch.randn(4, 2, 4, requires_grad=True)
    out2 = vq2(z2)
    assert out2.loss > 0
    out2.loss.backward()
    assert z2.grad.abs().sum() > 0 and vq2.codebook.grad.abs().sum() > 0


def test_cosine_codebook_returns_unit_codes_and_passes_gradients():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, code_dim=4, normalize=True))
    vq.train()
    vq(torch.randn(8, 2, 4) * 5)
    z = (torch.randn(4, 2, 4) * 3).requires_grad_()
    out = vq(z)
    assert torch.allclose(out.quantized.norm(dim=-1), torch.ones(4, 2), atol=1e-5)
    assert torch.allclose(vq.codebook.norm(dim=-1), torch.ones(8), atol=1e-5)  # EMA keeps codes on the sphere
    (out.quantized.sum() + out.loss).backward()
    assert z.grad.abs().sum() > 0


def test_ema_moves_codes_to_their_assigned_mean():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=2, code_dim=2, ema_decay=0.5, dead_code_threshold=0.0))
    vq.train()
    vq(torch.tensor([[[10.0, 0.0]], [[-10.0, 0.0]]]))  # init: one code per cluster
    batch = torch.tensor([[[11.0, 1.0]], [[9.0, 1.0]], [[-10.0, -2.0]]])
    for _ in range(30):
        vq(batch)
    codes = sorted(vq.codebook.detach().tolist())
    assert codes[0] == pytest.approx([-10.0, -2.0], abs=1e-2) and codes[1] == pytest.approx([10.0, 1.0], abs=1e-2)


def test_dead_codes_are_reinitialised_from_the_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, code_dim=4, ema_decay=0.5, dead_code_threshold=0.3))
    vq.train()
    vq(torch.randn(16, 1, 4) * 10)  # spread-out init
    collapsed = torch.randn(16, 1, 4) * 0.01 + 50.0  # every vector now lands on one code
    for _ in range(3):
        vq(collapsed)
    assert int(vq.reinitialised) > 0
    # the re-drawn codes sit on the current data, so the next batches use several of them
    dist_to_data = torch.cdist(vq.codebook.detach(), collapsed[:, 0]).min(1).values
    assert (dist_to_data < 1.0).sum() >= 2
    used, perplexity = code_usage(vq(collapsed).indices, 8)
    assert used > 1 / 8 and perplexity > 1.0


def test_fsq_reaches_every_code_of_its_levels_and_passes_gradients(tmp_path):
    cfg = QuantizerConfig(kind="fsq", levels=(4, 3))
    assert cfg.latent_dim == 2 and cfg.num_codes == 12
    fsq = FiniteScalarQuantizer(cfg)
    grid = torch.cartesian_prod(torch.linspace(-4, 4, 41), torch.linspace(-4, 4, 41))[:, None]  # [B, 1, 2]
    z = grid.clone().requires_grad_()
    out = fsq(z)
    assert out.indices.shape == (41 * 41, 1) and sorted(out.indices.unique().tolist()) == list(range(12))
    # values sit on the levels (scaled to [-1, 1]) and the id is their mixed-radix number
    first, second = out.quantized[:, 0, 0].detach(), out.quantized[:, 0, 1].detach()
    assert sorted(first.unique().tolist()) == [-1.0, -0.5, 0.0, 0.5] and sorted(second.unique().tolist()) == [-1, 0, 1]
    assert torch.equal(out.indices[:, 0], (first * 2 + 2).long() + 4 * (second + 1).long())
    # monotone in z: a larger input never gives a lower level
    assert (first.reshape(41, 41).diff(dim=0) >= 0).all()
    out.quantized.sum().backward()  # straight-through rounding: the gradient is the bound's slope, not zero
    assert (z.grad > 0).all() and float(out.loss) == 0.0
    # an FSQ GIDM saves and reloads its levels
    torch.manual_seed(0)
    model = GIDM(replace(gidm_tiny(), quantizer=cfg)).eval()
    assert model.to_code.out_features == 2
    model.save_pretrained(tmp_path / "gidm")
    loaded = GIDM.from_pretrained(tmp_path / "gidm").eval()
    assert loaded.config.quantizer.levels == (4, 3)
    cur, fut, text, mask = inputs()
    assert torch.equal(model.infer_latent_actions(cur, fut, text, mask)[1],
                       loaded.infer_latent_actions(cur, fut, text, mask)[1])
    with pytest.raises(ConfigError, match="quantizer.levels"):
        from_dict(GIDMConfig, {"quantizer": {"kind": "fsq", "levels": [8, 1]}})


def test_standardised_fsq_spreads_a_shrunken_latent_over_its_levels():
    # a collapsing encoder shrinks its latents into one level; batch standardisation undoes the shrinking
    g = torch.Generator().manual_seed(0)
    shrunk = torch.randn(256, 2, 4, generator=g) * 0.01 + 3.0
    plain = FiniteScalarQuantizer(QuantizerConfig(kind="fsq"))
    assert plain(shrunk).indices.unique().numel() == 1
    fsq = FiniteScalarQuantizer(QuantizerConfig(kind="fsq", standardize=True)).train()
    for _ in range(100):  # running statistics converge to the batch's (momentum 0.1)
        used, _ = code_usage(fsq(shrunk).indices, 1000)
    assert used > 0.1
    fsq.eval()
    assert fsq(shrunk).indices.unique().numel() > 50  # inference uses the running statistics, not a collapse


def test_code_usage_and_ridge_probe():
    used, ppl = code_usage(torch.tensor([0, 1, 2, 3]), 8)
    assert used == 0.5 and ppl == pytest.approx(4.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = x[:, :2] @ torch.tensor([[1.0, -2.0], [0.5, 1.0]]) + 0.01 * torch.randn(200, 2, generator=g)
    assert ridge_probe(x[:150], y[:150], x[150:], y[150:])["r2"] > 0.99
    assert ridge_probe(torch.randn(150, 6, generator=g), y[:150], torch.randn(50, 6, generator=g), y[150:])["r2"] < 0.2
    assert r2_score(y, y) == 1.0


def test_ridge_probe_wide_inputs_use_the_same_solution():
    # more features than rows (pixels): the dual form must give the primal weights
    from defi.eval.probes import _fit, _predict

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 300, generator=g, dtype=torch.float64)
    y = x[:, :3] @ torch.randn(3, 2, generator=g, dtype=torch.float64)
    wide = _fit(x, y, 10.0)
    xs = (x - x.mean(0)) / x.std(0)
    primal = torch.linalg.solve(xs.T @ xs + 10.0 * torch.eye(300, dtype=x.dtype), xs.T @ (y - y.mean(0)))
    assert torch.allclose(wide[2], primal, atol=1e-8)
    held = torch.randn(10, 300, generator=g, dtype=torch.float64)
    assert _predict(wide, held).shape == (10, 2)


@pytest.mark.parametrize(
    "variant",
    [("gidm", "vq"), ("gidm", "binning"), ("gidm", "fsq"), ("gidm", "continuous"), ("mlp", None),
     ("transformer", None)],
)
def test_variants_build_train_and_infer(variant):
    arch, quant = variant
    torch.manual_seed(0)
    cfg = table7_variant(gidm_tiny(), arch)
    if quant:
        cfg = table8_variant(cfg, quant)
    model = GIDM(cfg)
    cur, fut, text, mask = inputs()
    out = model(cur, fut, text, mask)
    assert {"loss", "mse", "copy_mse", "vq_loss"} <= set(out) and out["loss"].dim() == 0
    out["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder"))
    feats, codes = model.eval().infer_latent_actions(cur, fut, text, mask)
    assert feats.shape == (3, cfg.num_action_queries, cfg.dim)
    expected = {"vq": (3, 2), "fsq": (3, 2), "binning": (3, 2, cfg.quantizer.code_dim)}.get(cfg.quantizer.kind)
    assert ("batch_code_perplexity" in out) == (quant in ("vq", "fsq"))
    assert (codes is None) if expected is None else tuple(codes.shape) == expected
    if arch != "mlp":
        attn = model.query_attention(cur, fut, text, mask)
        assert attn.shape == (3, cfg.num_patches) and (attn >= 0).all() and (attn.sum(1) <= 1 + 1e-5).all()


def test_no_text_and_shape_errors():
    cfg = GIDMConfig(**{**gidm_tiny().__dict__, "text_dim": 0})
    model = GIDM(cfg)
    cur, fut, _, _ = inputs()
    assert model(cur, fut)["loss"].isfinite()
    with pytest.raises(ShapeError, match="future_tokens"):
        model(cur, fut[:, :5])
    with pytest.raises(ShapeError, match="text_tokens"):
        GIDM(gidm_tiny())(cur, fut, None, None)


def moving_square_features(n=32, seed=0):
    """Patch features of a bright square that moves by one of 4 displacements between e_t and e_{t+n}."""
    from defi.models.encoders.frame import FrameEncoderConfig, build_frame_encoder

    enc = build_frame_encoder(FrameEncoderConfig(kind="patch", image_size=16, patch_size=4, dim=16))
    g = torch.Generator().manual_seed(seed)
    cur = torch.zeros(n, 3, 16, 16, dtype=torch.uint8)
    fut = torch.zeros_like(cur)
    moves = torch.tensor([[0, 4], [4, 0], [0, -4], [-4, 0]])
    for i in range(n):
        y, x = torch.randint(4, 8, (2,), generator=g).tolist()
        dy, dx = moves[int(torch.randint(0, 4, (1,), generator=g))].tolist()
        cur[i, :, y : y + 4, x : x + 4] = 255
        fut[i, :, y + dy : y + dy + 4, x + dx : x + dx + 4] = 255
    return enc(cur), enc(fut)


def test_tiny_gidm_overfits_a_batch_and_beats_copy_baseline():
    torch.manual_seed(0)
    cur, fut = moving_square_features()
    cfg = GIDMConfig(**{**gidm_tiny().__dict__, "text_dim": 0})
    model = GIDM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(cur, fut)
    losses = []
    for _ in range(70):
        out = model(cur, fut)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["mse"]))
    model.eval()
    with torch.no_grad():
        final = model(cur, fut)
    assert float(first["mse"]) == pytest.approx(float(first["copy_mse"]), rel=1e-5)  # starts at copy-e_t
    assert losses[-1] < 0.7 * losses[0]
    assert float(final["mse"]) < 0.6 * float(final["copy_mse"]), (float(final["mse"]), float(final["copy_mse"]))


def test_save_and_from_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GIDM(gidm_tiny())
    cur, fut, text, mask = inputs()
    model(cur, fut, text, mask)  # a training step initialises the codebook from data
    model.eval()
    feats, codes = model.infer_latent_actions(cur, fut, text, mask)
    model.save_pretrained(tmp_path / "gidm")
    loaded = GIDM.from_pretrained(tmp_path / "gidm").eval()
    assert loaded.config == model.config
    feats2, codes2 = loaded.infer_latent_actions(cur, fut, text, mask)
    assert torch.equal(codes, codes2) and torch.allclose(feats, feats2)
    assert bool(loaded.quantizer.initialised)  # the codebook state travels with the weights


def test_bad_config_raises_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="heads"):
        from_dict(GIDMConfig, {"dim": 32, "heads": 3})
    with pytest.raises(ConfigError, match="quantizer.codebook_size"):
        from_dict(GIDMConfig, {"quantizer": {"codebook_size": 1}})
    with pytest.raises(ConfigError, match="architecture"):
        from_dict(GIDMConfig, {"architecture": "lstm"})
    with pytest.raises(ConfigError, match="num_action_querys"):
        from_dict(GIDMConfig, {"num_action_querys": 4})


def test_queries_only_encoder_gives_the_same_latent_actions():
    # inference computes the last ST block only for what the action queries at the e_{t+n} step read
    torch.manual_seed(0)
    model = GIDM(gidm_tiny()).eval()
    cur, fut, text, mask = inputs()
    with torch.no_grad():
        full, codes = model.infer_latent_actions(cur, fut, text, mask)
        pruned, pruned_codes = model.infer_latent_actions(cur, fut, text, mask, queries_only=True)
        pre_full = model._encode_tokens(cur, fut, text, mask)
        pre_pruned = model._encode_tokens(cur, fut, text, mask, queries_only=True)
    torch.testing.assert_close(pre_pruned, pre_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pruned, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(codes, pruned_codes)
