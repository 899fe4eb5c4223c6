"""model.py against independent references: KV cache vs full forward, RMSNorm, RoPE and attention vs
straightforward re-implementations (Meta's complex-number RoPE, explicit softmax attention), init, losses,
sampling, checkpoints."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import model
from model import KVCache, ModelArgs, Transformer


def tiny(**kw):
    torch.manual_seed(0)
    return Transformer(ModelArgs(**{**dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64,
                                           max_seq_len=32), **kw}))


def test_kv_cache_decode_equals_full_forward():
    m = tiny().eval()
    x = torch.randint(0, 64, (2, 20))
    full = m(x)
    cache = KVCache(m.args, 2, "cpu", torch.float32)
    chunks = [m(x[:, :7], 0, cache), m(x[:, 7:12], 7, cache)] + [m(x[:, t:t + 1], t, cache) for t in range(12, 20)]
    assert torch.allclose(torch.cat(chunks, 1), full, atol=1e-5)


def test_rmsnorm_matches_torch():
    norm = model.RMSNorm(16, 1e-5)
    norm.weight.data = torch.randn(16)
    x = torch.randn(3, 5, 16)
    assert torch.allclose(norm(x), F.rms_norm(x, (16,), norm.weight, 1e-5), atol=1e-6)


def reference_rope(x, theta=10000.0):
    """Meta's formulation: consecutive pairs as complex numbers, multiplied by e^(i t f)."""
    B, T, nh, hs = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, hs, 2).float() / hs)
    f = torch.polar(torch.ones(T, hs // 2), torch.outer(torch.arange(T).float(), freqs))  # (T, hs/2)
    xc = torch.view_as_complex(x.float().reshape(B, T, nh, hs // 2, 2))
    return torch.view_as_real(xc * f[None, :, None, :]).flatten(3)


def test_rope_matches_complex_reference():
    x = torch.randn(2, 9, 3, 8)
    cos, sin = model.rope_pairs(*model.rope_tables(8, 9, 10000.0))
    assert torch.allclose(model.apply_rotary_emb(x, cos, sin), reference_rope(x), atol=1e-5)


def test_rope_gives_the_floats_of_rotating_each_pair_apart_forward_and_backward():
    """apply_rotary_emb's swapped-pair form against the plain one: x0 cos - x1 sin and x0 sin + x1 cos,
    stacked. Bit for bit, so a faster form cannot change a trained model."""
    torch.manual_seed(0)
    x = torch.randn(3, 11, 4, 16, requires_grad=True)
    cos, sin = model.rope_tables(16, 11, 10000.0)
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[None, :, None], sin[None, :, None]
    plain = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).flatten(3)
    fast = model.apply_rotary_emb(x, *model.rope_pairs(cos, sin))
    g = torch.randn_like(plain)
    assert torch.equal(fast, plain)
    assert torch.equal(torch.autograd.grad(fast, x, g)[0], torch.autograd.grad(plain, x, g)[0])


def test_attention_matches_explicit_softmax_with_repeated_kv_heads():
    m = tiny()
    att = m.layers[0].attention
    x = torch.randn(2, 10, 32)
    cos, sin = m.rope_cos[:10], m.rope_sin[:10]
    q = reference_rope(att.wq(x).view(2, 10, 4, 8)).transpose(1, 2)  # (B, nh, T, hs)
    k = reference_rope(att.wk(x).view(2, 10, 2, 8)).transpose(1, 2)  # (B, nkv, T, hs)
    v = att.wv(x).view(2, 10, 2, 8).transpose(1, 2)
    k = k[:, :, None].expand(2, 2, 2, 10, 8).reshape(2, 4, 10, 8)  # Meta's repeat_kv
    v = v[:, :, None].expand(2, 2, 2, 10, 8).reshape(2, 4, 10, 8)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(10, 10).triu(1).bool(), float("-inf"))
    ref = att.wo((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, 32))
    assert torch.allclose(att(x, cos, sin), ref, atol=1e-5)


@pytest.mark.parametrize("T", [20, 16, 7])  # blocks of 8: a ragged last block, whole blocks, a single block
def test_blocked_causal_attention_equals_explicit_softmax_with_gradients(T):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 4, requires_grad=True) for _ in range(3))
    scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    ref = scores.softmax(-1) @ v
    out = model.causal_attention(q, k, v, block=8)
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, (q, k, v), g)
    grads = torch.autograd.grad(out, (q, k, v), g)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, grads_ref))


def test_residual_projections_get_the_scaled_init():
    m = Transformer(ModelArgs(dim=256, n_layers=8, n_heads=4, vocab_size=64))
    scaled = 0.02 / math.sqrt(2 * 8)
    for layer in m.layers:
        assert abs(layer.attention.wo.weight.std().item() - scaled) < 0.1 * scaled
        assert abs(layer.feed_forward.w2.weight.std().item() - scaled) < 0.1 * scaled
        assert abs(layer.feed_forward.w3.weight.std().item() - 0.02) < 0.1 * 0.02
        assert abs(layer.attention.wq.weight.std().item() - 0.02) < 0.1 * 0.02
    assert m.output.weight is m.tok_embeddings.weight


def test_losses_ignore_minus_one_targets():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    masked = targets.clone()
    masked[:, :3] = -1
    assert torch.allclose(model.lm_loss(logits, masked), F.cross_entropy(logits[:, 3:].reshape(-1, 11),
                                                                        targets[:, 3:].reshape(-1)))
    lp = model.token_logprobs(logits, masked)
    assert (lp[:, :3] == 0).all()
    assert torch.allclose(lp[:, 3:], torch.log_softmax(logits, -1)[:, 3:].gather(-1, targets[:, 3:, None])[..., 0])


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    assert model.sample_next(logits, 0.0).item() == 1
    g = torch.Generator().manual_seed(0)
    assert {model.sample_next(logits, 1.0, top_k=1, generator=g).item() for _ in range(20)} == {1}
    assert {model.sample_next(logits, 1.0, top_p=0.01, generator=g).item() for _ in range(20)} == {1}
    assert {model.sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(100)} == {1, 3}
    assert model.sample_next(logits, 1e-39, generator=g).item() == 1  # a tiny temperature: greedy, not nan
    half = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))  # exact in float32: the first token alone reaches top_p
    assert {model.sample_next(half, 1.0, top_p=0.5, generator=g).item() for _ in range(200)} == {0}


def test_sampling_never_picks_a_filtered_token_when_the_draw_rounds_up(monkeypatch):
    # inverse transform sampling: a uniform draw times the total probability can round up to the total
    # itself, past every cumulative value; the token taken is then the last one with any probability
    logits = torch.tensor([[3.0, 2.0, 0.0, 0.0]])
    monkeypatch.setattr(torch, "rand", lambda *a, **kw: torch.ones(a[0], a[1]))
    assert model.sample_next(logits, 1.0, top_k=2).item() == 1


def test_sampling_follows_the_softmax_at_the_temperature():
    logits = torch.tensor([[0.0, 1.0]]).expand(4000, 2)
    for t in (0.25, 4.0):
        g = torch.Generator().manual_seed(0)
        freq = model.sample_next(logits, t, generator=g).float().mean().item()
        assert freq == pytest.approx(torch.softmax(torch.tensor([0.0, 1.0]) / t, -1)[1].item(), abs=0.03)


def test_generate_with_the_cache_is_greedy_over_the_full_forward():
    m = tiny().eval()
    seq = [1, 2, 3]
    out = model.generate(m, torch.tensor([seq]), 6, temperature=0.0)[0]
    for _ in range(6):
        seq.append(m(torch.tensor([seq]))[0, -1].argmax().item())
    assert out == seq[3:]


def test_training_and_sampling_run_under_bf16_autocast():
    """On a GPU, train.py and sft.py train and sample under bf16 autocast (common.autocast), which no CI machine
    has; the CPU's autocast stands in for it. The dtypes meet everywhere (bf16 keys and queries beside the float32
    KV cache, RMSNorm in float32), the loss is float32 and near float32's, every weight gets a finite float32
    gradient, and decoding with the cache gives the full forward's logits to bf16's precision."""
    m = tiny()
    x = torch.randint(0, 64, (2, 20))
    want = model.lm_loss(m(x[:, :-1]), x[:, 1:]).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(x[:, :-1])
        loss = model.lm_loss(logits, x[:, 1:])
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and abs(loss.item() - want) < 0.02
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = KVCache(m.args, 2, "cpu", torch.float32)
        steps = torch.cat([m(x[:, :12], 0, cache)] + [m(x[:, t:t + 1], t, cache) for t in range(12, 20)], 1)
        full = m(x)
        out = model.generate(m, x[:, :5], 8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert (steps.float() - full.float()).abs().max() < 0.05 and [len(o) for o in out] == [8, 8]


def test_weight_decay_only_on_matrices():
    m = Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=32, reward_head=True))
    decay, no_decay = model.configure_optimizer(m, 1e-3, 0.1, (0.9, 0.95), "cpu").param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in m.named_parameters() if p.dim() < 2}
    assert any(names[id(p)].endswith("norm.weight") for p in no_decay["params"])


def test_a_resumed_optimizer_keeps_this_devices_implementation():
    m = tiny()
    saved = model.configure_optimizer(m, 1e-3, 0.1, (0.9, 0.95), "cpu")  # a CPU run: fused=False
    m(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    saved.step()
    built = torch.optim.AdamW(saved.param_groups[0]["params"], lr=1e-3, fused=True)  # as on a GPU
    built.add_param_group({"params": saved.param_groups[1]["params"]})
    model.load_optimizer_state(built, saved.state_dict())
    assert all(g["fused"] is True for g in built.param_groups)  # load_state_dict alone brings back False
    p = saved.param_groups[0]["params"][0]
    assert torch.equal(built.state[p]["exp_avg"], saved.state[p]["exp_avg"])


def test_a_chunk_at_a_later_position_without_a_cache_is_causal():
    m = tiny().eval()
    x = torch.randint(0, 64, (1, 8))
    y = x.clone()
    y[0, 5] = (x[0, 5] + 1) % 64
    a, b = m(x, start_pos=3), m(y, start_pos=3)
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.equal(a[:, 5:], b[:, 5:])


def test_generate_stops_and_batches_by_length():
    m = tiny().eval()
    prompts = [[1, 2, 3], [4, 5], [1, 2, 3], [7]]
    outs = model.generate_many(m, prompts, 6, temperature=0.0)
    for p, o in zip(prompts, outs):  # batched greedy == one-by-one greedy
        assert o == model.generate(m, torch.tensor([p]), 6, temperature=0.0)[0]
    stop = outs[0][2]
    cut = model.generate(m, torch.tensor([prompts[0]]), 6, temperature=0.0, stop_id=stop)[0]
    assert cut == outs[0][:outs[0].index(stop) + 1]


def test_a_failed_checkpoint_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    model.save_checkpoint(str(path), tiny(), "base")
    before = path.read_bytes()

    def full_disk(obj, f):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        model.save_checkpoint(str(path), tiny(), "base", step=1)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.pt"]


def test_checkpoint_roundtrip_and_errors(tmp_path):
    m = tiny()
    path = tmp_path / "c.pt"
    model.save_checkpoint(str(path), m, "sft", step=7, args={"lr": 1.0})
    m2, ck = model.load_checkpoint(str(path), stages=("sft",))
    x = torch.randint(0, 64, (1, 8))
    assert torch.equal(m(x), m2(x)) and ck["step"] == 7 and m2.output.weight is m2.tok_embeddings.weight
    assert "model" not in ck  # the weights live in m2 only: kept in ck too, they took the device's memory twice
    with pytest.raises(model.CheckpointError, match="'sft' checkpoint; expected base"):
        model.load_checkpoint(str(path), stages=("base",))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(model.CheckpointError, match="not a readable"):
        model.load_checkpoint(str(path))
    with pytest.raises(model.CheckpointError, match="no checkpoint"):
        model.load_checkpoint(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("stage, refused", [("sft", True), ("rlhf", True), ("base", False)])
def test_a_chat_checkpoint_from_the_old_chat_format_is_refused(tmp_path, stage, refused):
    """A checkpoint without chat_format predates tokenizer.CONTENT_PREFIX; pretraining knows no chat."""
    path = str(tmp_path / "old.pt")
    model.save_checkpoint(path, tiny(), stage)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["chat_format"]
    torch.save(ckpt, path)
    if refused:
        with pytest.raises(model.CheckpointError, match="chat format 1 .* re-run sft.py"):
            model.load_checkpoint(path)
    else:
        assert model.load_checkpoint(path)[1]["stage"] == "base"


def test_a_prompt_that_fills_the_context_is_a_context_error():
    """model.py: generate's `max_new_tokens <= 0` as `< 0` (a prompt of exactly max_seq_len tokens returned empty
    answers instead of ContextError)."""
    m = tiny()
    with pytest.raises(model.ContextError, match="a prompt of 32 tokens leaves no room"):
        model.generate(m, torch.zeros(1, 32, dtype=torch.long), 4)
    assert len(model.generate(m, torch.zeros(1, 31, dtype=torch.long), 4)[0]) == 1


def test_a_base_checkpoint_is_refused_where_a_chat_stage_is_expected(tmp_path):
    """model.py: load_checkpoint's stage check letting 'base' through (rlhf.py took a pretrained model for SFT's)."""
    model.save_checkpoint(str(tmp_path / "base.pt"), tiny(), "base")
    with pytest.raises(model.CheckpointError, match="'base' checkpoint; expected sft or rlhf"):
        model.load_checkpoint(str(tmp_path / "base.pt"), stages=("sft", "rlhf"))
