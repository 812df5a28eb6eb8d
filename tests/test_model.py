"""Behaviour of the encoder, quantizer, WaveNet decoder and VQVAE on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_vqvae_config
from vqaudio.audio import mu_law_decode, mu_law_encode
from vqaudio.config import (
    EncoderConfig,
    QuantizerConfig,
    VQVAEConfig,
    config_from_dict,
    config_to_dict,
)
from vqaudio.model import VQVAE, CheckpointError, UnknownSpeakerError, file_sha256
from vqaudio.nn.encoder import Encoder, encoder_receptive_field
from vqaudio.nn.quantizer import VectorQuantizer, code_entropy
from vqaudio.nn.wavenet import SILENCE, CausalConv1d, WaveNet, sample_from_logits


def tiny_config(ema: bool = True, num_speakers: int = 2, kernel_size: int = 2) -> VQVAEConfig:
    return tiny_vqvae_config(num_speakers=num_speakers, ema=ema, kernel_size=kernel_size, num_stacks=2)


def test_mu_law_round_trip_and_silence():
    x = torch.linspace(-1, 1, 1001)
    q = mu_law_encode(x)
    assert q.dtype == torch.int64 and q.min() == 0 and q.max() == 255
    assert mu_law_encode(torch.zeros(1)).item() == SILENCE
    # mu-law quantization error is small near zero and bounded everywhere
    err = (mu_law_decode(q) - x).abs()
    assert err.max() < 0.04
    assert err[(x.abs() < 0.01)].max() < 0.001


def test_config_dict_round_trip():
    cfg = tiny_config()
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(VQVAEConfig, data) == cfg
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict(VQVAEConfig, {**data, "bogus": 1})


def test_default_sizes_follow_the_paper():
    cfg = VQVAEConfig()
    assert cfg.hop_length == 64
    assert cfg.decoder.dilations == tuple(2**i for i in range(10)) * 2
    assert cfg.decoder.receptive_field == 2 * 1023 + 1
    assert cfg.bitrate == pytest.approx(250 * 9)
    assert encoder_receptive_field(cfg.encoder) == 1 + 3 * 63


def test_encoder_downsamples_64x():
    enc = Encoder(EncoderConfig(), latent_dim=64)
    z = enc(torch.randn(2, 1, 64 * 10))
    assert z.shape == (2, 64, 10)
    with pytest.raises(ValueError, match="multiple of hop_length"):
        enc(torch.randn(2, 1, 100))


def test_straight_through_gradients_reach_encoder():
    torch.manual_seed(0)
    model = VQVAE(tiny_config(), ["a", "b"])
    out = model(torch.randn(2, 1, 512) * 0.3, torch.tensor([0, 1]))
    out.reconstruction_loss.backward()  # the decoder's loss alone must reach the encoder
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_gradient_codebook_gets_codebook_loss_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, dim=4, ema=False))
    z = torch.randn(2, 4, 10, requires_grad=True)
    out = vq(z)
    out.loss.backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0
    assert out.codebook_loss > 0


def test_ema_codebook_moves_toward_assigned_latents():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=4, dim=2, decay=0.9, dead_code_threshold=0))
    vq.train()
    # two clusters of latents far from each other
    centres = torch.tensor([[3.0, 3.0], [-3.0, -3.0]])
    z = (centres.repeat(50, 1) + 0.1 * torch.randn(100, 2)).t()[None]  # [1, 2, 100]
    vq(z)  # initialises from the batch
    vq.codebook.copy_(torch.tensor([[2.0, 2.0], [-2.0, -2.0], [10.0, 10.0], [-10.0, -10.0]]))
    vq.ema_cluster_size.fill_(1.0)  # EMA state consistent with the codebook: e_i = m_i / N_i
    vq.ema_embed_sum.copy_(vq.codebook)
    before = vq.codebook.clone()
    for _ in range(30):
        vq(z)
    dist_before = (before[:2] - centres).norm(dim=1)
    dist_after = (vq.codebook[:2] - centres).norm(dim=1)
    assert (dist_after < 0.3 * dist_before).all()
    # codes 2 and 3 were never assigned: EMA leaves their vectors where they were
    torch.testing.assert_close(vq.codebook[2:], before[2:], atol=0.5, rtol=0)


def test_dead_codes_are_restarted_from_batch_latents():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, dim=2, decay=0.5, dead_code_threshold=0.2))
    vq.train()
    z = torch.randn(1, 2, 64)
    vq(z)
    vq.codebook.copy_(torch.full((8, 2), 100.0))  # all codes far away...
    vq.codebook[0] = 0.0  # ...except code 0, which takes every latent
    vq.ema_embed_sum.copy_(vq.codebook)
    for _ in range(5):
        out = vq(z)
    assert out.codes_in_use > 1
    assert (vq.codebook.abs() < 50).all()


def test_quantizer_decode_encode_matches_forward_in_eval():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=16, dim=4))
    vq.train()
    vq(torch.randn(2, 4, 20))
    vq.eval()
    z = torch.randn(2, 4, 20)
    out = vq(z)
    codes = vq.encode(z)
    assert codes.shape == (2, 20) and codes.dtype == torch.int64
    torch.testing.assert_close(out.codes, codes)
    torch.testing.assert_close(vq.decode(codes), out.quantized)
    assert 1 <= out.perplexity <= 16
    # the batch perplexity is exp of the entropy of the batch's code histogram
    counts = torch.bincount(codes.reshape(-1), minlength=16)
    assert float(out.perplexity) == pytest.approx(math.exp(code_entropy(counts)), rel=1e-5)
    with pytest.raises(ValueError, match="codes must lie"):
        vq.decode(torch.tensor([[16]]))


def test_code_entropy():
    assert code_entropy([5, 5, 5, 5]) == pytest.approx(math.log(4))
    assert code_entropy(torch.tensor([0, 3, 0, 3, 0])) == pytest.approx(math.log(2))  # zeros ignored
    assert code_entropy([0, 7, 0]) == 0.0
    assert math.isnan(code_entropy([0, 0]))


@pytest.mark.parametrize("dilation", [1, 4])
def test_causal_conv_does_not_see_the_future(dilation):
    torch.manual_seed(0)
    conv = CausalConv1d(3, 5, kernel_size=2, dilation=dilation)
    x = torch.randn(1, 3, 40)
    y = conv(x)
    assert y.shape == (1, 5, 40)
    x2 = x.clone()
    x2[:, :, 25:] += 10.0
    y2 = conv(x2)
    torch.testing.assert_close(y[:, :, :25], y2[:, :, :25])
    assert not torch.allclose(y[:, :, 25], y2[:, :, 25])


def test_wavenet_output_does_not_depend_on_future_inputs():
    torch.manual_seed(0)
    cfg = tiny_config().decoder
    net = WaveNet(cfg, hop_length=8)
    inputs = torch.randint(0, 256, (1, 64))
    local = torch.randn(1, cfg.local_channels, 8)
    spk = torch.tensor([1])
    y = net(inputs, local, spk)
    changed = inputs.clone()
    changed[:, 40:] = 255 - changed[:, 40:]
    y2 = net(changed, local, spk)
    torch.testing.assert_close(y[..., :40], y2[..., :40])
    assert not torch.allclose(y[..., 40], y2[..., 40])


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_incremental_decoding_equals_teacher_forced_forward(kernel_size):
    torch.manual_seed(0)
    model = VQVAE(tiny_config(kernel_size=kernel_size), ["a", "b"]).eval()
    local = torch.randn(2, 8, 3)
    spk = torch.tensor([0, 1])
    q = model.decoder.generate(local, spk, generator=torch.Generator().manual_seed(1))
    assert q.shape == (2, 3 * 64)
    inputs = torch.nn.functional.pad(q[:, :-1], (1, 0), value=SILENCE)
    full = model.decoder(inputs, local, spk)
    state = model.decoder.init_state(local, spk)
    steps = []
    for t in range(q.shape[1]):
        steps.append(model.decoder.step(state))
        state.prev = q[:, t]
    torch.testing.assert_close(torch.stack(steps, -1), full, atol=1e-5, rtol=1e-5)


def test_sampling_by_inverse_cdf():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]]))
    picks = [sample_from_logits(logits, torch.tensor([u])).item() for u in (0.05, 0.15, 0.29, 0.31, 0.99)]
    assert picks == [0, 1, 1, 2, 2]
    assert sample_from_logits(logits, torch.tensor([0.0]), temperature=0).item() == 2


def test_encode_decode_shapes_and_speakers(tmp_path):
    torch.manual_seed(0)
    model = VQVAE(tiny_config(), ["alice", "bob"]).eval()
    wav = torch.rand(2, 1, 64 * 4 + 10) - 0.5
    codes = model.encode(wav)
    assert codes.shape == (2, 4) and codes.dtype == torch.int64
    out = model.decode(codes, "bob", generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 256) and out.dtype == torch.float32
    assert out.abs().max() <= 1
    with pytest.raises(UnknownSpeakerError, match="alice, bob"):
        model.decode(codes, "carol")
    with pytest.raises(ValueError, match="shorter than one hop"):
        model.encode(torch.zeros(1, 1, 10))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VQVAE(tiny_config(), ["alice", "bob"])
    model.train()
    model(torch.randn(2, 1, 512) * 0.3, torch.tensor([0, 1]))  # moves the EMA buffers
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors", "speakers.json"}
    loaded = VQVAE.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config and loaded.speakers == ["alice", "bob"]
    # one id for the weights, whether computed in memory, from the file, or after loading
    fresh = VQVAE(model.config, ["alice", "bob"])
    fresh.load_state_dict(model.state_dict())
    assert fresh.checkpoint_id == loaded.checkpoint_id == file_sha256(tmp_path / "ckpt" / "model.safetensors")[:16]
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    wav = torch.rand(1, 1, 640) - 0.5
    torch.testing.assert_close(model.encode(wav), loaded.encode(wav))
    assert loaded.checkpoint_id == model.checkpoint_id
    # a training run directory resolves to its model/ folder
    model.save_pretrained(tmp_path / "run" / "model")
    assert VQVAE.from_pretrained(tmp_path / "run").speakers == ["alice", "bob"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        VQVAE.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        VQVAE.from_pretrained(tmp_path / "empty")
    model = VQVAE(tiny_config(), ["a", "b"])
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "speakers.json").unlink()
    with pytest.raises(CheckpointError, match="speakers.json is missing"):
        VQVAE.from_pretrained(tmp_path / "ckpt")
    # truncated or empty weights: a CheckpointError naming the file, not safetensors' own error
    model.save_pretrained(tmp_path / "cut")
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut/model\.safetensors: cannot read the weights"):
        VQVAE.from_pretrained(tmp_path / "cut")
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"cut/model\.safetensors: cannot read the weights"):
        VQVAE.from_pretrained(tmp_path / "cut")


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_time_major_forward_equals_the_conv_modules(kernel_size):
    torch.manual_seed(0)
    net = WaveNet(tiny_config(kernel_size=kernel_size).decoder, hop_length=64)
    inputs = torch.randint(0, 256, (3, 5 * 64))
    local = torch.randn(3, 8, 5)
    speaker = torch.tensor([0, 1, 1])
    reference = net.forward_channels_first(inputs, local, speaker)
    logits = net(inputs, local, speaker)
    assert logits.shape == (3, 256, 5 * 64)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net.forward_time_major(inputs, local, speaker), reference.transpose(1, 2),
                               rtol=1e-5, atol=1e-5)
    # the same gradients reach the weights
    grads = torch.autograd.grad(logits.square().sum(), list(net.parameters()))
    ref_grads = torch.autograd.grad(net.forward_channels_first(inputs, local, speaker).square().sum(),
                                    list(net.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_conditioning_stack_and_auxiliary_mel_loss(tmp_path):
    """Residual conv blocks over the code frames start as the identity, train (the loss has
    the weighted log-mel term with a gradient to them), decode the same in every method, and
    round-trip through a checkpoint; without them a model is what it was."""
    from conftest import tiny_vqvae

    plain = tiny_vqvae(["a", "b"], seed=0)
    model = tiny_vqvae(["a", "b"], seed=0, condition_layers=2, condition_channels=16, mel_loss_weight=0.5,
                       mel_bands=10)
    assert set(plain.state_dict()) < set(model.state_dict())  # only new tensors
    assert plain.decoder.mel_head is None and not plain.decoder.condition_stack
    model.load_state_dict({**model.state_dict(), **plain.state_dict()})
    codes = torch.randint(0, 16, (2, 7))
    kw = dict(temperature=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.decode(codes, [0, 1], method="torch", **kw), plain.decode(codes, [0, 1], method="torch", **kw))

    wav = torch.sin(torch.linspace(0, 300, 2 * 640)).reshape(2, 1, 640) * 0.5
    mel = model.log_mel(wav)
    assert mel.shape == (2, 10, 10) and torch.isfinite(mel).all()
    model.train()
    out = model(wav, torch.tensor([0, 1]))
    assert out.mel_loss > 0 and torch.isclose(
        out.loss, out.reconstruction_loss + model.config.quantizer.commitment_cost * out.commitment_loss
        + out.codebook_loss + 0.5 * out.mel_loss)
    out.loss.backward()
    assert model.decoder.mel_head.weight.grad.abs().sum() > 0
    assert model.decoder.condition_stack[0].conv2.weight.grad.abs().sum() > 0
    assert plain.train()(wav, torch.tensor([0, 1])).mel_loss is None

    # moved off the identity, the stack changes the decoding alike in the torch and numba loops
    with torch.no_grad():
        for block in model.decoder.condition_stack:
            block.conv2.weight.normal_(0, 0.5)
    model.eval()
    noise = [torch.rand(7 * 64) for _ in range(2)]
    a = model.decode_batch(list(codes), [0, 1], noise=noise, method="torch")
    b = model.decode_batch(list(codes), [0, 1], noise=noise, method="numba")
    for x, y in zip(a, b):
        assert (x == y).float().mean() > 0.99
    assert not all(torch.equal(x, y) for x, y in zip(a, plain.decode_batch(list(codes), [0, 1], noise=noise, method="torch")))
    model.save_pretrained(tmp_path / "ck")
    loaded = VQVAE.from_pretrained(tmp_path / "ck")
    assert loaded.config.decoder.condition_layers == 2 and loaded.checkpoint_id == model.checkpoint_id


@pytest.mark.parametrize("name, rate, speakers", [("fsdd-8k", 8000, 6), ("vcc2016-16k", 16000, 10)])
def test_bundled_checkpoints_load_by_name_with_their_cards(name, rate, speakers):
    from vqaudio.model import PRETRAINED_DIR

    model = VQVAE.from_pretrained(name)
    assert (model.sample_rate, len(model.speakers)) == (rate, speakers)
    assert model.checkpoint_id == file_sha256(PRETRAINED_DIR / name / "model.safetensors")[:16]
    log = json.loads((PRETRAINED_DIR / name / "training_log.json").read_text())
    assert log[-1]["checkpoint_id"] == model.checkpoint_id  # the card's log is of these weights
    card = (PRETRAINED_DIR / name / "README.md").read_text()
    assert "<!-- BEGIN training-log -->" in card
    if log[-1]["scores"] is not None:  # an evaluated stretch: the card's evaluation is of these weights
        assert f"checkpoint `{model.checkpoint_id}`" in card


def test_time_jitter_replaces_frames_by_neighbours_in_training_only():
    """Chorowski et al.'s time jitter: p = 0 is the identity, p = 1 moves every frame to a
    neighbour (the one it has at either end), about p of the frames move, gradients reach the
    copied frames, and the model applies it in training mode only."""
    from conftest import tiny_vqvae

    from vqaudio.model import time_jitter

    T = 50
    z = torch.arange(T, dtype=torch.float32).repeat(3, 2, 1)  # [3, 2, T], frame t holds t
    assert torch.equal(time_jitter(z, 0.0), z)
    g = torch.Generator().manual_seed(0)
    moved = time_jitter(z, 1.0, generator=g)
    step = moved[:, 0] - z[:, 0]
    assert set(step.abs().unique().tolist()) == {1.0}
    assert (step[:, 0] == 1).all() and (step[:, -1] == -1).all()
    assert torch.equal(moved[:, 0], moved[:, 1])  # one choice per frame, all channels alike
    assert 0.3 < (step[:, 1:-1] > 0).float().mean() < 0.7  # left and right alike
    share = (time_jitter(torch.arange(4000.0).reshape(1, 1, -1), 0.12, generator=g) != torch.arange(4000.0)).float().mean()
    assert 0.09 < share < 0.15
    x = torch.randn(1, 4, T, requires_grad=True)
    time_jitter(x, 0.5, generator=g).sum().backward()
    assert x.grad.sum() == 4 * T and (x.grad >= 0).all()  # every output frame is some input frame
    with pytest.raises(ValueError, match="probability"):
        tiny_vqvae(["a"], time_jitter=1.5)

    model = tiny_vqvae(["a", "b"], seed=0, time_jitter=1.0)
    wav = torch.sin(torch.linspace(0, 300, 2 * 640)).reshape(2, 1, 640) * 0.5
    plain = tiny_vqvae(["a", "b"], seed=0)
    speakers = torch.tensor([0, 1])
    assert torch.equal(model.eval()(wav, speakers).logits, plain.eval()(wav, speakers).logits)
    assert not torch.equal(model.train()(wav, speakers).logits, plain.train()(wav, speakers).logits)


def test_input_noise_perturbs_the_teacher_forced_input_in_training_only():
    """``decoder.input_noise``: in training the WaveNet's past samples are encoded from a noisy
    waveform while the loss's targets stay the clean mu-law values; eval mode is unchanged; a
    negative std is refused."""
    from conftest import tiny_vqvae

    from vqaudio.audio import mu_law_encode

    with pytest.raises(ValueError, match="input_noise"):
        tiny_vqvae(["a"], input_noise=-0.1)
    model = tiny_vqvae(["a", "b"], seed=0, input_noise=0.05)
    plain = tiny_vqvae(["a", "b"], seed=0)
    wav = torch.sin(torch.linspace(0, 300, 2 * 640)).reshape(2, 1, 640) * 0.5
    speakers = torch.tensor([0, 1])
    assert torch.equal(model.eval()(wav, speakers).logits, plain.eval()(wav, speakers).logits)

    seen = []
    forward = model.decoder.forward_time_major
    model.decoder.forward_time_major = lambda inputs, *a: seen.append(inputs) or forward(inputs, *a)
    out = model.train()(wav, speakers)
    clean = mu_law_encode(wav[:, 0], 256)
    assert (seen[0][:, 1:] != clean[:, :-1]).float().mean() > 0.3  # the past samples are noisy
    rec = torch.nn.functional.cross_entropy(out.logits.float(), clean)
    assert torch.allclose(out.reconstruction_loss, rec, atol=1e-5)  # the targets are clean


def test_decoding_temperature_defaults_to_the_checkpoints(tmp_path):
    """``decoder.temperature`` is what decoding uses when no temperature is given, in every
    method, and it survives a checkpoint round trip; an explicit temperature overrides it."""
    from conftest import tiny_vqvae

    model = tiny_vqvae(["a", "b"], seed=0, temperature=0.0)
    plain = tiny_vqvae(["a", "b"], seed=0)
    assert (model.decode_temperature(), plain.decode_temperature(), model.decode_temperature(0.7)) == (0.0, 1.0, 0.7)
    codes = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, 5 * 64, generator=torch.Generator().manual_seed(2))
    for method in ("torch", "numba"):
        greedy = plain.decode(codes, [0, 1], temperature=0.0, noise=noise, method=method)
        assert torch.equal(model.decode(codes, [0, 1], noise=noise, method=method), greedy)
        assert not torch.equal(plain.decode(codes, [0, 1], noise=noise, method=method), greedy)
        assert torch.equal(model.decode(codes, [0, 1], temperature=1.0, noise=noise, method=method),
                           plain.decode(codes, [0, 1], noise=noise, method=method))
    model.save_pretrained(tmp_path / "ckpt")
    assert type(model).from_pretrained(tmp_path / "ckpt").decode_temperature() == 0.0
    with pytest.raises(ValueError, match="temperature"):
        tiny_vqvae(["a"], temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        plain.decode(codes, [0, 1], temperature=float("nan"))


def test_pre_emphasis_inverts_and_shapes_the_mu_law_noise_under_the_speech_spectrum():
    """``pre_emphasis`` / ``de_emphasis`` are inverses; through 8-bit mu-law with pre-emphasis
    0.85 a known signal comes back within one mu-law step (at its largest level) amplified by
    the de-emphasis gain 1 / (1 - a), with its quantization error moved out of the high band
    (LPCNet, Sec. 3.2)."""
    from vqaudio.audio import de_emphasis, pre_emphasis

    t = torch.arange(8000) / 8000
    x = (0.5 * torch.sin(2 * math.pi * 220 * t) * torch.exp(-3 * t) + 0.2 * torch.sin(2 * math.pi * 1800 * t * t)).float()
    a = 0.85
    assert torch.equal(pre_emphasis(x, 0.0), x) and torch.equal(de_emphasis(x, 0.0), x)
    y = pre_emphasis(x, a)
    assert torch.allclose(y[1:], x[1:] - a * x[:-1]) and y[0] == x[0]
    assert torch.allclose(de_emphasis(y, a), x, atol=1e-6)
    assert torch.allclose(de_emphasis(y[None, None], a)[0, 0], x, atol=1e-6)  # along the last axis

    emphasised = de_emphasis(mu_law_decode(mu_law_encode(y)), a)
    plain = mu_law_decode(mu_law_encode(x))
    level = float(y.abs().max())  # the mu-law step (in amplitude) at that level:
    step = (256 ** (math.log1p(255 * level) / math.log(256))) * math.log(256) / 255 * 2 / 255
    assert (emphasised - x).abs().max() <= step / (1 - a)

    def high_band_energy(e):
        spectrum = torch.fft.rfft(e).abs() ** 2
        return float(spectrum[torch.fft.rfftfreq(e.numel(), 1 / 8000) > 2000].sum())

    assert high_band_energy(emphasised - x) < 0.5 * high_band_energy(plain - x)


def test_pre_emphasis_model_learns_the_emphasised_signal_and_every_method_de_emphasises():
    """With ``decoder.pre_emphasis`` the WaveNet's targets are the mu-law values of the
    pre-emphasised waveform, and decoding (torch and numba, the same noise) returns the
    de-emphasis of what the same weights generate without it, clipped to [-1, 1]."""
    from conftest import tiny_vqvae

    from vqaudio.audio import de_emphasis, pre_emphasis

    with pytest.raises(ValueError, match="pre_emphasis"):
        tiny_vqvae(["a"], pre_emphasis=1.0)
    model = tiny_vqvae(["a", "b"], seed=0, pre_emphasis=0.85)
    plain = tiny_vqvae(["a", "b"], seed=0)
    wav = torch.sin(torch.linspace(0, 300, 2 * 640)).reshape(2, 1, 640) * 0.5
    out = model(wav, torch.tensor([0, 1]))
    target = mu_law_encode(pre_emphasis(wav[:, 0], 0.85))
    assert torch.allclose(out.reconstruction_loss, torch.nn.functional.cross_entropy(out.logits.float(), target),
                          atol=1e-5)
    codes = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, 5 * 64, generator=torch.Generator().manual_seed(2))
    for method in ("torch", "numba"):
        got = model.decode(codes, [0, 1], noise=noise, method=method)
        expected = de_emphasis(plain.decode(codes, [0, 1], noise=noise, method=method), 0.85).clamp(-1, 1)
        assert torch.allclose(got, expected, atol=1e-6), method
        assert got.abs().max() <= 1


def test_speaker_adversary_reverses_its_gradient_into_the_encoder():
    """``decoder.speaker_adversary`` W: the classifier's cross-entropy is added to the loss; the
    classifier descends it while the encoder output receives -W times its gradient; the
    adversary changes neither the codes nor the decoding."""
    from conftest import tiny_vqvae

    from vqaudio.nn.adversary import SpeakerAdversary, gradient_reversal

    z = torch.randn(3, 4, requires_grad=True)
    gradient_reversal(z, 0.5).sum().backward()
    assert torch.equal(z.grad, torch.full((3, 4), -0.5))

    adversary = SpeakerAdversary(8, 3, weight=2.0)
    z_e = torch.randn(2, 8, 5, requires_grad=True)
    speaker = torch.tensor([0, 2])
    loss, acc = adversary(z_e, speaker)
    loss.backward()
    reversed_grad = z_e.grad.clone()
    z_e.grad = None
    logits = adversary.classifier(z_e.transpose(1, 2))
    torch.nn.functional.cross_entropy(logits.reshape(-1, 3), speaker[:, None].expand(-1, 5).reshape(-1)).backward()
    assert torch.allclose(reversed_grad, -2.0 * z_e.grad, atol=1e-6)
    assert 0 <= float(acc) <= 1

    with pytest.raises(ValueError, match="speaker_adversary"):
        tiny_vqvae(["a"], speaker_adversary=-1.0)
    model = tiny_vqvae(["a", "b"], seed=0, speaker_adversary=0.5)
    plain = tiny_vqvae(["a", "b"], seed=0)
    wav = torch.sin(torch.linspace(0, 300, 2 * 640)).reshape(2, 1, 640) * 0.5
    out = model(wav, torch.tensor([0, 1]))
    assert out.speaker_adversary_loss is not None and 0 <= float(out.speaker_adversary_acc) <= 1
    assert torch.allclose(out.loss, out.reconstruction_loss + out.commitment_loss * 0.25 + out.codebook_loss
                          + out.speaker_adversary_loss, atol=1e-5)
    assert torch.equal(out.codes, plain(wav, torch.tensor([0, 1])).codes)
    assert plain(wav, torch.tensor([0, 1])).speaker_adversary_loss is None


def test_gain_jitter_scales_what_the_encoder_sees_in_training_only():
    """``encoder.gain_jitter_db``: in training each item reaches the encoder at its own random
    gain within the range (never past full scale) while the decoder's targets keep the level;
    eval mode and encoding are unchanged."""
    from conftest import tiny_vqvae

    from vqaudio.model import gain_jitter

    wav = torch.sin(torch.linspace(0, 300, 4 * 640)).reshape(4, 1, 640) * torch.tensor([0.05, 0.1, 0.5, 0.9])[:, None, None]
    out = gain_jitter(wav, 12.0, torch.Generator().manual_seed(0))
    ratio = out.abs().amax(dim=(1, 2)) / wav.abs().amax(dim=(1, 2))
    assert ((ratio >= 10 ** (-12 / 20) - 1e-6) & (ratio <= 10 ** (12 / 20) + 1e-6)).all()
    assert out.abs().max() <= 1.0 + 1e-6 and len(set(ratio.tolist())) == 4
    with pytest.raises(ValueError, match="gain_jitter_db"):
        VQVAEConfig(encoder=EncoderConfig(gain_jitter_db=-1.0))

    model = tiny_vqvae(["a", "b"], seed=0, gain_jitter_db=12.0)
    plain = tiny_vqvae(["a", "b"], seed=0)
    speakers = torch.tensor([0, 1])
    x = wav[:2] * 0.5
    assert torch.equal(model.eval()(x, speakers).logits, plain.eval()(x, speakers).logits)
    seen = []
    encoder_forward = model.encoder.forward
    model.encoder.forward = lambda w: seen.append(w) or encoder_forward(w)
    out = model.train()(x, speakers)
    assert not torch.allclose(seen[0], x) and torch.allclose(seen[0] / seen[0].abs().amax(dim=(1, 2), keepdim=True),
                                                             x / x.abs().amax(dim=(1, 2), keepdim=True), atol=1e-6)
    rec = torch.nn.functional.cross_entropy(out.logits.float(), mu_law_encode(x[:, 0]))
    assert torch.allclose(out.reconstruction_loss, rec, atol=1e-5)  # the targets keep the level
