"""Tests of the discrete-diffusion prior (vqaudio/nn/diffusion_prior.py): its forward process,
posteriors and bound, training, sampling, infilling and checkpoints; tiny models on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqaudio.checkpoint import CheckpointError
from vqaudio.nn.diffusion_prior import DiffusionPrior, DiffusionPriorConfig, MaskAndReplaceSchedule
from vqaudio.nn.prior import IGNORE_INDEX

K = 16


def tiny(num_timesteps: int = 10, max_len: int = 48, seed: int = 0, **kw) -> DiffusionPrior:
    torch.manual_seed(seed)
    cfg = DiffusionPriorConfig(codebook_size=K, num_speakers=2, d_model=32, n_layers=2, n_heads=2,
                               max_len=max_len, dropout=0.0, num_timesteps=num_timesteps, **kw)
    return DiffusionPrior(cfg, ["a", "b"]).eval()


def test_forward_marginals_are_distributions_and_end_all_masked():
    sched = MaskAndReplaceSchedule(K, 20, alpha_bar_end=0.0, gamma_bar_end=1.0)
    x0 = torch.randint(0, K, (3, 7))
    previous_mask = -1.0
    for t in range(21):
        q = sched.marginal(x0, torch.full((3,), t))
        assert q.shape == (3, 7, K + 1) and (q >= 0).all()
        torch.testing.assert_close(q.sum(-1), torch.ones(3, 7, dtype=torch.float64))
        assert q[0, 0, K] > previous_mask  # masking only grows
        previous_mask = float(q[0, 0, K])
    assert torch.equal(sched.marginal(x0, torch.zeros(3, dtype=torch.long)), F.one_hot(x0, K + 1).double())
    assert (sched.marginal(x0, torch.full((3,), 20))[..., K] == 1.0).all()
    drawn = sched.sample_marginal(x0, torch.full((3,), 20))
    assert (drawn == K).all()
    # draws follow the marginal: keep / replace / mask rates at a middle step
    big = torch.randint(0, K, (400, 100))
    t = torch.full((400,), 10)
    xt = sched.sample_marginal(big, t, torch.Generator().manual_seed(0))
    q = sched.marginal(big[:1, :1], t[:1])[0, 0]
    assert abs(float((xt == K).double().mean()) - float(q[K])) < 0.01
    assert abs(float((xt == big).double().mean()) - float(q[big[0, 0]])) < 0.01


def test_posteriors_are_consistent_with_the_marginals():
    """sum over x_t of q(x_t | x_0) q(x_s | x_t, x_0) = q(x_s | x_0), for skipped steps too."""
    sched = MaskAndReplaceSchedule(K, 30, 0.000009, 0.99999)
    x0 = torch.randint(0, K, (2, 5))
    one_hot = F.one_hot(x0, K).double()
    for t_val, s_val in [(1, 0), (7, 6), (30, 11), (12, 0)]:
        t, s = torch.full((2,), t_val), torch.full((2,), s_val)
        qt = sched.marginal(x0, t)
        mixed = sum(qt[..., j : j + 1] * sched.posterior(one_hot, torch.full_like(x0, j), t, s) for j in range(K + 1))
        torch.testing.assert_close(mixed, sched.marginal(x0, s), atol=1e-12, rtol=0)
    post = sched.posterior(torch.full((2, 5, K), 1.0 / K), torch.full_like(x0, K), torch.full((2,), 5), torch.zeros(2, dtype=torch.long))
    assert (post[..., K] == 0).all()  # no [MASK] left at s = 0


def test_posterior_equals_the_sum_over_x0_of_bayes_rule():
    """p(x_s | x_t) = sum_k v_k q(x_t | x_s) q(x_s | x_0 = k) / q(x_t | x_0 = k), written out with
    the [K + 1, K + 1] transition matrices, for soft v, masked and unmasked x_t, skipped steps."""
    k = 6
    sched = MaskAndReplaceSchedule(k, 12, 0.000009, 0.99999)
    g = torch.Generator().manual_seed(0)

    def matrix(alpha, beta, gamma):  # rows: from-state, columns: to-state; [MASK] is absorbing
        m = torch.zeros(k + 1, k + 1, dtype=torch.float64)
        m[:k, :k] = beta + alpha * torch.eye(k, dtype=torch.float64)
        m[:k, k] = gamma
        m[k, k] = 1.0
        return m

    for t_val, s_val in [(1, 0), (5, 4), (12, 3), (9, 0)]:
        t, s = torch.tensor([t_val]), torch.tensor([s_val])
        step = matrix(*(float(z[0]) for z in sched.step(t, s)))
        bar_s = matrix(float(sched.abar[s_val]), float(sched.bbar[s_val]), float(sched.gbar[s_val]))
        bar_t = matrix(float(sched.abar[t_val]), float(sched.bbar[t_val]), float(sched.gbar[t_val]))
        xt = torch.arange(k + 1)[None]  # every state of x_t once, [MASK] last
        v = torch.randn(1, k + 1, k, generator=g, dtype=torch.float64).mul(2).softmax(-1)
        got = sched.posterior(v, xt, t, s)
        for i in range(k + 1):
            want = sum(v[0, i, x0] * step[:, i] * bar_s[x0] / bar_t[x0, i] for x0 in range(k))
            torch.testing.assert_close(got[0, i], want / want.sum(), atol=1e-12, rtol=1e-9)


def test_the_bound_of_the_exact_reverse_model_is_the_entropy():
    """On uniform codes the exact p(x_0 | x_t) is q(x_t | x_0) normalised over x_0; with it the
    variational bound equals log2 K (here up to the Monte Carlo error of one draw per step)."""
    model = tiny(num_timesteps=20)
    sched = model.schedule

    def exact(xt, t, speaker, valid=None):
        q = torch.stack([sched.marginal(torch.full_like(xt, k), t)[..., :] for k in range(K)], -1)  # [B, L, K+1, K]
        return q.gather(2, xt[..., None, None].expand(*xt.shape, 1, K))[:, :, 0].log().float()

    model.forward = exact
    x0 = torch.randint(0, K, (128, 48), generator=torch.Generator().manual_seed(1))
    bits = model.bound_bits(x0, torch.zeros(128, dtype=torch.long), torch.Generator().manual_seed(2))
    assert abs(float(bits.mean()) - math.log2(K)) < 0.1, float(bits.mean())
    # an untrained network is worse than that
    untrained = tiny(num_timesteps=20).bound_bits(x0[:8], torch.zeros(8, dtype=torch.long))
    assert float(untrained.mean()) > math.log2(K)


def test_padding_is_left_out_of_attention_and_losses():
    model = tiny()
    codes = torch.randint(0, K, (1, 12))
    padded = torch.cat([codes, torch.full((1, 6), IGNORE_INDEX)], 1)
    t = torch.tensor([4])
    xt, _ = model.noised(padded, t, torch.Generator().manual_seed(0))
    full = model(xt, t, torch.tensor([1]), padded != IGNORE_INDEX)
    alone = model(xt[:, :12], t, torch.tensor([1]))
    torch.testing.assert_close(full[:, :12], alone, atol=1e-5, rtol=1e-5)
    a = model.terms_from_logits(full, padded, xt, t)
    b = model.terms_from_logits(alone, codes, xt[:, :12], t)
    torch.testing.assert_close(a["vlb"], b["vlb"])
    torch.testing.assert_close(a["aux"], b["aux"])


def test_training_lowers_the_bound_on_tiny_data():
    """Each speaker says one of two repeating patterns; 150 steps bring the bound well under
    log2 K."""
    patterns = [torch.arange(0, 8).repeat(4), torch.arange(8, 16).repeat(4)]
    model = tiny(num_timesteps=10, seed=0).train()
    gen = torch.Generator().manual_seed(0)
    data = torch.stack(patterns * 4)
    speaker = torch.tensor([0, 1] * 4)
    before = float(model.eval().bound_bits(data, speaker, torch.Generator().manual_seed(5)).mean())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.loss(data, speaker, aux_loss_weight=0.1, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(model.eval().bound_bits(data, speaker, torch.Generator().manual_seed(5)).mean())
    assert before > math.log2(K) and after < 0.5 * math.log2(K), (before, after)
    sample = model.sample(torch.tensor([0, 1]), 32, steps=10, generator=torch.Generator().manual_seed(0))
    assert (sample[0] < 8).float().mean() > 0.8 and (sample[1] >= 8).float().mean() > 0.8  # the speakers' codes


@pytest.mark.parametrize("sampler", ["posterior", "confidence"])
@pytest.mark.parametrize("steps", [None, 1, 3])
def test_sampling_leaves_no_mask_only_valid_codes_and_is_reproducible(steps, sampler):
    model = tiny()
    speakers = torch.tensor([0, 1, 1])
    a = model.sample(speakers, 20, steps=steps, generator=torch.Generator().manual_seed(7), sampler=sampler)
    b = model.sample(speakers, 20, steps=steps, generator=torch.Generator().manual_seed(7), sampler=sampler)
    assert a.shape == (3, 20) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < K  # no [MASK] (= K) left
    assert torch.equal(a, b)
    greedy = model.sample(speakers, 20, steps=steps, temperature=0, sampler=sampler)
    assert int(greedy.max()) < K
    assert model.timesteps(3) == [10, 7, 3, 0] and model.timesteps(None) == list(range(10, -1, -1))


def test_confidence_decoding_fixes_the_surest_codes_first_on_the_cosine_schedule():
    """Each step keeps the masked codes whose drawn code the network gives the highest
    probability (no noise: choice_temperature 0), keeps what it fixed, leaves a
    cos(pi/2 * i / n) share of the codes to sample masked after step i, and tells the network
    the step whose [MASK] share is nearest the current one."""
    model = tiny(num_timesteps=10)
    n, steps = 20, 4
    seen = []
    def network(xt, t, speaker, valid=None):  # position i is surest of code i % K, more so further right
        seen.append((xt.clone(), t.clone()))
        logits = torch.zeros(*xt.shape, K)
        pos = torch.arange(xt.shape[1])
        logits[:, pos, pos % K] += 1.0 + pos.float()
        return logits

    model.forward = network
    known = torch.full((1, n), -1)
    known[0, :2] = torch.tensor([5, 6])  # two known codes: 18 to sample
    out = model.sample(torch.tensor([0]), n, steps=steps, temperature=0, known=known, sampler="confidence",
                       choice_temperature=0.0)
    assert len(seen) == steps
    masked_counts = [int((x == K).sum()) for x, _ in seen]
    assert masked_counts == [18] + [math.floor(18 * math.cos(math.pi / 2 * i / steps)) for i in (1, 2, 3)]
    for x, _ in seen:
        assert torch.equal(x[0, :2], torch.tensor([5, 6]))  # known codes are shown clean
        # the rightmost codes (the surest) are fixed first: the masked ones are a block at the left
        assert torch.equal(x[0, 2:] == K, torch.arange(2, n) < 2 + int((x[0] == K).sum()))
    for (a, _), (b, _) in zip(seen, seen[1:]):  # a fixed code never changes
        fixed = a[0] != K
        assert torch.equal(b[0][fixed], a[0][fixed])
    assert torch.equal(out[0, 2:], torch.arange(2, n) % K) and torch.equal(out[0, :2], torch.tensor([5, 6]))
    gbar = model.schedule.gbar
    for x, t in seen:
        share = float((x == K).float().mean())
        assert int(t) == int((gbar[1:] - share).abs().argmin()) + 1


def test_infilling_keeps_every_code_outside_the_span():
    model = tiny()
    codes = torch.randint(0, K, (2, 30), generator=torch.Generator().manual_seed(0))
    span = torch.zeros(2, 30, dtype=torch.bool)
    span[0, 10:15] = True
    span[1, 0:4] = True
    for steps in (None, 2):
        for sampler in ("posterior", "confidence"):
            out = model.infill(codes, span, torch.tensor([0, 1]), steps=steps,
                               generator=torch.Generator().manual_seed(1), sampler=sampler)
            assert torch.equal(out[~span], codes[~span])
            assert int(out.max()) < K and int(out.min()) >= 0
    with pytest.raises(ValueError, match="both be"):
        model.infill(codes, span[:, :5], torch.tensor([0, 1]))


def test_bad_arguments_are_clear_errors():
    model = tiny(max_len=16)
    with pytest.raises(ValueError, match="max_len=16"):
        model.sample(torch.tensor([0]), 17)
    with pytest.raises(ValueError, match="speaker ids"):
        model.sample(torch.tensor([2]), 4)
    with pytest.raises(ValueError, match="steps must be"):
        model.sample(torch.tensor([0]), 4, steps=0)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(torch.tensor([0]), 4, temperature=-1)
    with pytest.raises(ValueError, match="sampler must be one of posterior, confidence"):
        model.sample(torch.tensor([0]), 4, sampler="maskgit")
    with pytest.raises(ValueError, match="choice_temperature"):
        model.sample(torch.tensor([0]), 4, sampler="confidence", choice_temperature=-1)
    with pytest.raises(ValueError, match="gamma_bar_end"):
        DiffusionPriorConfig(alpha_bar_end=0.5, gamma_bar_end=0.9)


def test_save_load_round_trip_and_loading_by_kind(tmp_path):
    from vqaudio.generate import load_prior
    from vqaudio.nn.prior import PriorConfig, PriorTransformer

    model = tiny()
    model.metadata["checkpoint_id"] = "0123456789abcdef"
    model.save_pretrained(tmp_path / "d")
    loaded = load_prior(tmp_path / "d")
    assert isinstance(loaded, DiffusionPrior) and loaded.config == model.config
    assert loaded.speakers == ["a", "b"] and loaded.metadata["checkpoint_id"] == "0123456789abcdef"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    x = torch.randint(0, K + 1, (2, 9))
    torch.testing.assert_close(model(x, torch.tensor([3, 9]), torch.tensor([0, 1])),
                               loaded(x, torch.tensor([3, 9]), torch.tensor([0, 1])))
    PriorTransformer(PriorConfig(codebook_size=K, num_speakers=1, d_model=16, n_layers=1, n_heads=2), ["a"]).save_pretrained(tmp_path / "ar")
    assert isinstance(load_prior(tmp_path / "ar"), PriorTransformer)
    with pytest.raises(CheckpointError, match="expected 'diffusion-prior'"):
        DiffusionPrior.from_pretrained(tmp_path / "ar")
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_prior(tmp_path / "missing")


def test_sequences_longer_than_max_len_are_sampled_window_by_window():
    from vqaudio.generate import sample_codes

    model = tiny(num_timesteps=4, max_len=16)
    calls = []
    sample = model.sample

    def recording_sample(speakers, num_codes, **kw):
        out = sample(speakers, num_codes, **kw)
        calls.append((num_codes, kw.get("known"), out))
        return out

    model.sample = recording_sample
    prompt = torch.randint(0, K, (1, 10))
    codes = sample_codes(model, 1, 40, num=2, prompt=prompt, steps=3, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 50) and torch.equal(codes[:, :10], prompt.expand(2, -1))
    assert int(codes.min()) >= 0 and int(codes.max()) < K
    # every window fits the model, holds the last codes sampled so far fixed, and they add up to the whole
    assert all(n <= 16 for n, _, _ in calls) and len(calls) == 5
    have = prompt.expand(2, -1)
    for n, known, out in calls:
        context = int((known[0] >= 0).sum())
        assert context >= 8 and torch.equal(known[:, :context], have[:, have.shape[1] - context:])
        have = torch.cat([have, out[:, context:]], 1)
    assert torch.equal(have, codes)
    # without a prompt: the first window is a whole max_len
    calls.clear()
    codes = sample_codes(model, 0, 20, num=1, steps=3, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (1, 20) and [n for n, _, _ in calls] == [16, 16] and calls[0][1] is None
