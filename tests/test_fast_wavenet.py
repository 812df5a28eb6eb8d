"""Fast WaveNet generation: the compiled (numba) loop and the device-step (CUDA graph) path
must give the same audio as the PyTorch incremental path when fed the same uniform noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_vqvae
from vqaudio.config import DecoderConfig
from vqaudio.model import VQVAE
from vqaudio.nn.fast_wavenet import FastWaveNet, export_weights, partition_streams, past_tap_blocks
from vqaudio.nn.wavenet import SILENCE, WaveNet

HOP = 64


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The torch reference path runs ~100 tiny ops per sample; on a shared machine intra-op
    threads only add waiting, so these tests run torch on one thread (restored afterwards)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def tiny_decoder(kernel_size: int = 2, speaker_channels: int = 4, num_speakers: int = 3, **kw) -> DecoderConfig:
    sizes = dict(residual_channels=8, gate_channels=16, skip_channels=8, local_channels=8)
    sizes.update(kw)
    return DecoderConfig(num_stacks=2, layers_per_stack=5, kernel_size=kernel_size,
                         speaker_channels=speaker_channels, num_speakers=num_speakers, **sizes)


def make_net(cfg: DecoderConfig, seed: int = 0) -> WaveNet:
    torch.manual_seed(seed)
    net = WaveNet(cfg, HOP).eval()
    with torch.no_grad():  # larger than the init so that the logits are far from uniform
        for p in net.parameters():
            p.mul_(2.0)
    return net


def teacher_forced_logits(net: WaveNet, samples: torch.Tensor, local: torch.Tensor, speaker: torch.Tensor) -> np.ndarray:
    """[B, T, Q] logits of forward() given the generated samples as the previous inputs."""
    inputs = torch.nn.functional.pad(samples[:, :-1], (1, 0), value=SILENCE)
    with torch.no_grad():
        return net(inputs, local, speaker).transpose(1, 2).numpy()


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_numba_equals_torch_on_the_same_noise(kernel_size, temperature):
    net = make_net(tiny_decoder(kernel_size))
    frames = 5  # 320 steps, past the 2 * (1 + ... + 16) * (k - 1) + 1 receptive field
    local = torch.randn(2, 8, frames)
    speaker = torch.tensor([2, 0])
    noise = torch.rand(2, frames * HOP, generator=torch.Generator().manual_seed(1))
    ref = net.generate(local, speaker, temperature=temperature, noise=noise)
    samples, logits = FastWaveNet(net).generate(
        list(local), speaker, list(noise), temperature=temperature, record_logits=frames * HOP
    )
    got = torch.from_numpy(np.stack(samples))
    assert got.dtype == torch.int64 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert len(torch.unique(got)) > (10 if temperature else 1)  # not vacuous: the output varies
    np.testing.assert_allclose(logits, teacher_forced_logits(net, ref, local, speaker), rtol=1e-4, atol=1e-4)


def test_numba_equals_torch_default_size_decoder():
    cfg = DecoderConfig(num_speakers=4)  # 2 x 10 layers, R=64, G=128, S=64, Q=256
    net = make_net(cfg, seed=3)
    frames = 4  # 256 steps
    local = torch.randn(1, cfg.local_channels, frames)
    speaker = torch.tensor([3])
    noise = torch.rand(1, frames * HOP, generator=torch.Generator().manual_seed(2))
    ref = net.generate(local, speaker, noise=noise)
    samples, logits = FastWaveNet(net).generate(list(local), speaker, list(noise), record_logits=frames * HOP)
    torch.testing.assert_close(torch.from_numpy(samples[0]), ref[0], rtol=0, atol=0)
    assert len(torch.unique(ref)) > 10
    np.testing.assert_allclose(logits, teacher_forced_logits(net, ref, local, speaker), rtol=1e-4, atol=1e-4)


def test_batched_streams_equal_individual_ones():
    """Streams of different lengths and speakers, split over 2 threads, give what each gives alone."""
    net = make_net(tiny_decoder(3))
    fast = FastWaveNet(net)
    gen = torch.Generator().manual_seed(4)
    frames = [3, 6, 1, 4, 2]
    local = [torch.randn(8, f, generator=gen) for f in frames]
    speaker = [0, 2, 1, 1, 0]
    noise = [torch.rand(f * HOP, generator=gen) for f in frames]
    together, _ = fast.generate(local, speaker, noise, temperature=0.8, num_threads=2, chunk_frames=2)
    for b in range(len(frames)):
        alone, _ = fast.generate([local[b]], [speaker[b]], [noise[b]], temperature=0.8, num_threads=1)
        assert together[b].shape == (frames[b] * HOP,)
        np.testing.assert_array_equal(together[b], alone[0])
        ref = net.generate(local[b][None], torch.tensor([speaker[b]]), temperature=0.8, noise=noise[b][None])
        np.testing.assert_array_equal(together[b], ref[0].numpy())


def test_without_speaker_embedding():
    net = make_net(tiny_decoder(2, speaker_channels=0, num_speakers=1))
    local = torch.randn(1, 8, 3)
    noise = torch.rand(1, 3 * HOP)
    ref = net.generate(local, torch.tensor([0]), noise=noise)
    samples, _ = FastWaveNet(net).generate(list(local), [0], list(noise))
    np.testing.assert_array_equal(samples[0], ref[0].numpy())


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_device_steps_equal_torch_incremental(kernel_size):
    """The CUDA-graph path's device-side steps, run eagerly on the CPU."""
    net = make_net(tiny_decoder(kernel_size))
    local = torch.randn(3, 8, 4)
    speaker = torch.tensor([1, 0, 2])
    noise = torch.rand(3, 4 * HOP)
    ref = net.generate(local, speaker, temperature=0.9, noise=noise)
    got = net.generate_static(local, speaker, temperature=0.9, noise=noise)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="CUDA device"):
        net.generate_static(local, speaker, noise=noise, cuda_graph=True)


def two_speaker_vqvae() -> VQVAE:
    return tiny_vqvae(["alice", "bob"], num_stacks=2, layers_per_stack=5)


def test_decode_methods_agree_and_batch_equals_rows():
    model = two_speaker_vqvae()
    codes = torch.randint(0, 16, (2, 3), generator=torch.Generator().manual_seed(0))
    outs = {}
    for method in ("auto", "numba", "torch"):
        outs[method] = model.decode(codes, ["bob", "alice"], generator=torch.Generator().manual_seed(5), method=method)
        assert outs[method].shape == (2, 1, 3 * HOP) and outs[method].dtype == torch.float32
    torch.testing.assert_close(outs["numba"], outs["torch"], rtol=0, atol=0)
    torch.testing.assert_close(outs["auto"], outs["numba"], rtol=0, atol=0)
    # decode_batch draws the same noise stream after stream, so rows of equal length match
    rows = model.decode_batch(list(codes), ["bob", "alice"], generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(torch.stack(rows), outs["numba"], rtol=0, atol=0)
    # different lengths: each utterance as if decoded alone with its own noise
    batch = [codes[0], codes[1, :1], codes[1]]
    noise = [torch.rand(len(c) * HOP) for c in batch]
    for method in ("numba", "torch"):
        wavs = model.decode_batch(batch, [1, 0, 0], noise=noise, method=method)
        for c, u, w, s in zip(batch, noise, wavs, [1, 0, 0]):
            assert w.shape == (1, len(c) * HOP)
            torch.testing.assert_close(w, model.decode(c, s, noise=u, method="torch")[0], rtol=0, atol=0)


def test_decode_rejects_bad_requests():
    model = two_speaker_vqvae()
    codes = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown decode method"):
        model.decode(codes, 0, method="fastest")
    with pytest.raises(ValueError, match="CUDA device"):
        model.decode(codes, 0, method="cuda")
    with pytest.raises(ValueError, match="temperature"):
        model.decode(codes, 0, temperature=-1.0)
    with pytest.raises(ValueError, match="noise must be"):
        model.decode(codes, 0, noise=torch.rand(1, 10))
    with pytest.raises(ValueError, match="codes must lie"):
        model.decode(torch.full((1, 2), 16), 0, method="numba")


def test_unsupported_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="kernel_size >= 2"):
        export_weights(WaveNet(tiny_decoder(1), HOP))
    net = make_net(tiny_decoder(2))
    fast = FastWaveNet(net)
    with pytest.raises(ValueError, match="speaker ids"):
        fast.generate([torch.zeros(8, 1)], [3], [torch.rand(HOP)])
    with pytest.raises(ValueError, match="noise values"):
        fast.generate([torch.zeros(8, 2)], [0], [torch.rand(HOP)])
    with pytest.raises(ValueError, match=r"\[8, frames\]"):
        fast.generate([torch.zeros(7, 2)], [0], [torch.rand(2 * HOP)])


def test_partition_streams_balances_total_length():
    order, ptr = partition_streams([100, 300, 200, 100], 2)
    groups = [order[ptr[g] : ptr[g + 1]].tolist() for g in range(2)]
    assert groups == [[1, 3], [2, 0]]
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    order, ptr = partition_streams([5, 7], 8)  # never more groups than streams
    assert len(ptr) == 3


def test_past_tap_blocks():
    assert past_tap_blocks([1, 2, 4, 8, 16, 512], 64).tolist() == [1, 2, 4, 8, 8, 8]
    assert past_tap_blocks([1, 2, 4, 8, 16], 12).tolist() == [1, 2, 4, 4, 4]  # must divide the hop
    assert past_tap_blocks([3, 6, 12, 24], 64).tolist() == [1, 2, 4, 8]  # and the dilation


def test_multiply_adds_per_sample_counts_the_weights_used_per_sample():
    from vqaudio.nn.fast_wavenet import multiply_adds_per_sample

    net = WaveNet(DecoderConfig(num_speakers=4), HOP)
    cfg = net.cfg
    per_sample = sum(layer.conv.weight.numel() + layer.out.weight.numel() for layer in net.layers)
    per_sample += sum(m.weight.numel() for m in net.head if isinstance(m, torch.nn.Conv1d))
    per_frame = sum(layer.cond.weight[:, : cfg.local_channels].numel() for layer in net.layers)
    assert multiply_adds_per_sample(net) == per_sample + per_frame // HOP == 514_560
