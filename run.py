"""
The second of the two files: runs a twofiles blob (written by export.py) with NumPy and the standard
library only. Nothing from the project is imported, so this file plus the blob can be copied to another
machine and run offline.

It reads and validates the blob, rebuilds the tokenizer (sentencepiece's BPE, in pure Python) and the
chat template from it, and runs the Transformer of model.py, which it mirrors part by part and name by
name (a parity test keeps the two in step), with a KV cache:

    python run.py out/base.bin "People of the valley: Anna Ward"  # complete a prompt (export.py --ckpt
    python run.py out/base.bin                              # out/base.pt --out out/base.bin); dream from nothing
    python run.py out/model.bin --chat                      # talk: one user turn per line, EOF ends
    echo "Where does Anna Ward live?" | python run.py out/model.bin --chat --temperature 0
    python run.py out/model.bin --bench                     # tokens/s of greedy decoding
"""
import argparse
import codecs
import heapq
import itertools
import json
import math
import mmap
import os
import re
import struct
import sys
import time

# BLAS threads. Measured at llama2.c's stories15M shape on an idle 2-core machine: 2 threads ~265 tokens/s,
# 1 thread ~225 (the second core adds memory bandwidth to the 37 MB classifier). But when the other core is
# busy (a training run), 2 threads fall to ~110 while 1 keeps ~230: then use --threads 1. Check with --bench.
DEFAULT_THREADS = 2


def threads_from_argv(argv):
    """The --threads value, read before argparse runs: OpenBLAS fixes its thread count when numpy is
    imported, so this must happen before `import numpy` (argparse in main() documents and checks it)."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


if __name__ == "__main__":
    _threads = threads_from_argv(sys.argv[1:])
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads or os.environ.get(_var, str(DEFAULT_THREADS))

import numpy as np  # noqa: E402  (after the thread count is set)

MAGIC, VERSION, ALIGN = b"twofiles", 2, 64  # as export.py writes them (version 1: no chat.content_prefix)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # sentencepiece's piece types
MAX_SEQ_LEN = 1 << 20  # a sanity bound: the KV cache and RoPE tables are sized by max_seq_len, not by the file


# ----------------------------------------------------------------------------------------------------------
# the blob: read and check everything before trusting any of it

class BlobError(Exception):
    """A file that is not a readable twofiles blob; the message is one line."""


def need(ok, message):
    if not ok:
        raise BlobError(message)


def is_int(x, lo=1):
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


def expected_shapes(a):
    """Every tensor the blob must hold, name -> shape, from the model arguments (model.py's state_dict)."""
    C, H, V, kv = a["dim"], a["hidden_dim"], a["vocab_size"], a["n_kv_heads"] * (a["dim"] // a["n_heads"])
    shapes = {"tok_embeddings.weight": [V, C]}
    for i in range(a["n_layers"]):
        shapes.update({f"layers.{i}.{name}.weight": shape for name, shape in [
            ("attention.wq", [C, C]), ("attention.wk", [kv, C]), ("attention.wv", [kv, C]), ("attention.wo", [C, C]),
            ("feed_forward.w1", [H, C]), ("feed_forward.w2", [C, H]), ("feed_forward.w3", [H, C]),
            ("attention_norm", [C]), ("ffn_norm", [C])]})
    shapes["norm.weight"] = [C]
    if not a["tie_embeddings"]:
        shapes["output.weight"] = [V, C]
    return shapes


def check_header(h, file_size, data_start):
    """Raise BlobError unless the header describes a model whose tensors all lie inside the file."""
    need(isinstance(h, dict) and all(k in h for k in ("model_args", "tokenizer", "chat", "tensors")),
         "header lacks model_args, tokenizer, chat or tensors")
    a, t, c, tensors = h["model_args"], h["tokenizer"], h["chat"], h["tensors"]
    need(isinstance(a, dict), "model_args is not an object")
    for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
        need(is_int(a.get(k)), f"model_args.{k} is {a.get(k)!r}, not a positive integer")
    for k in ("norm_eps", "rope_theta"):
        need(isinstance(a.get(k), (int, float)) and 0 < a[k] < math.inf, f"model_args.{k} is {a.get(k)!r}, not a positive number")
    need(isinstance(a.get("tie_embeddings"), bool), "model_args.tie_embeddings is not true or false")
    need(a["dim"] % a["n_heads"] == 0 and a["n_heads"] % a["n_kv_heads"] == 0 and a["dim"] // a["n_heads"] % 2 == 0,
         f"bad shape: dim {a['dim']}, n_heads {a['n_heads']}, n_kv_heads {a['n_kv_heads']}")
    need(a["max_seq_len"] <= MAX_SEQ_LEN, f"max_seq_len {a['max_seq_len']} is beyond {MAX_SEQ_LEN}")
    # the tensors: count first (n_layers could be huge), then each one's name, dtype, shape and extent
    need(isinstance(tensors, list) and len(tensors) == 2 + 9 * a["n_layers"] + (not a["tie_embeddings"]),
         f"the header lists {len(tensors) if isinstance(tensors, list) else 'no'} tensors; "
         f"a {a['n_layers']}-layer model has {2 + 9 * a['n_layers'] + (not a['tie_embeddings'])}")
    shapes = expected_shapes(a)
    for e in tensors:
        need(isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"] in shapes,
             f"unexpected tensor entry {str(e)[:80]}")
        name = e["name"]
        need(e.get("dtype") == "float16", f"{name} has dtype {e.get('dtype')!r}; this run.py reads float16")
        need(e.get("shape") == shapes[name] and all(is_int(d) for d in e["shape"]),  # 1024.0 == 1024 in Python
             f"{name} has shape {e.get('shape')}, expected {shapes[name]}")
        need(is_int(e.get("offset"), data_start) and e["offset"] % ALIGN == 0,
             f"{name} has a bad offset {e.get('offset')!r}")
        end = e["offset"] + 2 * math.prod(shapes[name])  # Python ints: no overflow on absurd shapes
        need(end <= file_size, f"{name} ends at byte {end}, past the end of the file ({file_size} bytes): truncated?")
    need(len({e["name"] for e in tensors}) == len(shapes), "a tensor is listed twice")
    # the tokenizer and the chat tokens
    need(isinstance(t, dict) and all(isinstance(t.get(k), list) for k in ("pieces", "scores", "types")),
         "tokenizer lacks pieces, scores or types")
    V = a["vocab_size"]
    need(len(t["pieces"]) == len(t["scores"]) == len(t["types"]) == V,
         f"the tokenizer has {len(t['pieces'])} pieces, {len(t['scores'])} scores, {len(t['types'])} types; "
         f"the model has a vocabulary of {V}")
    need(all(isinstance(p, str) and p for p in t["pieces"]), "a tokenizer piece is not a non-empty string")
    need(all(isinstance(s, (int, float)) for s in t["scores"]), "a tokenizer score is not a number")
    need(all(k in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) for k in t["types"]), "bad piece type")
    byte_pieces = {p for p, k in zip(t["pieces"], t["types"]) if k == BYTE}
    need(byte_pieces == {f"<0x{b:02X}>" for b in range(256)}, "the tokenizer lacks its 256 byte-fallback pieces")
    need(isinstance(c, dict) and isinstance(c.get("role_ids"), dict), "chat lacks role_ids")
    need(isinstance(c.get("content_prefix", ""), str), "chat.content_prefix is not a string")
    ids = [t.get("unk_id"), t.get("bos_id"), t.get("eos_id"), c.get("end_id")]
    ids += [c["role_ids"].get(r) for r in ("system", "user", "assistant")]
    need(all(is_int(i, 0) and i < V for i in ids), f"a special token id is missing or out of range: {ids}")


def load_blob(path):
    """(header, {name: float16 array}, release) with the arrays viewing a read-only memory map of the file:
    the OS pages weights in as they are read and nothing is copied until the model decides to."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise BlobError(f"cannot read {path}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(16)
        need(len(prefix) == 16 and prefix[:8] == MAGIC,
             f"{path} is not a twofiles blob (it does not start with {MAGIC.decode()!r}); write one with export.py")
        version, header_len = struct.unpack("<II", prefix[8:])
        need(version <= VERSION, f"{path} is blob format version {version}, newer than this run.py reads "
                                 f"(version {VERSION}): use the run.py that came with it")
        need(version >= 1, f"{path} has an invalid format version {version}")
        need(16 + header_len <= size, f"{path} is truncated: its header needs {16 + header_len} bytes, "
                                      f"the file has {size}")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (ValueError, RecursionError) as e:  # Unicode/JSONDecodeError are ValueErrors; "[[[[..." recurses
            raise BlobError(f"{path} has a corrupt header ({str(e)[:100]})") from None
        try:
            check_header(header, size, 16 + header_len)
        except BlobError as e:
            raise BlobError(f"{path}: {e}") from None
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    weights = {e["name"]: np.frombuffer(buf, dtype="<f2", count=math.prod(e["shape"]), offset=e["offset"])
               .reshape(e["shape"]) for e in header["tensors"]}

    def release(name):
        """Drop the file pages under a tensor from this process once it has been copied to float32: they stay
        in the OS page cache (and fault back in if read again), but RSS stops counting each weight twice,
        float16 in the map beside float32 in the copy (~1x the blob size less peak memory)."""
        if hasattr(buf, "madvise"):  # not on Windows
            start = next(e["offset"] for e in header["tensors"] if e["name"] == name)
            page = start // mmap.PAGESIZE * mmap.PAGESIZE
            buf.madvise(mmap.MADV_DONTNEED, page, start + weights[name].nbytes - page)
    return header, weights, release


# ----------------------------------------------------------------------------------------------------------
# the tokenizer: sentencepiece's BPE encoder (bpe_model.cc) and decoder, from the pieces and scores in the
# blob, set up as tokenizer.py trains it (no normalisation, no dummy prefix, byte fallback)

class Tokenizer:
    def __init__(self, t, chat):
        self.pieces, self.types = t["pieces"], t["types"]
        self.unk_id, self.bos_id, self.eos_id = t["unk_id"], t["bos_id"], t["eos_id"]
        self.role_ids, self.end_id = chat["role_ids"], chat["end_id"]
        self.markers = {self.end_id, *self.role_ids.values()}  # the chat template's structure, never text
        self.content_prefix = chat.get("content_prefix", "")  # absent from version-1 blobs, which had none
        # merges may form normal and user-defined pieces; control, unknown and byte pieces are never merged
        # into (sentencepiece keeps them in a separate table). UNUSED pieces (which sentencepiece forms and
        # splits again) do not occur in our vocabularies and are left out.
        mergeable = [i for i, k in enumerate(self.types) if k in (NORMAL, USER_DEFINED)]
        self.piece_id = {self.pieces[i]: i for i in mergeable}
        self.score = {self.pieces[i]: t["scores"][i] for i in mergeable}
        self.byte_id = {int(p[3:5], 16): i for i, (p, k) in enumerate(zip(self.pieces, self.types)) if k == BYTE}
        # user-defined symbols (the chat markers): only the chat template places them; in text they are split
        # as tokenizer.Tokenizer.encode splits them (longest match first)
        specials = sorted((self.pieces[i] for i in mergeable if self.types[i] == USER_DEFINED), key=len, reverse=True)
        self.special = re.compile("|".join(map(re.escape, specials))) if specials else None

    def bpe(self, text):
        """Start from one symbol per character; repeatedly merge the adjacent pair whose merged piece has the
        highest score (leftmost on ties); then a symbol not in the vocabulary becomes its UTF-8 bytes."""
        sym = list(text)
        nxt, prv = list(range(1, len(sym))) + [-1], list(range(-1, len(sym) - 1))  # a linked list of symbols
        heap = []  # (-score, left index, merged piece); an entry is stale once either side has changed

        def push(i):
            if i >= 0 and nxt[i] >= 0:
                merged = sym[i] + sym[nxt[i]]
                if merged in self.score:
                    heapq.heappush(heap, (-self.score[merged], i, merged))

        for i in range(len(sym) - 1):
            push(i)
        while heap:
            _, i, merged = heapq.heappop(heap)
            j = nxt[i]
            if not sym[i] or j < 0 or sym[i] + sym[j] != merged:
                continue  # stale: one side was merged into something else after this pair was pushed
            sym[i], sym[j] = merged, ""
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            push(prv[i])
            push(i)
        ids, i = [], 0 if sym else -1
        while i >= 0:
            if sym[i] in self.piece_id:
                ids.append(self.piece_id[sym[i]])
            else:
                ids.extend(self.byte_id[b] for b in sym[i].encode("utf-8"))
            i = nxt[i]
        return ids

    def encode(self, text):
        """str -> ids, as tokenizer.Tokenizer.encode (no BOS/EOS: callers add them)."""
        text = text.replace(" ", "\u2581")  # sentencepiece's whitespace escape: spaces live inside pieces as U+2581
        if self.special is None:
            return self.bpe(text)
        ids, pos = [], 0
        for m in self.special.finditer(text):  # "<|end|>" in text: "<" and "|end|>" apart, never the marker
            ids += self.bpe(text[pos:m.start()]) + self.bpe(m.group()[:1]) + self.bpe(m.group()[1:])
            pos = m.end()
        return ids + self.bpe(text[pos:])

    def is_control(self, i):
        """<s>, </s> (or an id outside the vocabulary): shown as nothing, and a break between the bytes on its two
        sides, which sentencepiece decodes apart (<0xC3></s><0xA8> is two U+FFFD, not the "è" of <0xC3><0xA8>)."""
        return not 0 <= i < len(self.types) or self.types[i] == CONTROL

    def piece_bytes(self, i):
        """The bytes of one id that is not a control token: its byte, or its piece with U+2581 back to spaces."""
        if self.types[i] == BYTE:
            return bytes([int(self.pieces[i][3:5], 16)])
        if self.types[i] == UNKNOWN:
            return " \u2047 ".encode()  # sentencepiece's surface for <unk>
        return self.pieces[i].replace("\u2581", " ").encode()

    def decode(self, ids):
        return "".join(replace_bad_bytes(b"".join(map(self.piece_bytes, run)).decode("utf-8", "surrogateescape"))
                       for control, run in itertools.groupby(ids, self.is_control) if not control)


def replace_bad_bytes(text):
    """Text decoded with errors="surrogateescape", each byte that was not UTF-8 now one U+FFFD, as sentencepiece
    writes them (errors="replace" writes one U+FFFD for a whole broken sequence)."""
    return re.sub("[\udc80-\udcff]", "\ufffd", text)


def render_chat(tok, messages, add_generation_prompt=False):
    """tokenizer.render_chat's ids (run.py has no use for the training mask): [bos], then for each message
    [role token] + encode(content prefix + content) + [<|end|>], then [<|assistant|>] when asking for an answer."""
    ids = [tok.bos_id]
    for m in messages:
        ids += [tok.role_ids[m["role"]], *tok.encode(tok.content_prefix + m["content"]), tok.end_id]
    if add_generation_prompt:
        ids.append(tok.role_ids["assistant"])
    return ids


# ----------------------------------------------------------------------------------------------------------
# the model, in model.py's order. Shape letters as there: T time, C dim, nh heads, nkv key/value heads,
# hs head size, V vocab, H hidden_dim, S tokens attended to. No batch dimension: run.py serves one stream.

def rmsnorm(x, weight, eps):
    # RMSNorm.forward: (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)) * self.weight
    return x * (1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)) * weight


def rope_tables(hs, max_seq_len, theta):
    # rope_tables: freqs = 1 / theta^(2i/hs); angles = outer(positions, freqs)   -> cos, sin (T, hs/2)
    freqs = 1.0 / (theta ** (np.arange(0, hs, 2, dtype=np.float32) / hs))
    angles = np.outer(np.arange(max_seq_len, dtype=np.float32), freqs.astype(np.float32))
    return np.cos(angles), np.sin(angles)


def apply_rotary_emb(x, freqs_cis):
    # apply_rotary_emb: rotate consecutive pairs (x0, x1) by their position's angles: x0 * cos - x1 * sin,
    # x0 * sin + x1 * cos. Seen as the complex number x0 + i x1 (Meta's formulation) that is one multiplication
    # by cos + i sin. x (T, n, hs) float32, freqs_cis (T, hs/2) complex64
    # (contiguous first: x is a column slice of the qkv matmul, and NumPy before 1.23 views only contiguous arrays)
    return (np.ascontiguousarray(x).view(np.complex64) * freqs_cis[:, None, :]).view(np.float32)  # (T, n, hs)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Transformer:
    def __init__(self, a, w, release=lambda name: None):
        self.a = a
        self.nh, self.nkv, self.hs = a["n_heads"], a["n_kv_heads"], a["dim"] // a["n_heads"]
        # float16 -> float32, once, for every matrix: BLAS has no float16 kernels and numpy's own float16
        # matmul is ~25x slower (40 ms against 1.7 ms for a 32000x288 classifier). It doubles the weights'
        # memory (2 -> 4 bytes). Matrices are stored transposed, (in, out), so a layer is `x @ W` and the
        # matrix-vector product streams memory in order (the classifier: 1.7 ms as x @ W.T-contiguous,
        # 4.7 ms as W @ x on this machine).
        def linear(*names):  # nn.Linear weights (out, in) -> one float32 (in, sum of outs)
            m = np.concatenate([w[n] for n in names]) if len(names) > 1 else w[names[0]]
            m = np.ascontiguousarray(m.T, dtype=np.float32)
            for n in names:
                release(n)
            return m

        def vector(name):
            return w[name].astype(np.float32)

        # the embedding stays float16 in the memory map: a lookup reads T rows, so a float32 copy buys nothing
        self.tok_embeddings = w["tok_embeddings.weight"]  # (V, C)
        # wq, wk, wv side by side as one (C, (nh + 2 nkv) hs) matrix, and w1, w3 as one (C, 2H): one matmul and
        # one RoPE call instead of three and two (measured: +14% tokens/s at stories15M shape)
        self.layers = []
        for i in range(a["n_layers"]):
            p = f"layers.{i}."
            self.layers.append({
                "attention_norm": vector(p + "attention_norm.weight"), "ffn_norm": vector(p + "ffn_norm.weight"),
                "wqkv": linear(*(p + f"attention.{k}.weight" for k in ("wq", "wk", "wv"))),  # (C, (nh + 2 nkv) hs)
                "wo": linear(p + "attention.wo.weight"),  # (C, C)
                "w13": linear(p + "feed_forward.w1.weight", p + "feed_forward.w3.weight"),  # (C, 2H)
                "w2": linear(p + "feed_forward.w2.weight")})  # (H, C)
        self.norm = vector("norm.weight")
        self.output = linear("tok_embeddings.weight" if a["tie_embeddings"] else "output.weight")  # (C, V)
        cos, sin = rope_tables(self.hs, a["max_seq_len"], a["rope_theta"])
        self.freqs_cis = (cos + 1j * sin).astype(np.complex64)  # (max_seq_len, hs/2)
        # KVCache: preallocated once, (n_layers, nkv, max_seq_len, hs) each, float32
        shape = (a["n_layers"], self.nkv, a["max_seq_len"], self.hs)
        self.cache_k, self.cache_v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def attention(self, x, i, start_pos, freqs_cis):
        # Attention.forward, one layer, appending this chunk's keys and values to the cache
        L, (T, C) = self.layers[i], x.shape
        nh, nkv, hs = self.nh, self.nkv, self.hs
        qkv = x @ L["wqkv"]  # (T, (nh + 2 nkv) hs): self.wq(x), self.wk(x), self.wv(x) side by side
        qk = apply_rotary_emb(qkv[:, :(nh + nkv) * hs].reshape(T, nh + nkv, hs), freqs_cis)  # (T, nh + nkv, hs)
        q, k = qk[:, :nh], qk[:, nh:]  # (T, nh, hs), (T, nkv, hs)
        v = qkv[:, (nh + nkv) * hs:].reshape(T, nkv, hs)  # (T, nkv, hs)
        S = start_pos + T
        self.cache_k[i, :, start_pos:S] = k.transpose(1, 0, 2)  # cache.k[layer][:B, :, start_pos:start_pos + T] = k
        self.cache_v[i, :, start_pos:S] = v.transpose(1, 0, 2)
        k, v = self.cache_k[i, :, :S], self.cache_v[i, :, :S]  # (nkv, S, hs)
        # grouped-query attention without repeat_interleave: query head h = j * n_rep + r uses kv head j, so
        # the queries are grouped under their kv head and every head is one batched matmul (no Python loop)
        n_rep = nh // nkv
        q = q.reshape(T, nkv, n_rep, hs).transpose(1, 0, 2, 3).reshape(nkv, T * n_rep, hs)  # (nkv, T*n_rep, hs)
        att = (q @ k.transpose(0, 2, 1)) * hs ** -0.5  # (nkv, T*n_rep, S); a Python float keeps float32
        if T > 1:  # query t sits at start_pos + t and sees keys 0..start_pos + t (the causal mask)
            mask = np.triu(np.full((T, S), -np.inf, np.float32), k=start_pos + 1)  # (T, S)
            att = (att.reshape(nkv, T, n_rep, S) + mask[:, None, :]).reshape(nkv, T * n_rep, S)
        y = softmax(att) @ v  # (nkv, T*n_rep, hs)
        y = y.reshape(nkv, T, n_rep, hs).transpose(1, 0, 2, 3).reshape(T, C)  # (T, C), heads back in order
        return y @ L["wo"]

    def feed_forward(self, x, i):
        # FeedForward.forward: self.w2(F.silu(self.w1(x)) * self.w3(x)); silu(z) = z * sigmoid(z), written
        # with tanh so large negative z cannot overflow exp
        L, H = self.layers[i], self.a["hidden_dim"]
        h13 = x @ L["w13"]  # (T, 2H): self.w1(x), self.w3(x) side by side
        h1, h3 = h13[:, :H], h13[:, H:]  # (T, H) each
        return (h1 * (0.5 + 0.5 * np.tanh(0.5 * h1)) * h3) @ L["w2"]  # (T, C)

    def features(self, tokens, start_pos):
        # Transformer.features: tokens (T,) following start_pos cached tokens -> final hidden states (T, C)
        T = len(tokens)
        if start_pos + T > self.a["max_seq_len"]:
            raise ValueError(f"sequence of {start_pos + T} tokens is longer than max_seq_len {self.a['max_seq_len']}")
        h = self.tok_embeddings[tokens].astype(np.float32)  # (T, C)
        freqs_cis = self.freqs_cis[start_pos:start_pos + T]  # (T, hs/2)
        eps = self.a["norm_eps"]
        for i, L in enumerate(self.layers):
            # TransformerBlock.forward: h = x + attention(attention_norm(x)); h + feed_forward(ffn_norm(h))
            h = h + self.attention(rmsnorm(h, L["attention_norm"], eps), i, start_pos, freqs_cis)
            h = h + self.feed_forward(rmsnorm(h, L["ffn_norm"], eps), i)
        return rmsnorm(h, self.norm, eps)

    def forward(self, tokens, start_pos=0):
        # Transformer.forward: logits (T, V)
        return self.features(tokens, start_pos) @ self.output


# ----------------------------------------------------------------------------------------------------------
# sampling (model.sample_next) and generation (model.generate)

def sample_next(logits, temperature, top_k, top_p, rng):
    """One token from logits (V,): greedy at temperature 0, else softmax(logits / T) cut to the top k
    and/or the nucleus: the smallest set of most likely tokens whose probability reaches top_p."""
    if temperature == 0:
        return int(logits.argmax())
    with np.errstate(over="ignore"):  # a tiny temperature sends all but the top logit to -inf: greedy, as it should
        logits = (logits.astype(np.float64) - logits.max()) / temperature
    if top_k and top_k < len(logits):
        logits[logits < np.partition(logits, -top_k)[-top_k]] = -np.inf
    probs = softmax(logits)
    if top_p < 1.0:
        # sorting all V probabilities costs ~1.5 ms at V=32000; only tokens above a small cutoff (run.c's
        # trick) need sorting. Exact: when those candidates hold top_p of the mass, the nucleus is among them.
        cand = np.flatnonzero(probs >= (1.0 - top_p) / max(len(probs) - 1, 1))
        if probs[cand].sum() < top_p:
            cand = np.arange(len(probs))
        cand = cand[np.argsort(-probs[cand], kind="stable")]
        p = probs[cand]
        keep = p[(np.cumsum(p) - p) < top_p]  # drop the tokens after the nucleus is already full
        probs = np.zeros_like(probs)
        probs[cand[:len(keep)]] = keep
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


def generate(model, ids, n_cached, max_new_tokens, sample, stop_id=None):
    """Yield up to max_new_tokens new ids after `ids`, whose first n_cached are already in the KV cache,
    stopping after stop_id. The uncached prompt goes through in one pass (prefill), then one token per pass."""
    max_new_tokens = min(max_new_tokens, model.a["max_seq_len"] - len(ids))
    if max_new_tokens <= 0:
        return
    logits = model.features(ids[n_cached:], n_cached)[-1] @ model.output  # (V,): only the last position matters
    for pos in range(len(ids), len(ids) + max_new_tokens):
        nxt = sample(logits)
        yield nxt
        if nxt == stop_id or pos + 1 == len(ids) + max_new_tokens:
            return
        logits = model.forward([nxt], pos)[0]


class Printer:
    """Streams ids to stdout as text: a character split over several byte tokens appears once complete, and
    `skip` (an answer's content prefix) is left out if the text starts with it."""

    def __init__(self, tok, skip=""):
        self.tok, self.utf8 = tok, codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.skip, self.head = skip, ""  # head: the text held back while it may still be the prefix

    def write(self, ids, final=False):
        text = ""
        for control, run in itertools.groupby(ids, self.tok.is_control):  # a control token ends a broken character
            text += self.utf8.decode(b"" if control else b"".join(map(self.tok.piece_bytes, run)), final=control)
        text = replace_bad_bytes(text + self.utf8.decode(b"", final=final))
        if self.skip:  # hold text back until it is known whether it starts with the prefix
            self.head += text
            if len(self.head) < len(self.skip) and self.skip.startswith(self.head) and not final:
                return
            text, self.skip = self.head.removeprefix(self.skip), ""
        sys.stdout.write(text)
        sys.stdout.flush()


# ----------------------------------------------------------------------------------------------------------
# the three modes

def complete(model, tok, prompt, args, sample, stats):
    """A document that starts with the prompt: encoded after BOS, continued until EOS or max tokens."""
    ids = [tok.bos_id] + tok.encode(prompt)
    ctx = model.a["max_seq_len"]
    if len(ids) >= ctx:  # keep BOS and the prompt's end, leaving half the context to write in
        keep = ctx // 2
        print(f"note: the prompt is {len(ids)} tokens and the context {ctx}: keeping its last {keep}", file=sys.stderr)
        ids = [tok.bos_id] + ids[len(ids) - keep:]  # not ids[-keep:]: that is all of them when keep is 0
    elif ctx - len(ids) < min(args.max_new_tokens, ctx // 2):
        print(f"note: the prompt leaves room for {ctx - len(ids)} new tokens in the context of {ctx}", file=sys.stderr)
    out = Printer(tok)
    out.write(ids[1:])
    for t in stats.timed(generate(model, ids, 0, args.max_new_tokens, sample, tok.eos_id)):
        out.write([] if t == tok.eos_id else [t])
    out.write([], final=True)
    print()


def fit_context(tok, messages, ctx, room):
    """(the rendered prompt, the messages kept), dropping the oldest user/assistant exchanges (never the system
    message or the new user turn) until `room` tokens are left for the answer; the prompt is None if the new turn
    alone cannot fit."""
    first = 1 if messages[0]["role"] == "system" else 0
    while True:
        ids = render_chat(tok, messages, add_generation_prompt=True)
        if len(ids) + room <= ctx or len(messages) - first <= 1:
            return (ids, messages) if len(ids) < ctx else (None, messages)
        messages = messages[:first] + messages[first + 2:]


def chat(model, tok, args, sample, stats):
    """Multi-turn chat rendered as tokenizer.render_chat renders it; each answer ends at <|end|>. Turns come
    from PROMPT (one turn) or stdin, one per line, until EOF; the KV cache keeps what the last turn computed.
    Returns the conversation."""
    ctx, interactive = model.a["max_seq_len"], args.prompt is None and sys.stdin.isatty()
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None and not args.prompt.strip():
        sys.exit("error: the message is empty: give one, or none to read turns from stdin")
    if messages and len(render_chat(tok, messages, add_generation_prompt=True)) >= ctx // 2:
        sys.exit(f"error: the --system message is too long for the model's context of {ctx} tokens: "
                 f"it must leave room for a question and an answer")
    cached = []  # the ids whose keys and values are in the cache
    turns = iter([args.prompt] if args.prompt is not None else iter(sys.stdin.readline, ""))
    while True:
        if interactive:
            print("user> ", end="", file=sys.stderr, flush=True)
        line = next(turns, None)
        if line is None:
            break
        if not line.strip():
            continue
        ids, kept = fit_context(tok, messages + [{"role": "user", "content": line.rstrip("\r\n")}], ctx,
                                min(args.max_new_tokens, ctx // 2))
        if ids is None:
            if args.prompt is not None:  # the one turn of the command line: nothing else to answer
                sys.exit(f"error: the message does not fit the model's context of {ctx} tokens")
            print(f"note: that message does not fit the model's context of {ctx} tokens; say something shorter",
                  file=sys.stderr)
            continue
        if len(kept) < len(messages) + 1:
            print(f"note: the oldest turns were dropped to fit the context of {ctx} tokens", file=sys.stderr)
        n_cached = 0  # reuse the cache up to the first token that differs from what it holds
        while n_cached < min(len(cached), len(ids) - 1) and cached[n_cached] == ids[n_cached]:
            n_cached += 1
        if interactive:
            print("assistant> ", end="", file=sys.stderr, flush=True)
        out, reply = Printer(tok, skip=tok.content_prefix), []
        # a marker the model writes mid-answer is neither shown nor kept (the history is text, and
        # Tokenizer.encode would spell it out), as llama.cpp leaves out control tokens
        for t in stats.timed(generate(model, ids, n_cached, args.max_new_tokens, sample, tok.end_id)):
            reply.append(t)
            out.write([] if t in tok.markers else [t])
        out.write([], final=True)
        print()
        cached = ids + reply[:-1]  # the last sampled token was never fed through the model
        text = tok.decode([t for t in reply if t not in tok.markers]).removeprefix(tok.content_prefix)
        messages = kept + [{"role": "assistant", "content": text}]
    return messages


class Stats:
    """Tokens/s of generation from the first new token (the prefill excluded; run.c skips its first step too but
    counts the prompt's tokens: the two agree for a prompt of BOS alone). --bench times its own loop, all of it."""

    def __init__(self):
        self.tokens, self.seconds = 0, 0.0

    def timed(self, tokens):
        start = None
        for t in tokens:
            if start is None:
                start = time.perf_counter()
            else:
                self.tokens += 1
            yield t
        if start is not None:
            self.seconds += time.perf_counter() - start

    def report(self):
        if self.tokens:
            print(f"achieved tok/s: {self.tokens / self.seconds:.1f} ({self.tokens} tokens in {self.seconds:.2f} s)",
                  file=sys.stderr)


def bench(model, tok, args):
    """A fixed greedy generation from BOS, 256 tokens or up to the context, never stopping early."""
    n = min(256, model.a["max_seq_len"] - 1)
    greedy = lambda logits: int(logits.argmax())  # noqa: E731
    list(generate(model, [tok.bos_id], 0, 8, greedy))  # warm up: first-touch page faults, BLAS thread start-up
    start = time.perf_counter()
    got = len(list(generate(model, [tok.bos_id], 0, n, greedy)))
    seconds = time.perf_counter() - start
    print(f"bench: {got} tokens in {seconds:.2f} s: {got / seconds:.1f} tokens/s (greedy, "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', '?')} BLAS threads, dim {model.a['dim']}, "
          f"{model.a['n_layers']} layers, vocab {model.a['vocab_size']})")


def main():
    # allow_abbrev=False: threads_from_argv must see --threads spelled out before argparse runs
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the blob written by export.py (e.g. out/model.bin)")
    parser.add_argument("prompt", nargs="?", default=None,
                        help="text to complete; with --chat, a single user turn (default: complete from nothing, "
                             "or read chat turns from stdin)")
    parser.add_argument("--chat", action="store_true", help="chat with the chat template; stops each answer at <|end|>")
    parser.add_argument("--system", default=None, help="with --chat: a system message to start the conversation")
    # sampling
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 = greedy; below 1 sharpens the distribution (default 0.8: small models derail "
                             "less than at 1.0 but still vary)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens only (0 = off)")
    parser.add_argument("--top-p", type=float, default=0.9,
                        help="nucleus sampling: the most likely tokens holding this much probability (default 0.9, "
                             "as llama2.c: cuts the long tail of unlikely tokens; 1 = off)")
    parser.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="new tokens at most, per answer or completion (default 256; the context caps it)")
    # runtime
    parser.add_argument("--bench", action="store_true", help="time a fixed greedy generation and print tokens/s")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"BLAS threads (default {DEFAULT_THREADS}, unless OPENBLAS_NUM_THREADS is set)")
    args = parser.parse_intermixed_args()  # options may come between the model and the prompt
    if (not 0 <= args.temperature < math.inf or not 0 < args.top_p <= 1 or args.top_k < 0 or args.max_new_tokens < 1
            or args.threads < 1 or (args.seed or 0) < 0):
        parser.error("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, --max-new-tokens >= 1, --threads >= 1, "
                     "--seed >= 0")
    if args.system is not None and not args.chat:
        parser.error("--system starts a chat: give --chat too")
    if sys.stdout is None or (args.chat and args.prompt is None and sys.stdin is None):  # started with >&- or <&-
        sys.exit("error: " + ("stdout is closed: nowhere to write" if sys.stdout is None else
                              "stdin is closed: give the turn as PROMPT, or pipe the turns in"))
    for stream in (sys.stdout, sys.stdin):  # never die on a character the terminal cannot show or send
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    # bytes in argv that are not UTF-8 arrive as surrogates (PEP 383), which cannot be encoded: replace them
    args.prompt, args.system = [None if s is None else s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                                for s in (args.prompt, args.system)]

    rng = np.random.default_rng(args.seed)
    sample = lambda logits: sample_next(logits, args.temperature, args.top_k, args.top_p, rng)  # noqa: E731
    stats = Stats()
    try:  # Ctrl-C anywhere (loading a big blob, --bench, a chat) stops quietly
        try:
            header, weights, release = load_blob(args.model)
        except BlobError as e:
            sys.exit(f"error: {e}")
        model = Transformer(header["model_args"], weights, release)
        tok = Tokenizer(header["tokenizer"], header["chat"])
        if args.bench:
            return bench(model, tok, args)
        if args.chat:
            if header.get("stage") == "base":
                print("note: this is a base model (not finetuned to chat): it writes on, not answers", file=sys.stderr)
            chat(model, tok, args, sample, stats)
        else:
            complete(model, tok, args.prompt or "", args, sample, stats)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `| head` closed the pipe: nothing more to say, and stdout cannot be flushed
        os._exit(0)
    except OSError as e:  # stdout on a full disk: say so, and do not let the exit's flush fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(f"error: {e}")
    stats.report()


if __name__ == "__main__":
    main()
