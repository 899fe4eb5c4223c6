"""
The one Transformer of twofiles: Llama 2's architecture (Touvron et al. 2023, and Meta's reference
`llama/model.py`), small enough to train on a laptop. Every stage (train.py, sft.py, rlhf.py) trains
this model and export.py writes its weights; run.py mirrors it line by line in NumPy.

    token embedding -> n_layers x [ x + attention(attention_norm(x)), x + feed_forward(ffn_norm(x)) ]
                    -> norm -> output (tied to the embedding by default)

Also here: sampling with a KV cache (`generate`, used for rollouts and samples), the losses (target -1
means "no loss" everywhere), AdamW parameter groups, and the checkpoint reader/writer (`load_checkpoint`;
`peek_checkpoint` reads a checkpoint's step and args without building its model).

    python -c "import model; m = model.Transformer(model.ModelArgs()); print(m.num_params())"
"""
import math
import os
import zipfile
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# Shape letters used throughout (and in run.py): B batch, T time (tokens), C = dim, nh heads,
# nkv key/value heads, hs head size, V vocab, H hidden_dim of the feed-forward, S tokens attended to (cached + new).


@dataclass
class ModelArgs:
    """The architecture, and nothing else: saved in every checkpoint and blob, used to rebuild the model."""
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (plain multi-head); fewer: grouped-query attention
    vocab_size: int = 1024
    hidden_dim: int | None = None  # None: Llama's rule, 2/3 of 4*dim rounded up to multiple_of
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 256
    dropout: float = 0.0
    tie_embeddings: bool = True  # output.weight is tok_embeddings.weight (GPT-2, llama2.c's small models)
    reward_head: bool = False  # rlhf.py's reward model: a scalar read from the last token's hidden state
    reward_likelihood: float = 0.0  # ... plus this times the mean log-probability its own LM head gives the answer

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:
            hidden = int(2 * (4 * self.dim) / 3)  # SwiGLU has 3 matrices: keep the parameter count of a 4x MLP
            self.hidden_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"bad shape: dim {self.dim}, n_heads {self.n_heads}, n_kv_heads {self.n_kv_heads} "
                             "(need dim % n_heads == 0, n_heads % n_kv_heads == 0, an even head size)")

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019); no mean subtraction, no bias."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()  # normalise in float32 even under bf16 autocast, as Meta's reference does
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_size, max_seq_len, theta):
    """cos and sin of the rotary angles, each (max_seq_len, hs/2): position t rotates pair i by t * theta^(-2i/hs)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_size, 2).float() / head_size))  # (hs/2,)
    angles = torch.outer(torch.arange(max_seq_len).float(), freqs)  # (T, hs/2)
    return angles.cos(), angles.sin()


def rope_pairs(cos, sin):
    """The tables as apply_rotary_emb reads them, each (T, hs): every pair's cos twice, its sin as (-sin, sin)."""
    return cos.repeat_interleave(2, -1), torch.stack([-sin, sin], -1).flatten(-2)


def apply_rotary_emb(x, cos, sin):
    """Rotate consecutive pairs (x0, x1), (x2, x3), ... as Meta's release does with complex numbers
    (RoFormer, Su et al. 2021): (x0 cos - x1 sin, x1 cos + x0 sin). x is (B, T, nh, hs); cos, sin are
    (T, hs) from rope_pairs. Written as x * cos + (x with each pair swapped) * (-sin, sin): the same floats,
    forward and backward, as rotating x0 and x1 apart and stacking the results (tested); a call takes 0.6x the
    time at a training step's shape (forward and backward) and 0.45-0.7x at a sampling step's (measured at the
    built-in world's shape; swapping by stack is 2.5x faster than by flip)."""
    xf = x.float()
    x0, x1 = xf.unflatten(-1, (-1, 2)).unbind(-1)  # (B, T, nh, hs/2) each
    swapped = torch.stack((x1, x0), -1).flatten(-2)  # (x1, x0, x3, x2, ...)
    return (xf * cos[None, :, None] + swapped * sin[None, :, None]).type_as(x)  # (B, T, nh, hs)


class KVCache:
    """Keys and values of the tokens seen so far, one pair of (B, nkv, length, hs) buffers per layer, so each
    new token costs one position of work instead of re-running the whole prefix."""

    def __init__(self, args, batch_size, device, dtype, length=None):
        # length: the most positions this generation will reach (default max_seq_len), so a short answer
        # allocates and zero-fills only what it uses
        shape = (batch_size, args.n_kv_heads, length or args.max_seq_len, args.dim // args.n_heads)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]


def causal_attention(q, k, v, dropout=0.0, block=128):
    """softmax(q k^T / sqrt(hs) + causal mask) v for q, k, v of (B, nh, T, hs).

    On GPUs, and on CPU when T <= block, this is SDPA with is_causal=True. On CPU, longer queries go in blocks
    of `block`, each block attending only to the keys up to its own end, so the masked upper triangle is skipped
    by construction instead of left to PyTorch's CPU flash kernel, whose backward pass we measured to gain
    little from is_causal.
    Measured at llama2.c's 260K shape (B 8, 8 heads, T 512, head size 8; one layer, 2 cores): forward
    21 -> 16 ms, forward + backward 93 -> 56 ms; the whole training step 1.3x faster."""
    T = q.shape[2]
    if q.device.type != "cpu" or T <= block:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    out = []
    for s in range(0, T, block):
        e = min(s + block, T)
        mask = torch.ones(e - s, e, dtype=torch.bool, device=q.device).tril(diagonal=s)  # query s + i sees keys <= s + i
        out.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e], attn_mask=mask,
                                                  dropout_p=dropout))
    return torch.cat(out, dim=2)


class Attention(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.n_heads, self.n_kv_heads = args.n_heads, args.n_kv_heads
        self.head_size = args.dim // args.n_heads
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_size, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_size, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_size, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_size, args.dim, bias=False)
        self.dropout = args.dropout

    def forward(self, x, cos, sin, start_pos=0, cache=None, layer=0):
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_size)  # (B, T, nh, hs)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_size)  # (B, T, nkv, hs)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_size)  # (B, T, nkv, hs)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh|nkv, T, hs)
        if cache is not None:  # append this chunk, then attend over everything so far
            cache.k[layer][:B, :, start_pos:start_pos + T] = k
            cache.v[layer][:B, :, start_pos:start_pos + T] = v
            k, v = cache.k[layer][:B, :, :start_pos + T], cache.v[layer][:B, :, :start_pos + T]  # (B, nkv, S, hs)
        # grouped-query attention: each key/value head serves n_heads // n_kv_heads query heads
        # (Meta's repeat_kv repeats each kv head consecutively, which is repeat_interleave)
        n_rep = self.n_heads // self.n_kv_heads
        if n_rep > 1:  # (repeat_interleave copies even once: a fifth of a sampling step's time, measured)
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)  # (B, nh, S, hs)
        S, dropout = k.shape[2], self.dropout if self.training else 0.0
        if T == 1:  # one new token (sampling with the cache) sees everything so far: softmax(q k^T / sqrt(hs)) v,
            # written out as run.py does; two small matmuls take 0.6-0.8x the time of PyTorch's CPU kernel (measured)
            att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_size), dim=-1)  # (B, nh, 1, S)
            y = F.dropout(att, dropout, training=dropout > 0) @ v  # (B, nh, 1, hs)
        elif S == T:  # no cached prefix (all of training; start_pos > 0 only moves RoPE): causal
            y = causal_attention(q, k, v, dropout)
        else:  # a chunk after a cached prefix: query i sits at start_pos + i and sees keys 0..start_pos + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.wo(y)


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, args):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, args, layer_id):
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x, cos, sin, start_pos=0, cache=None):
        h = x + self.dropout(self.attention(self.attention_norm(x), cos, sin, start_pos, cache, self.layer_id))
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.dropout = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.reward = nn.Linear(args.dim, 1, bias=True) if args.reward_head else None
        cos, sin = rope_pairs(*rope_tables(args.dim // args.n_heads, args.max_seq_len, args.rope_theta))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # GPT-2 init: N(0, 0.02), and the two projections that write into the residual stream (wo, w2)
        # scaled by 1/sqrt(2 * n_layers) so the stream's variance does not grow with depth. (llama2.c's
        # model.py scales wo and w3: w3, which does not write into the residual stream, where w2 was meant.)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * args.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
        if self.reward is not None:
            nn.init.zeros_(self.reward.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once

    def features(self, tokens, start_pos=0, cache=None):
        """tokens (B, T) -> final hidden states (B, T, C), after the last RMSNorm."""
        B, T = tokens.shape
        if start_pos + T > self.args.max_seq_len:
            raise ValueError(f"sequence of {start_pos + T} tokens is longer than max_seq_len {self.args.max_seq_len}")
        h = self.dropout(self.tok_embeddings(tokens))  # (B, T, C)
        cos, sin = self.rope_cos[start_pos:start_pos + T], self.rope_sin[start_pos:start_pos + T]
        for layer in self.layers:
            h = layer(h, cos, sin, start_pos, cache)
        return self.norm(h)

    def forward(self, tokens, start_pos=0, cache=None):
        """tokens (B, T) -> logits (B, T, V). With a cache, tokens are the next chunk after start_pos tokens."""
        return self.output(self.features(tokens, start_pos, cache))

    def score(self, tokens, lengths, targets):
        """The reward model's scalar for each sequence: (B, T), (B,), (B, T) -> (B,). The reward head read at the
        last real token, plus args.reward_likelihood times the mean log-probability the model's own LM head gives
        the targets (the answer's tokens, -1 elsewhere; read only when that weight is not 0, see rlhf.py)."""
        h = self.features(tokens)  # (B, T, C)
        last = h[torch.arange(tokens.shape[0], device=tokens.device), lengths - 1]  # (B, C)
        r = self.reward(last).squeeze(-1).float()
        if self.args.reward_likelihood:
            r = r + self.args.reward_likelihood * mean_logprob(self.output(h), targets)
        return r


# ----------------------------------------------------------------------------------------------------------
# losses (target -1 = no loss, the one masking convention of the project)

def lm_loss(logits, targets):
    """Mean next-token cross entropy over the targets that are not -1. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)


def token_logprobs(logits, targets):
    """log p(target) at each position, 0 where the target is -1: (B, T, V), (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * (targets != -1)


def mean_logprob(logits, targets):
    """Each row's mean log p(target) over its targets that are not -1: (B, T, V), (B, T) -> (B,)."""
    return token_logprobs(logits, targets).sum(1) / (targets != -1).sum(1).clamp(min=1)


# ----------------------------------------------------------------------------------------------------------
# sampling

def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from logits (B, V): greedy at temperature 0, else softmax(logits / T) cut to the
    top k and/or the smallest set of tokens whose probability reaches top_p (nucleus, Holtzman et al. 2019)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    logits = (logits - logits.max(-1, keepdim=True).values) / temperature  # <= 0: no overflow at a tiny T
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # tokens after the nucleus is already full
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    # inverse transform sampling, as run.py does: one uniform draw per row, looked up in the cumulative
    # distribution (torch.multinomial draws one exponential per vocabulary entry: 2.5 ms of a 12 ms sampling step
    # at batch 64 and V 1024, measured). If u * total rounds up to the total, take the last token with mass.
    cdf = probs.cumsum(-1)  # (B, V)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]  # (B, 1)
    nxt = torch.searchsorted(cdf, u, right=True).squeeze(-1)  # the first token whose cdf exceeds u
    return torch.minimum(nxt, (cdf < cdf[:, -1:]).sum(-1))


@torch.no_grad()
def generate(model, prompt, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_id=None,
             generator=None):
    """Sample continuations of a batch of equal-length prompts (B, T) with a KV cache.
    Returns the new tokens of each row as a list of lists, up to and including stop_id when it was sampled."""
    B, T = prompt.shape
    max_new_tokens = min(max_new_tokens, model.args.max_seq_len - T)
    if max_new_tokens <= 0:
        raise ContextError(f"a prompt of {T} tokens leaves no room in the model's context of "
                           f"{model.args.max_seq_len} (its max_seq_len, train.py's --seq-len)")
    was_training = model.training
    model.eval()
    cache = KVCache(model.args, B, prompt.device, model.tok_embeddings.weight.dtype, T + max_new_tokens)
    logits = model.output(model.features(prompt, 0, cache)[:, -1])  # prefill in one pass; last position only (B, V)
    out, done = [[] for _ in range(B)], [False] * B
    for pos in range(T, T + max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        for b, t in enumerate(nxt.tolist()):
            if not done[b]:
                out[b].append(t)
                done[b] = t == stop_id
        if all(done) or pos + 1 == T + max_new_tokens:
            break
        logits = model(nxt[:, None], pos, cache)[:, -1]  # one new position per row
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------------------------
# optimisation and checkpoints

def configure_optimizer(model, lr, weight_decay, betas, device_type):
    """AdamW (Loshchilov & Hutter 2019), decaying only 2-D tensors: matrices and embeddings decay,
    norms and biases do not (nanoGPT's invariant instead of lists of module types)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == "cuda")


def load_optimizer_state(optimizer, state):
    """optimizer.load_state_dict(state), keeping the implementation this device's optimizer was built with:
    load_state_dict also restores the saved run's `fused`/`foreach` flags, and a CPU run's fused=False resumed on
    a GPU would take AdamW's slowest path (one GPU sync per parameter per step)."""
    flags = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, flags):
        group.update(kept)


def unwrap(model):
    """The plain Transformer inside DDP and/or torch.compile wrappers (so saved keys never carry
    `module.` or `_orig_mod.` prefixes)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class ContextError(ValueError):
    """A prompt that leaves no room in the model's context (max_seq_len) for a new token."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or from the wrong stage; the message is one readable line."""


# The chat format the chat stages are trained in, written into every checkpoint. 2: each message's content
# after tokenizer.CONTENT_PREFIX (from commit 0fe8a7d); 1 (no key): before it. A model trained in another
# format would be fed prompts it never saw, and answer worse without any error. (An old rm.pt needs no
# check: rlhf.py retrains it anyway, as its key holds the hash of the SFT model it came from.)
CHAT_FORMAT = 2
CHAT_STAGES = ("sft", "rlhf")


def save_checkpoint(path, model, stage, step=0, optimizer=None, args=None, **extra):
    """Write {model_args, model, optimizer, step, stage, args, ...} to a temp file, then rename it over
    `path`: a kill at any moment leaves either the old checkpoint or the new one, never half of one."""
    model = unwrap(model)
    ckpt = {"model_args": asdict(model.args), "model": model.state_dict(), "stage": stage, "step": step,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "args": dict(args) if args is not None else {}, "chat_format": CHAT_FORMAT, **extra}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    except RuntimeError as e:  # torch's writer reports a full disk or a refused file as a RuntimeError
        raise OSError(f"cannot write {path}: {str(e).splitlines()[0]}") from None
    finally:  # a full disk or a second Ctrl-C mid-write: no checkpoint-sized temp file left behind
        if os.path.exists(tmp):
            os.remove(tmp)


def require_checkpoint(path):
    """CheckpointError unless `path` is a file: what a script checks before opening the tokenizer beside it, so a
    missing checkpoint is named as such (and before train.py's data prep replaces that tokenizer)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")


def peek_checkpoint(path):
    """A checkpoint's dict with its tensors left on disk (mmap): its step, args or model_args, read before (or
    instead of) loading its model. Raises what torch.load raises (OSError, RuntimeError, ...)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def check_tokenizer(path, ckpt, tokenizer):
    """CheckpointError if the checkpoint at `path` records a tokenizer other than the fingerprint `tokenizer`
    (None: no check; older checkpoints record none)."""
    if tokenizer is not None and ckpt.get("tokenizer", tokenizer) != tokenizer:
        raise CheckpointError(f"{path} was trained with another tokenizer (fingerprint {ckpt['tokenizer']}, not "
                              f"{tokenizer}): use the tok.model of the run that made it")


def load_checkpoint(path, device="cpu", stages=None, tokenizer=None):
    """Read a checkpoint (weights_only: no code from the file runs) and rebuild its model from model_args.
    stages: the stage names acceptable to the caller; tokenizer: the fingerprint of the tokenizer the caller
    will use (tokenizer.Tokenizer.fingerprint), refused if the checkpoint records another. Returns
    (model, checkpoint dict without its "model" weights: they live in the model, not twice on the device)."""
    require_checkpoint(path)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; say so rather than relay torch's advice
        raise CheckpointError(f"{path} is not a readable twofiles checkpoint (not a file torch.save wrote)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        model = Transformer(ModelArgs.from_dict(ckpt["model_args"]))
        model.load_state_dict(ckpt.pop("model"))
    except Exception as e:  # torch raises many kinds (pickle, zip, key, size mismatch): one message for all
        raise CheckpointError(f"{path} is not a readable twofiles checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if stages is not None and ckpt.get("stage") not in stages:
        raise CheckpointError(f"{path} is a '{ckpt.get('stage')}' checkpoint; expected {' or '.join(stages)}")
    check_tokenizer(path, ckpt, tokenizer)
    if ckpt.get("stage") in CHAT_STAGES and ckpt.get("chat_format", 1) != CHAT_FORMAT:
        raise CheckpointError(f"{path} was trained in chat format {ckpt.get('chat_format', 1)} and this code "
                              f"speaks format {CHAT_FORMAT} (see model.CHAT_FORMAT): re-run sft.py, then rlhf.py")
    return model.to(device), ckpt


def generate_many(model, prompts, max_new_tokens, temperature=0.0, top_k=None, top_p=None, stop_id=None,
                  generator=None, batch_size=256):
    """`generate` for a list of prompts (lists of ids) of any lengths: prompts of equal length are batched
    together (so no padding is needed), results come back in the order given."""
    device = model.tok_embeddings.weight.device
    by_length = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    out = [None] * len(prompts)
    for length, idx in sorted(by_length.items()):
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            batch = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
            for i, new in zip(chunk, generate(model, batch, max_new_tokens, temperature, top_k, top_p, stop_id,
                                              generator)):
                out[i] = new
    return out
