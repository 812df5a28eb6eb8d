"""Compiled WaveNet generation on the CPU (numba): the whole per-sample recursion in one loop.

Fast WaveNet generation (Paine et al. 2016): each dilated layer keeps a ring buffer ("queue")
of its past inputs, so one output sample costs one pass through the layers (about 0.5 M
multiply-adds with the default decoder) instead of a pass over the 2047-sample receptive
field. :meth:`WaveNet.generate <vqaudio.nn.wavenet.WaveNet.generate>` does the same in
PyTorch, where each step costs over a hundred operator dispatches; here the loop over
samples, layers and streams is compiled by numba, so a step costs its arithmetic only.

Per sample and stream (utterance), with ``t`` the sample index and ``f = t // hop_length``:

1. ``h = embed[prev]``; for each layer ``l`` with dilation ``d`` and kernel size ``k``:
   ``a = W_l [h, q_l(t - d), ..., q_l(t - (k-1) d)] + c_l[f]``, where ``q_l`` is the layer's
   ring buffer of past inputs and ``c_l`` its conditioning (code vector and speaker embedding
   projected **once per code frame**, conv bias included);
   ``g = tanh(a[:G/2]) * sigmoid(a[G/2:])`` (WaveNet Eq. 3);
   ``[r, s] = W_out g + b_out`` (residual and skip 1x1 convs fused in one matrix);
   ``h = (h + r) / sqrt(2)``; ``skip += s``.
2. ``logits = W_2 relu(W_1 relu(skip) + b_1) + b_2``; the sample is drawn by inverse CDF from
   ``softmax(logits / temperature)`` with one uniform number (the rule of
   :func:`vqaudio.nn.wavenet.sample_from_logits`), or is the argmax when the temperature is 0.

Several streams, each with its own length and speaker, run in one call. They are split into
groups of about equal total length, one per thread; the compiled loop releases the GIL, so
the groups run in parallel on plain Python threads with no synchronisation between them
(one ``numba.prange`` over the groups would do the same, but compiles the loop a second time
for the parallel backend and pulls in an OpenMP runtime beside PyTorch's). Within a group
every weight matrix is read once per step for all of the group's running streams, so
throughput grows faster than the thread count.

No activations are copied between layers: a group's ring buffers are one array
``[queue_rows, streams, R]`` whose rows are the matrix kernels' inputs as they stand. The input
embedding writes layer 0's row of the step, each layer's residual output goes straight into
the next layer's row, and the past taps are read from earlier rows in place (a layer's buffer
has ``(k - 1) d + n`` rows, so the rows a block of ``n`` steps reads are contiguous and never
the ones it writes).

Past taps in blocks: a layer of dilation ``d`` reads, during ``n <= d`` consecutive steps,
only inputs from before the first of them, so its past-tap products (and the conditioning)
for those steps are computed together at the block's start, as one matrix product with
``n`` rows per stream (``n`` = the largest power of two <= min(d, 8) that divides the hop
length and ``d``); per step only the current tap remains. With the default dilations this reads about
a quarter fewer weight bytes per sample.

Speed: one weight-matrix-times-activations product per layer and stage is done by small
register-blocked kernels written in LLVM IR (``_make_microkernel``): 16-float vectors of
output accumulators stay in registers while the input index runs, so there is no horizontal
reduction and each weight vector loaded serves up to four streams. Weights are float32,
stored input-major in panels of 32 output columns (the transpose of PyTorch's ``[N, K]``,
see :class:`FastWaveNetWeights`). tanh, sigmoid and exp use polynomial/rational
approximations accurate to a few float32 ulps that vectorize. One stream is bound by
streaming about 1.6 MB of weights from the L3 cache each sample (2 MB in all; 1 MB of L2 per
core holds half). With four streams per thread the matrix kernels run at the FMA units' peak
(about 110 GFLOP/s per Zen 4 core, measured alone), and a whole step at about 80% of it; a
profile (perf) puts about 84% of a step in the matrix kernels, 6% in the gates, 3% in
sampling; weight reads from L3 at the start of each product take most of the rest.
The kernels prefetch each weight panel ``PREFETCH_ROWS`` rows ahead of the row in use; with
two threads streaming weights from the shared L3 this gave about 5% more throughput.
Compiled code is cached on disk (``cache=True``): only the first run in an environment pays
the compile time (tens of seconds).

Shapes use B streams, T samples, T' = T // hop_length frames, L layers, R residual channels,
G gate channels (H = G / 2), S skip channels, Q mu-law values, D local conditioning channels,
P speaker embedding channels; ``X~`` is X rounded up to a multiple of 32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from vqaudio._system import available_cores
from vqaudio.nn.wavenet import SILENCE, WaveNet

try:  # numba is a dependency, but the torch paths must keep working without it.
    import numba
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

__all__ = [
    "FastWaveNet",
    "FastWaveNetWeights",
    "export_weights",
    "matrix_kernel_gflops",
    "multiply_adds_per_sample",
    "numba_available",
    "partition_streams",
    "past_tap_blocks",
]

#: float32 lanes per vector in the compiled matrix kernels.
LANES = 16
#: Output columns per weight panel: matrices are stored as [N / PANEL, K, PANEL] panels (GEMM
#: packing), so that a kernel computing PANEL columns reads its weights sequentially.
PANEL = 32
#: Most steps whose past-tap products are computed together (see the module docstring).
PAST_TAP_BLOCK = 8
#: Rows of a weight panel ahead of the one in use that the matrix kernels prefetch.
PREFETCH_ROWS = 16


def past_tap_blocks(dilations: Sequence[int], hop_length: int, most: int = PAST_TAP_BLOCK) -> np.ndarray:
    """Per layer, how many steps' past-tap products are computed at once: the largest power of
    two that is at most ``min(dilation, most)`` and divides both ``hop_length`` and the
    dilation (1: every step). Dividing the dilation keeps a block's rows of the layer's ring
    buffer contiguous (see :class:`FastWaveNetWeights`, ``queue_length``).

    Example: dilations ``1, 2, 4, 8, 16`` with hop 64 -> ``1, 2, 4, 8, 8``; dilation 6 -> 2.
    """
    out = []
    for d in dilations:
        n = 1
        while n * 2 <= min(int(d), most) and hop_length % (n * 2) == 0 and int(d) % (n * 2) == 0:
            n *= 2
        out.append(n)
    return np.array(out, dtype=np.int64)


def numba_available() -> bool:
    """Whether the compiled generation path can be used (numba is importable)."""
    return numba is not None


def _round_up(n: int, m: int = PANEL) -> int:
    return -(-n // m) * m


def _aligned_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros, C-contiguous, starting on a 64-byte (cache line) boundary, so that the
    16-float vector loads of the compiled kernels never straddle two lines."""
    size = int(np.prod(shape))
    buf = np.zeros(size + LANES, np.float32)
    start = (-buf.ctypes.data % 64) // 4
    return buf[start : start + size].reshape(shape)


def _aligned(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A copy of ``x`` as by :func:`_aligned_zeros` (float32, C-contiguous, 64-byte aligned)."""
    x = np.asarray(x.detach().to("cpu", torch.float32).numpy() if isinstance(x, torch.Tensor) else x, np.float32)
    out = _aligned_zeros(x.shape)
    out[...] = x
    return out


@dataclass(frozen=True)
class FastWaveNetWeights:
    """A WaveNet's weights as contiguous float32 numpy arrays in the compiled loop's layout.

    A matrix ``y = W x`` (PyTorch's ``[N, K]`` weight) is stored as panels ``[N~ / 32, K, 32]``:
    panel ``p`` holds output columns ``32 p .. 32 p + 31`` input-major, so a kernel computing
    32 outputs reads its weights sequentially. N is zero-padded to a multiple of 32, N~ (the
    padded outputs are never read). Shapes below give the unpacked ``[K, N~]``.

    Attributes:
        embed: [Q, R] input embedding.
        embed_prediction: [Q, R] embedding of the linear prediction's mu-law value (with
            ``lpc_order`` > 0; else [0, R]).
        conv_now: [L, R, G~] dilated conv, the tap on the layer's current input.
        conv_past: [L, k-1, R, G~] its other taps: ``conv_past[l, j-1]`` multiplies the
            layer's input ``j * dilation`` samples back.
        conv_bias: [L, G~].
        cond_local: [L, D, G~] projection of the local conditioning (the code vectors).
        cond_speaker: [L, P, G~] projection of the speaker embedding (P may be 0), not packed
            (used once per call, by numpy).
        out: [L, H, (R + S)~] fused residual (columns ``:R``) and skip (``R:R+S``) 1x1 convs.
        out_bias: [L, (R + S)~].
        head1, head1_bias, head2, head2_bias: [S, S~], [S~], [S, Q~], [Q~] output head.
        speaker_embedding: [num_speakers, P].
        dilations: [L] int64.
        past_tap_block: [L] int64, steps whose past taps are computed together
            (:func:`past_tap_blocks`).
        queue_length: [L] int64, rows of each layer's ring buffer:
            ``(kernel_size - 1) * dilation + past_tap_block``, so that the rows a block of
            steps reads and the rows it writes never overlap, and a block's rows of one tap
            are contiguous.
        queue_offset: [L] int64, first row of each layer's ring buffer in the queue array
            (``queue_rows`` rows in all).
        kernel_size, hop_length, queue_rows, residual_channels, skip_channels,
        quantization_channels, lpc_order: ints.
    """

    embed: np.ndarray
    embed_prediction: np.ndarray
    conv_now: np.ndarray
    conv_past: np.ndarray
    conv_bias: np.ndarray
    cond_local: np.ndarray
    cond_speaker: np.ndarray
    out: np.ndarray
    out_bias: np.ndarray
    head1: np.ndarray
    head1_bias: np.ndarray
    head2: np.ndarray
    head2_bias: np.ndarray
    speaker_embedding: np.ndarray
    dilations: np.ndarray
    past_tap_block: np.ndarray
    queue_length: np.ndarray
    queue_offset: np.ndarray
    kernel_size: int
    hop_length: int
    queue_rows: int
    residual_channels: int
    skip_channels: int
    quantization_channels: int
    lpc_order: int = 0


def export_weights(wavenet: WaveNet) -> FastWaveNetWeights:
    """Copy a :class:`WaveNet`'s weights into the compiled loop's layout (float32, CPU).

    Raises:
        ValueError: an architecture the compiled loop does not implement (kernel_size < 2,
            or an output head that is not ReLU-1x1-ReLU-1x1).
    """
    cfg = wavenet.cfg
    k = cfg.kernel_size
    if k < 2:
        raise ValueError(f"the compiled WaveNet needs kernel_size >= 2, got {k}")
    head = list(wavenet.head)
    if len(head) != 4 or not isinstance(head[0], torch.nn.ReLU) or not isinstance(head[2], torch.nn.ReLU):
        raise ValueError("the compiled WaveNet expects a ReLU-1x1-ReLU-1x1 output head")
    D, R, S = cfg.local_channels, cfg.residual_channels, cfg.skip_channels

    def io(w: torch.Tensor) -> np.ndarray:
        """[..., N, K] torch weight -> [..., K, N~] float32, zero-padded outputs."""
        w = w.detach().to("cpu", torch.float32).transpose(-1, -2)
        return _aligned(torch.nn.functional.pad(w, (0, _round_up(w.shape[-1]) - w.shape[-1])))

    def panels(w: torch.Tensor) -> np.ndarray:
        """[..., N, K] torch weight -> [..., N~ / 32, K, 32] float32 panels."""
        w = w.detach().to("cpu", torch.float32)
        w = torch.nn.functional.pad(w, (0, 0, 0, _round_up(w.shape[-2]) - w.shape[-2]))  # [..., N~, K]
        w = w.reshape(*w.shape[:-2], w.shape[-2] // PANEL, PANEL, w.shape[-1]).transpose(-1, -2)
        return _aligned(w)

    def vec(b: torch.Tensor) -> np.ndarray:
        b = b.detach().to("cpu", torch.float32)
        return _aligned(torch.nn.functional.pad(b, (0, _round_up(b.shape[-1]) - b.shape[-1])))

    conv_now, conv_past, conv_bias, cond_local, cond_speaker, out, out_bias = [], [], [], [], [], [], []
    for layer in wavenet.layers:
        w = layer.conv.weight.detach()  # [G, R, k]; tap k-1 multiplies the current input
        conv_now.append(w[:, :, k - 1])  # [G, R]
        conv_past.append(torch.stack([w[:, :, k - 1 - j] for j in range(1, k)]))  # [k-1, G, R]
        conv_bias.append(layer.conv.bias.detach())
        c = layer.cond.weight.detach()[:, :, 0]  # [G, D + P]
        cond_local.append(c[:, :D])
        cond_speaker.append(c[:, D:])
        out.append(layer.out.weight.detach()[:, :, 0])  # [R + S, H]
        out_bias.append(layer.out.bias.detach())
    dilations = np.array(cfg.dilations, dtype=np.int64)
    blocks = past_tap_blocks(dilations, wavenet.hop_length)
    rows = (k - 1) * dilations + blocks
    offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    if wavenet.speaker_embedding is not None:
        spk = np.ascontiguousarray(wavenet.speaker_embedding.weight.detach().to("cpu", torch.float32).numpy())
    else:
        spk = np.zeros((max(cfg.num_speakers, 1), 0), np.float32)
    h1, h2 = head[1], head[3]
    return FastWaveNetWeights(
        embed=_aligned(wavenet.embed.weight),
        embed_prediction=(_aligned(wavenet.embed_prediction.weight) if wavenet.embed_prediction is not None
                          else np.zeros((0, R), np.float32)),
        conv_now=panels(torch.stack(conv_now)),
        conv_past=panels(torch.stack(conv_past)),
        conv_bias=vec(torch.stack(conv_bias)),
        cond_local=panels(torch.stack(cond_local)),
        cond_speaker=io(torch.stack(cond_speaker)),
        out=panels(torch.stack(out)),
        out_bias=vec(torch.stack(out_bias)),
        head1=panels(h1.weight[:, :, 0]),
        head1_bias=vec(h1.bias),
        head2=panels(h2.weight[:, :, 0]),
        head2_bias=vec(h2.bias),
        speaker_embedding=spk,
        dilations=dilations,
        past_tap_block=blocks,
        queue_length=rows,
        queue_offset=offsets,
        kernel_size=k,
        hop_length=wavenet.hop_length,
        queue_rows=int(rows.sum()),
        residual_channels=R,
        skip_channels=S,
        quantization_channels=cfg.quantization_channels,
        lpc_order=cfg.lpc_order,
    )


def partition_streams(lengths: Sequence[int], groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Split streams into ``groups`` groups of about equal total length (longest first).

    Args:
        lengths: [B] samples to generate per stream.
        groups: number of groups (threads), >= 1; capped at B.

    Returns:
        ``order`` [B] int64 stream indices, group by group, each group sorted by decreasing
        length (so the streams still running at any step are a prefix of their group), and
        ``group_ptr`` [groups + 1] int64: group ``g`` is ``order[group_ptr[g]:group_ptr[g+1]]``.

    Example: lengths ``[100, 300, 200, 100]`` in 2 groups -> groups ``[1, 3]`` and ``[2, 0]``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    groups = max(1, min(int(groups), len(lengths)))
    members: list[list[int]] = [[] for _ in range(groups)]
    load = np.zeros(groups, dtype=np.int64)
    for i in np.argsort(-lengths, kind="stable"):  # longest processing time first
        g = int(np.argmin(load))
        members[g].append(int(i))
        load[g] += lengths[i]
    order = np.array([i for m in members for i in m], dtype=np.int64)
    group_ptr = np.concatenate([[0], np.cumsum([len(m) for m in members])]).astype(np.int64)
    return order, group_ptr


class FastWaveNet:
    """Compiled (numba, CPU) sampler over a trained :class:`WaveNet`'s weights.

    Gives the same samples as ``WaveNet.generate`` when fed the same uniform noise: the logits
    agree to float32 rounding (about 1e-6), so a sample can differ only where the noise falls
    that close to an edge of the CDF.

    Args:
        wavenet: the trained decoder; its weights are copied (later changes are not seen).

    Raises:
        RuntimeError: numba is not installed.
        ValueError: an architecture the compiled loop does not implement (kernel_size < 2).
    """

    def __init__(self, wavenet: WaveNet):
        if numba is None:
            raise RuntimeError("the compiled WaveNet needs numba (pip install numba)")
        self.weights = export_weights(wavenet)
        self.cfg = wavenet.cfg

    def generate(
        self,
        local: Sequence[np.ndarray | torch.Tensor],
        speaker: Sequence[int] | np.ndarray | torch.Tensor,
        noise: Sequence[np.ndarray | torch.Tensor],
        temperature: float = 1.0,
        num_threads: int | None = None,
        record_logits: int = 0,
        progress: bool = False,
        chunk_frames: int = 125,
        lpc: Sequence[np.ndarray | torch.Tensor] | None = None,
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Generate several utterances at once, each with its own length and speaker.

        Args:
            local: B arrays [D, T'_b] float32, the quantized latents (code vectors) per frame.
            speaker: B speaker ids in [0, num_speakers).
            noise: B arrays [T'_b * hop_length] float32 uniform in [0, 1), one per sample.
            temperature: softmax temperature (>= 0); 0 picks the most likely value.
            num_threads: threads to run on (the streams are split into this many groups);
                default: the cores this process may use. Capped at B.
            record_logits: also return the logits of the first ``record_logits`` samples of
                every stream (for testing).
            progress: show a tqdm progress bar (in samples of the longest stream).
            chunk_frames: frames per compiled call between progress updates.
            lpc: with linear prediction (``lpc_order`` P > 0), B arrays [T'_b, P] of prediction
                coefficients per frame; else None.

        Returns:
            ``(samples, logits)``: B int64 arrays [T'_b * hop_length] of mu-law values in
            [0, Q) (with linear prediction: float32 samples ``s_t = p_t + e_t`` in [-1, 1]),
            and [B, record_logits, Q] float32 (``None`` when ``record_logits`` is 0; rows past
            a stream's length are zero; with linear prediction the excitation's logits).

        Raises:
            ValueError: mismatched counts, shapes or speaker ids, a temperature < 0, or
                ``lpc`` missing with linear prediction, given without it, or of the wrong shape.
        """
        W = self.weights
        hop = W.hop_length
        B = len(local)
        speaker = np.asarray(speaker.cpu() if isinstance(speaker, torch.Tensor) else speaker, dtype=np.int64).reshape(-1)
        if len(speaker) != B or len(noise) != B:
            raise ValueError(f"{B} local arrays, {len(speaker)} speakers and {len(noise)} noise arrays given")
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        D = W.cond_local.shape[2]
        locals_ = [_as_f32(x) for x in local]
        noises = [_as_f32(u).reshape(-1) for u in noise]
        for b, x in enumerate(locals_):
            if x.ndim != 2 or x.shape[0] != D:
                raise ValueError(f"stream {b}: local conditioning must be [{D}, frames], got {list(x.shape)}")
            if noises[b].shape[0] != x.shape[1] * hop:
                raise ValueError(f"stream {b}: {noises[b].shape[0]} noise values for {x.shape[1] * hop} samples")
        P = W.lpc_order
        if (lpc is None) != (P == 0):
            raise ValueError(f"prediction coefficients are needed exactly when the decoder has linear prediction "
                             f"(lpc_order {P})")
        lpcs = [] if lpc is None else [np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, np.float64) for x in lpc]
        if lpc is not None and (len(lpcs) != B or any(c.shape != (x.shape[1], P) for c, x in zip(lpcs, locals_))):
            raise ValueError(f"prediction coefficients must be {B} arrays [frames, {P}], got "
                             f"{[list(c.shape) for c in lpcs]}")
        num_speakers = W.speaker_embedding.shape[0]
        if speaker.size and (speaker.min() < 0 or speaker.max() >= num_speakers):
            raise ValueError(f"speaker ids must lie in [0, {num_speakers}), got {speaker.tolist()}")
        frames = np.array([x.shape[1] for x in locals_], dtype=np.int64)
        lengths = frames * hop
        Q = W.quantization_channels
        rec = max(0, int(record_logits))
        logits_out = np.zeros((B, rec, Q), np.float32)
        max_frames = int(frames.max()) if B else 0
        T = max_frames * hop
        if T == 0:
            dtype = np.float32 if P else np.int64
            return [np.zeros(int(n), dtype) for n in lengths], (logits_out if rec else None)

        local_arr = np.zeros((B, max_frames, D), np.float32)  # one frame's vector contiguous
        noise_arr = np.zeros((B, T), np.float32)
        for b in range(B):
            local_arr[b, : frames[b]] = locals_[b].T
            noise_arr[b, : lengths[b]] = noises[b]
        lpc_arr = np.zeros((B, max_frames, P), np.float64)  # linear prediction (P = 0: none)
        for b, c in enumerate(lpcs):
            lpc_arr[b, : frames[b]] = c
        history = np.zeros((B, P), np.float64)  # the last P samples, the most recent first
        prediction = np.zeros(B, np.float64)
        signal = np.zeros((B, T if P else 0), np.float32)
        # speaker projection plus conv bias: per stream and layer, constant over time
        spk_bias = W.conv_bias[None] + np.einsum("lpg,bp->blg", W.cond_speaker, W.speaker_embedding[speaker])
        spk_bias = _aligned(spk_bias)

        threads = available_cores() if num_threads is None else int(num_threads)
        if threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        order, group_ptr = partition_streams(lengths, threads)
        groups = [order[group_ptr[g] : group_ptr[g + 1]] for g in range(len(group_ptr) - 1)]
        # per group, its streams' ring buffers interleaved: row r is [streams, R]
        queues = [_aligned_zeros((W.queue_rows, len(m), W.residual_channels)) for m in groups]
        prev = np.full(B, SILENCE, np.int64)
        out = np.zeros((B, T), np.int64)
        temperature32 = np.float32(temperature)
        step = max(1, int(chunk_frames)) * hop
        done = np.zeros(len(groups), np.int64)  # samples generated per group, for the progress bar
        stop = []  # set by the caller's thread on KeyboardInterrupt; checked between chunks

        def run(g: int) -> None:
            members = groups[g]
            longest = int(lengths[members].max())
            try:
                for t0 in range(0, longest, step):
                    if stop:
                        return
                    t1 = min(longest, t0 + step)
                    _run_group(
                        W.embed, W.conv_now, W.conv_past, W.cond_local, W.out, W.out_bias,
                        W.head1, W.head1_bias, W.head2, W.head2_bias,
                        W.dilations, W.past_tap_block, W.queue_length, W.queue_offset, W.kernel_size, hop,
                        W.skip_channels, Q, local_arr, spk_bias, lengths, noise_arr, temperature32,
                        members, queues[g], prev, out, logits_out, t0, t1,
                        W.embed_prediction, lpc_arr, history, prediction, signal,
                    )
                    done[g] += int(np.clip(lengths[members], t0, t1).sum() - t0 * len(members))
            except BaseException:
                stop.append(True)
                raise

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(lengths.sum()), desc="decode", unit="sample", unit_scale=True, leave=False)
        try:
            if len(groups) == 1:
                run(0)
            else:  # the compiled loop releases the GIL: one Python thread per group of streams
                with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="vqaudio-decode") as pool:
                    futures = [pool.submit(run, g) for g in range(len(groups))]
                    try:
                        pending = futures
                        while pending:
                            _, pending = wait(pending, timeout=0.25)
                            if bar is not None:
                                bar.update(int(done.sum()) - bar.n)
                    except BaseException:
                        stop.append(True)
                        raise
                    for f in futures:
                        f.result()  # re-raise a worker's error
            if bar is not None:
                bar.update(int(done.sum()) - bar.n)
        finally:
            if bar is not None:
                bar.close()
        samples = [(signal if P else out)[b, : lengths[b]].copy() for b in range(B)]
        return samples, (logits_out if rec else None)


def multiply_adds_per_sample(wavenet: WaveNet) -> int:
    """Multiply-adds the compiled loop does per generated sample of one stream.

    Per layer the dilated conv (``k R G``) and the fused residual/skip 1x1 conv
    (``H (R + S)``), plus the output head (``S S + S Q``) and the local conditioning
    projected once per frame (``L D G / hop_length``). Default decoder: 514,560.
    """
    c = wavenet.cfg
    R, G, S, Q, D = c.residual_channels, c.gate_channels, c.skip_channels, c.quantization_channels, c.local_channels
    L = len(c.dilations)
    per_layer = c.kernel_size * R * G + (G // 2) * (R + S)
    return L * per_layer + S * S + S * Q + L * D * G // wavenet.hop_length


def matrix_kernel_gflops(inputs: int, outputs: int, streams: int, seconds: float = 0.3) -> float:
    """GFLOP/s of the compiled loop's matrix product ``y = W x`` alone, for ``streams`` rows
    and a ``[outputs, inputs]`` weight that stays in the L1/L2 cache (random values).

    Compared with the whole generation loop's rate (:func:`multiply_adds_per_sample` times
    samples per second), it shows how much of a step is spent outside the matrix products
    (``tools/bench_generate.py`` prints both). Runs on the calling thread.

    Raises:
        RuntimeError: numba is not installed.
    """
    if numba is None:
        raise RuntimeError("the compiled WaveNet needs numba (pip install numba)")
    rng = np.random.default_rng(0)
    W = _aligned(rng.standard_normal((_round_up(outputs) // PANEL, inputs, PANEL)).astype(np.float32))
    X = _aligned(rng.standard_normal((streams, inputs)).astype(np.float32))
    Y = _aligned_zeros((streams, _round_up(outputs)))
    bias = _aligned_zeros((_round_up(outputs),))
    _repeat_gemm(W, X, Y, bias, streams, 10)  # compile or load, warm the caches
    reps, elapsed = 1000, 0.0
    while elapsed < seconds:
        reps *= 4
        t0 = time.perf_counter()
        _repeat_gemm(W, X, Y, bias, streams, reps)
        elapsed = time.perf_counter() - t0
    return 2.0 * inputs * outputs * streams * reps / elapsed / 1e9


def _as_f32(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


# ----- the compiled loop -------------------------------------------------------------------


def _make_microkernel(streams: int, vectors: int):
    """A numba intrinsic ``k(W, X, Y, bias, b0, o0) -> None`` computing, in registers,

    ``Y[b, o0:o0+16v] = bias[(b,) o0:o0+16v] + sum_i X[b, i] * W[i, o0:o0+16v]``

    for the ``streams`` rows ``b = b0 .. b0+streams-1`` and ``v = vectors`` 16-float vectors.
    W: panels [N / 32, K, 32] (see :class:`FastWaveNetWeights`), X: [*, >=K], Y: [*, N],
    bias: [N] or [M, N] (row ``b`` uses bias row ``b % M``), all float32 C-contiguous; ``o0``
    a multiple of 16. ``streams *
    vectors`` accumulators stay in registers while ``i`` runs over K; each weight vector
    loaded serves every stream (a GEMM micro-kernel); the weights ``PREFETCH_ROWS`` rows ahead
    are prefetched (a prefetch past the end of W is harmless: it never faults). No bounds
    checks: the caller keeps every index in range.
    """

    @intrinsic
    def kernel(typingctx, W, X, Y, bias, b0, o0):
        for a in (W, X, Y, bias):
            if not (isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"):
                return None
        if W.ndim != 3 or X.ndim != 2 or Y.ndim != 2 or bias.ndim not in (1, 2):
            return None
        if not (isinstance(b0, types.Integer) and isinstance(o0, types.Integer)):
            return None
        per_stream_bias = bias.ndim == 2

        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            vec = ir.VectorType(ir.FloatType(), LANES)
            W_, X_, Y_, B_ = (context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:4], args[:4]))
            K = cgutils.unpack_tuple(builder, W_.shape, 3)[1]
            x_stride = cgutils.unpack_tuple(builder, X_.shape, 2)[1]
            y_stride = cgutils.unpack_tuple(builder, Y_.shape, 2)[1]
            if per_stream_bias:
                b_rows, b_stride = cgutils.unpack_tuple(builder, B_.shape, 2)
            row0 = context.cast(builder, args[4], sig.args[4], types.int64)
            col0 = context.cast(builder, args[5], sig.args[5], types.int64)
            fmuladd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.v{LANES}f32"
            )
            i8p = ir.IntType(8).as_pointer()
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3), "llvm.prefetch.p0"
            )

            def i32c(v: int):
                return ir.Constant(ir.IntType(32), v)

            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)

            def const(v: int):
                return ir.Constant(i64, v)

            def vptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

            def row_col(row_stride, r, j):  # offset of (row0 + r, col0 + 16 j)
                return builder.add(builder.mul(builder.add(row0, const(r)), row_stride), builder.add(col0, const(j * LANES)))

            # offset of W[0, o0 + 16 j]: panel (o0 + 16 j) // 32, column (o0 + 16 j) % 32
            w_base = []
            for j in range(vectors):
                col = builder.add(col0, const(j * LANES))
                panel = builder.udiv(col, const(PANEL))
                w_base.append(builder.add(builder.mul(builder.mul(panel, K), const(PANEL)), builder.urem(col, const(PANEL))))
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(vectors)] for _ in range(streams)]
            for r in range(streams):
                for j in range(vectors):
                    off = builder.add(col0, const(j * LANES))
                    if per_stream_bias:  # bias row (b0 + r) % rows: blocks of rows share a bias
                        b_row = builder.urem(builder.add(row0, const(r)), b_rows)
                        off = builder.add(builder.mul(b_row, b_stride), off)
                    builder.store(builder.load(vptr(B_.data, off), align=4), acc[r][j])
            with cgutils.for_range(builder, K) as loop:
                i = loop.index
                row = builder.mul(i, const(PANEL))
                w = [builder.load(vptr(W_.data, builder.add(w_base[j], row)), align=4) for j in range(vectors)]
                ahead = builder.add(row, const(PREFETCH_ROWS * PANEL))
                for j in range(vectors):
                    p8 = builder.bitcast(builder.gep(W_.data, [builder.add(w_base[j], ahead)]), i8p)
                    builder.call(prefetch, [p8, i32c(0), i32c(3), i32c(1)])
                for r in range(streams):
                    x_off = builder.add(builder.mul(builder.add(row0, const(r)), x_stride), i)
                    x = builder.load(builder.gep(X_.data, [x_off]))
                    xs = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0)), undef, splat)
                    for j in range(vectors):
                        builder.store(builder.call(fmuladd, [w[j], xs, builder.load(acc[r][j])]), acc[r][j])
            for r in range(streams):
                for j in range(vectors):
                    builder.store(builder.load(acc[r][j]), vptr(Y_.data, row_col(y_stride, r, j)), align=4)
            return context.get_dummy_value()

        return types.none(W, X, Y, bias, b0, o0), codegen

    return kernel


def _make_prefetch():
    """A numba intrinsic ``p(array, offset, write) -> None``: prefetch the cache line holding
    element ``offset`` of a C-contiguous array into all cache levels (``llvm.prefetch``);
    ``write`` (a compile-time bool literal) prefetches for writing."""

    @intrinsic
    def prefetch(typingctx, arr, offset, write):
        if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(offset, types.Integer)):
            return None
        if not isinstance(write, types.BooleanLiteral):
            return None
        rw = int(write.literal_value)

        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            off = context.cast(builder, args[1], sig.args[1], types.int64)
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
            )
            ptr = builder.bitcast(builder.gep(a.data, [off]), i8p)
            builder.call(fn, [ptr, ir.Constant(i32, rw), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.none(arr, offset, write), codegen

    return prefetch


if numba is not None:
    _prefetch = _make_prefetch()
    _k4x2 = _make_microkernel(4, 2)
    _k2x4 = _make_microkernel(2, 4)
    _k2x2 = _make_microkernel(2, 2)
    _k1x8 = _make_microkernel(1, 8)
    _k1x2 = _make_microkernel(1, 2)

    _njit = njit(fastmath=True, error_model="numpy", cache=True, nogil=True)

    @_njit
    def _gemm(W, X, Y, bias, n):
        """``Y[b, :] = bias[(b,) :] + X[b, :K] @ W`` for streams ``b < n``.

        W: panels [N / 32, K, 32]; X: [>=n, >=K]; Y: [>=n, N]; bias: [N], or [M, N] with row
        ``b % M`` for stream ``b``.
        Four streams at a time share each weight load; a lone stream uses 8 accumulators.
        """
        N = W.shape[0] * PANEL
        b = 0
        while b + 4 <= n:
            for o in range(0, N, 32):
                _k4x2(W, X, Y, bias, b, o)
            b += 4
        if b + 2 <= n:
            o = 0
            while o + 64 <= N:
                _k2x4(W, X, Y, bias, b, o)
                o += 64
            if o < N:
                _k2x2(W, X, Y, bias, b, o)
            b += 2
        if b < n:
            o = 0
            while o + 128 <= N:
                _k1x8(W, X, Y, bias, b, o)
                o += 128
            while o < N:
                _k1x2(W, X, Y, bias, b, o)
                o += 32

    @_njit
    def _repeat_gemm(W, X, Y, bias, n, reps):
        """``_gemm`` ``reps`` times (for :func:`matrix_kernel_gflops`)."""
        for _ in range(reps):
            _gemm(W, X, Y, bias, n)

    _TANH_CLAMP = np.float32(7.90531110763549805)

    @_njit
    def _tanh_ratio(x):
        """``(p, q)`` with ``tanh(x) = p / q``: Eigen's float32 rational approximation (a few
        ulps); q > 0. Returned unevaluated so that callers can share one division."""
        x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
        x2 = x * x
        p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
        p = x2 * p + np.float32(-8.60467152213735e-11)
        p = x2 * p + np.float32(5.12229709037114e-08)
        p = x2 * p + np.float32(1.48572235717979e-05)
        p = x2 * p + np.float32(6.37261928875436e-04)
        p = x2 * p + np.float32(4.89352455891786e-03)
        q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
        q = x2 * q + np.float32(2.26843463243900e-03)
        q = x2 * q + np.float32(4.89352518554385e-03)
        return x * p, q

    _LOG2E = np.float32(1.44269504088896341)
    _LN2_HI = np.float32(0.693359375)
    _LN2_LO = np.float32(-2.12194440e-4)

    @_njit
    def _sample(logits, Q, u, temperature, e, ebits):
        """Inverse-CDF draw from ``softmax(logits[:Q] / temperature)``; argmax if it is 0.

        Returns the first index whose cumulative probability reaches ``u`` times the total
        (``torch.searchsorted`` in :func:`vqaudio.nn.wavenet.sample_from_logits`).
        ``e`` [>=Q] float32 and ``ebits`` [>=Q] int32 are scratch. exp is Cephes' expf
        polynomial with the power of two built in the exponent bits (vectorizes).
        Each step is arranged to vectorize or to avoid long dependency chains: the maximum is a
        reduction, then the argmax (first index of the maximum, as ``torch.argmax``) a search;
        the cumulative sum is searched 8 values at a time, then value by value.
        """
        m = logits[0]
        for i in range(1, Q):
            m = max(m, logits[i])
        if temperature == 0:
            for i in range(Q):
                if logits[i] == m:
                    return i
            return 0
        scale = e.view(np.float32)  # e is float32 already; keeps the types explicit
        pow2 = ebits.view(np.float32)
        for i in range(Q):
            v = (logits[i] - m) / temperature
            v = np.float32(-87.0) if v < np.float32(-87.0) else v
            n = math.floor(v * _LOG2E + np.float32(0.5))
            r = v - n * _LN2_HI - n * _LN2_LO
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            scale[i] = p * r * r + r + np.float32(1.0)
            ebits[i] = (np.int32(n) + np.int32(127)) << 23
        total = 0.0
        for i in range(Q):
            scale[i] *= pow2[i]
            total += scale[i]
        threshold = u * total
        c = 0.0
        i = 0
        while i + 8 <= Q:  # chunk sums do not depend on each other: no serial chain of adds
            chunk = 0.0
            for j in range(i, i + 8):
                chunk += scale[j]
            if c + chunk >= threshold:
                break
            c += chunk
            i += 8
        while i < Q:
            c += scale[i]
            if c >= threshold:
                return i
            i += 1
        return Q - 1

    @_njit
    def _mu_encode64(x, Q):
        """:func:`vqaudio.nn.lpc.mu_law_encode64` of one float64 value."""
        mu = Q - 1
        v = 1.0 if x > 1.0 else (-1.0 if x < -1.0 else x)
        y = math.log1p(mu * abs(v)) / math.log1p(mu)
        if v < 0:
            y = -y
        return int(math.floor((y + 1.0) / 2.0 * mu + 0.5))

    @_njit
    def _mu_decode64(q, Q):
        """:func:`vqaudio.nn.lpc.mu_law_decode64` of one mu-law value."""
        mu = Q - 1
        y = 2.0 * q / mu - 1.0
        m = ((1.0 + mu) ** abs(y) - 1.0) / mu
        return -m if y < 0 else m

    @_njit
    def _zeros(shape):
        """float32 zeros of ``shape`` (a tuple), C-contiguous, starting on a 64-byte boundary."""
        n = 1
        for s in shape:
            n *= s
        buf = np.zeros(n + 16, np.float32)
        start = ((-buf.ctypes.data) % 64) // 4
        return buf[start : start + n].reshape(shape)

    @_njit
    def _copy(dst, dst_offset, src, src_offset, n):
        """``dst[dst_offset : dst_offset + n] = src[src_offset : src_offset + n]`` for 1-D
        arrays: a plain loop that LLVM vectorizes (numba's slice assignment copies one
        element at a time, as it must allow broadcasting)."""
        d = dst[dst_offset : dst_offset + n]  # slices, so that the loop index is >= 0 and no
        s = src[src_offset : src_offset + n]  # negative-index wraparound blocks vectorizing
        for i in range(n):
            d[i] = s[i]

    @_njit
    def _gate(a, g, n):
        """``g[b] = tanh(a[b, :H]) * sigmoid(a[b, H:2H])`` for ``b < n`` (H = g.shape[1])."""
        H = g.shape[1]
        for b in range(n):
            for i in range(H):
                # tanh(x) sigmoid(y) = (p1 / q1) (1 + p2 / q2) / 2 with tanh(y / 2) = p2 / q2
                p1, q1 = _tanh_ratio(a[b, i])
                p2, q2 = _tanh_ratio(np.float32(0.5) * a[b, H + i])
                g[b, i] = p1 * (q2 + p2) / (np.float32(2.0) * q1 * q2)

    @_njit
    def _residual_and_skip(h, h_next, o, skip, n):
        """``h_next = (h + o[:, :R]) / sqrt(2)``, ``skip += o[:, R:R+S]`` for streams ``b < n``."""
        R = h.shape[1]
        S = skip.shape[1]
        sqrt_half = np.float32(math.sqrt(0.5))
        for b in range(n):
            for i in range(R):
                h_next[b, i] = (h[b, i] + o[b, i]) * sqrt_half
            for i in range(S):
                skip[b, i] += o[b, R + i]

    @_njit
    def _relu(x, n):
        for b in range(n):
            for i in range(x.shape[1]):
                x[b, i] = max(x[b, i], np.float32(0.0))

    @_njit
    def _prefetch_layer(queue, first, length, pos, d, taps):
        """Prefetch the ring-buffer rows (all streams) one layer writes (``pos``) and reads
        (``pos - j d`` for ``j = 1 .. taps``)."""
        size = queue.shape[1] * queue.shape[2]
        base = (first + pos) * size
        for c in range(0, size, 16):
            _prefetch(queue, base + c, True)
        for j in range(1, taps + 1):
            r = pos - j * d
            if r < 0:
                r += length
            base = (first + r) * size
            for c in range(0, size, 16):
                _prefetch(queue, base + c, False)

    @_njit
    def _run_group(
        embed, conv_now, conv_past, cond_local, out_w, out_b, head1, head1_b, head2, head2_b,
        dilations, blocks, queue_length, queue_offset, k, hop, S, Q,
        local, spk_bias, lengths, noise, temperature,
        members, queue, prev, out, logits_out, t0, t1,
        embed_p, lpc, history, prediction, signal,
    ):
        """Advance the streams ``members`` (sorted by decreasing length) from sample ``t0`` to
        ``t1`` (``t0`` a multiple of ``hop``); every weight matrix is read once per step for all
        of them.

        Each layer's input lives in its ring buffer: the layer below (or the input embedding)
        writes it there, and the buffer's rows are the matrix kernels' inputs as they are (row
        ``r`` of ``queue`` holds all of the group's streams), so no activations are copied.

        Past taps in blocks: layer l with ``n = blocks[l] <= dilation`` reads, at steps
        ``t .. t + n - 1``, inputs from before ``t`` only, so at each multiple of ``n`` its
        past-tap products (plus the conditioning) for those steps are one matrix product with
        ``n`` rows per stream; per step only its current tap remains. This reads those weights
        once per block instead of once per sample.

        Weights as in :class:`FastWaveNetWeights`; ``blocks`` [L] divide ``hop``. Per stream:
        ``local`` [B, T', D], ``spk_bias`` [B, L, G~] (speaker projection + conv bias),
        ``lengths`` [B] samples, ``noise`` [B, T]. State carried between calls: ``queue``
        [queue_rows, len(members), R] (the layers' ring buffers; layer l's input at step t is
        row ``queue_offset[l] + t % queue_length[l]``, member ``b`` at ``[row, b]``) and
        ``prev`` [B] (the last sample). Writes ``out`` [B, T] int64 and the first rows of
        ``logits_out`` [B, record, Q].

        Linear prediction (``P = lpc.shape[2]`` > 0): ``lpc`` [B, T', P] float64 coefficients,
        ``history`` [B, P] float64 (the last P samples, the most recent first; carried
        between calls); ``p_t`` (kept in ``prediction`` [B]) is added to the input as
        ``embed_p[mu(p_t)]``, the drawn value is the excitation, and ``s_t = p_t + e_t``
        (clipped) goes to ``signal`` [B, T] float32 and, mu-law encoded, to ``prev``; all in
        float64 as :func:`vqaudio.nn.lpc.mu_law_encode64` computes it.
        """
        L = conv_now.shape[0]
        R = conv_now.shape[2]
        Gp = conv_now.shape[1] * PANEL
        H = out_w.shape[2]
        RSp = out_w.shape[1] * PANEL
        Sp = head1.shape[0] * PANEL
        Qp = head2.shape[0] * PANEL
        D = local.shape[2]
        record = logits_out.shape[1]
        nb = members.shape[0]
        h_last = _zeros((nb, R))  # the last layer's residual output (unused)
        a = _zeros((nb, Gp))
        g = _zeros((nb, H))
        o = _zeros((nb, RSp))
        skip = _zeros((nb, S))
        z1 = _zeros((nb, Sp))
        logits = _zeros((nb, Qp))
        cond = _zeros((L, nb, Gp))
        zl = _zeros((nb, D))
        most = blocks.max()
        a_blk = _zeros((L, most * nb, Gp))  # past-tap products + conditioning per block step
        e = _zeros((Qp,))
        ebits = np.zeros(Qp, np.int32)
        pos = t0 % queue_length  # ring-buffer row of the current step, per layer
        nact = nb
        P = lpc.shape[2]  # linear prediction's order (0: none)
        for t in range(t0, t1):
            while nact > 0 and lengths[members[nact - 1]] <= t:
                nact -= 1
            if nact == 0:
                break
            if t % hop == 0 or t == t0:  # conditioning: once per code frame
                frame = t // hop
                for b in range(nact):
                    _copy(zl[b], 0, local[members[b], frame], 0, D)
                for l in range(L):
                    for b in range(nact):
                        _copy(cond[l, b], 0, spk_bias[members[b], l], 0, Gp)
                    _gemm(cond_local[l], zl, cond[l], cond[l], nact)
            for l in range(L):  # past taps of the blocked layers, at each block's first step
                n = blocks[l]
                if n == 1 or t % n != 0:
                    continue
                for j in range(1, k):  # steps t .. t + n - 1 read rows pos - j d .. + n - 1
                    r = pos[l] - j * dilations[l]
                    if r < 0:
                        r += queue_length[l]
                    first = queue_offset[l] + r
                    x = queue[first : first + n].reshape((n * nb, R))
                    # row s nb + b: step t + s, stream b (bias row b: its conditioning)
                    _gemm(conv_past[l, j - 1], x, a_blk[l], cond[l] if j == 1 else a_blk[l], n * nb)
            row = queue[queue_offset[0] + pos[0]]
            for b in range(nact):
                _copy(row[b], 0, embed[prev[members[b]]], 0, R)
                for i in range(S):
                    skip[b, i] = 0.0
                if P > 0:  # p_t = sum_k a_k s_{t-k}; its mu-law value is a second input
                    s = members[b]
                    pv = 0.0
                    fr = t // hop
                    for j in range(P):
                        pv += lpc[s, fr, j] * history[s, j]
                    prediction[s] = pv
                    pi = _mu_encode64(pv, Q)
                    for i in range(R):
                        row[b, i] += embed_p[pi, i]
            for l in range(min(2, L)):
                _prefetch_layer(queue, queue_offset[l], queue_length[l], pos[l], dilations[l], 0 if blocks[l] > 1 else k - 1)
            for l in range(L):
                if l + 2 < L:  # the ring-buffer rows two layers ahead, while this layer computes
                    m = l + 2
                    _prefetch_layer(queue, queue_offset[m], queue_length[m], pos[m], dilations[m], 0 if blocks[m] > 1 else k - 1)
                p = pos[l]
                h = queue[queue_offset[l] + p]  # [nb, R]: this layer's input
                n = blocks[l]
                if n > 1:
                    s = t % n
                    _gemm(conv_now[l], h, a, a_blk[l, s * nb : (s + 1) * nb], nact)
                else:
                    for j in range(1, k):  # the layer's inputs j * d samples back
                        r = p - j * dilations[l]
                        if r < 0:
                            r += queue_length[l]
                        _gemm(conv_past[l, j - 1], queue[queue_offset[l] + r], a, cond[l] if j == 1 else a, nact)
                    _gemm(conv_now[l], h, a, a, nact)
                pos[l] = 0 if p + 1 == queue_length[l] else p + 1
                _gate(a, g, nact)
                _gemm(out_w[l], g, o, out_b[l], nact)
                h_next = queue[queue_offset[l + 1] + pos[l + 1]] if l + 1 < L else h_last
                _residual_and_skip(h, h_next, o, skip, nact)
            _relu(skip, nact)
            _gemm(head1, skip, z1, head1_b, nact)
            _relu(z1, nact)
            _gemm(head2, z1, logits, head2_b, nact)
            for b in range(nact):
                s = members[b]
                v = _sample(logits[b], Q, noise[s, t], temperature, e, ebits)
                out[s, t] = v
                if P > 0:  # s_t = p_t + e_t
                    sv = prediction[s] + _mu_decode64(v, Q)
                    sv = 1.0 if sv > 1.0 else (-1.0 if sv < -1.0 else sv)
                    signal[s, t] = sv
                    for j in range(P - 1, 0, -1):
                        history[s, j] = history[s, j - 1]
                    history[s, 0] = sv
                    prev[s] = _mu_encode64(sv, Q)
                else:
                    prev[s] = v
                if t < record:
                    logits_out[s, t, :] = logits[b, :Q]
