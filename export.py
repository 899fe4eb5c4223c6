"""
Export a trained twofiles model to one file that runs without PyTorch or the internet.

Reads a checkpoint of any generating stage (base, SFT or RLHF; the reward model is not a generator) and
its tokenizer, and writes one of:

  blob     (default) the twofiles blob for run.py: a little-endian file with a magic, a format version,
           a JSON header (ModelArgs, the tokenizer's pieces/scores/types, the special and chat token ids,
           the stage, every tensor's name/shape/offset) and the weights as float16, each tensor aligned
           to 64 bytes so run.py can memory-map it. The layout is documented in the README.
  llama2c  llama2.c's legacy float32 `.bin` (version 0: seven int32s, then the weights in run.c's order)
           plus its `tokenizer.bin` beside it, so llama2.c's unmodified run.c runs our models.
  gguf     GGUF version 3, for llama.cpp, LM Studio and ollama: architecture `llama`, float16 matrices and
           float32 norms, the sentencepiece vocabulary, the special token ids and the chat template as Jinja.

After writing a blob, export.py checks it the way a user would: it loads the blob with run.py's own loader,
compares run.py's logits with PyTorch's (on the same float16-rounded weights) at every position of a short
prompt and times a greedy generation; a blob named model.bin (the default) also writes the `runtime` section of
report.md / report.json in its directory.

By default the latest stage's checkpoint in out/ (out/rlhf.pt, else out/sft.pt, else out/base.pt) goes to
out/model.bin (blob), out/llama2c.bin + out/tokenizer.bin (llama2c) or out/model.gguf (gguf): the output goes
beside the checkpoint (--ckpt run2/sft.pt -> run2/model.bin), and the tokenizer is tok.model there unless
--tokenizer says otherwise.

    python export.py                                   # out/rlhf.pt (or sft, base) -> out/model.bin, checked
    python export.py --ckpt out/base.pt --out out/base.bin
    python export.py --format llama2c                  # -> out/llama2c.bin, out/tokenizer.bin
    python export.py --format gguf --ckpt out/sft.pt   # -> out/model.gguf
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import torch

import common
import model
import run  # the runtime, imported to check the blob with its own loader (run.py itself imports nothing of ours)
import tokenizer

MAGIC = b"twofiles"  # the first 8 bytes of every blob
VERSION = 2  # bump on any change an older reader would misread; run.py refuses newer versions
# (2: the chat template encodes each message after chat.content_prefix; version 1 had none)
ALIGN = 64  # every tensor starts at a multiple of 64 bytes: aligned for memory mapping and SIMD loads
STAGES = ("rlhf", "sft", "base")  # the generating stages, newest first (the default --ckpt search order)


def default_checkpoint(out_dir="out"):
    """The latest generating stage's checkpoint in out_dir: rlhf, else sft, else base."""
    for stage in STAGES:
        path = os.path.join(out_dir, f"{stage}.pt")
        if os.path.isfile(path):
            return path
    raise model.CheckpointError(f"no checkpoint in {out_dir}/ (looked for {', '.join(s + '.pt' for s in STAGES)}); "
                                "train one with train.py, or pass --ckpt")


def made_by_export(path):
    """Which export wrote the file at `path` ("blob", "gguf", "llama2c" or "llama2c tokenizer"; None: not one),
    the only kind --out replaces: a blob or a GGUF file (their magic), or llama2.c's model (its seven int32s give
    its size exactly) or tokenizer.bin (its records fill it exactly). Anything else may be someone's data
    (comparisons.jsonl holds a person's labels)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(28)
        if head.startswith((MAGIC, GGUF_MAGIC)):
            return "blob" if head.startswith(MAGIC) else "gguf"
        if len(head) == 28:  # write_llama2c's layout
            dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", head)
            if min(dim, hidden, n_layers, n_heads, n_kv, seq_len) > 0 and vocab and dim % n_heads == 0:
                kv = n_kv * (dim // n_heads)
                floats = (abs(vocab) * dim * (1 if vocab > 0 else 2) + dim + seq_len * (dim // n_heads)
                          + n_layers * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim))
                if 28 + 4 * floats == size:
                    return "llama2c"
        f.seek(0)  # write_llama2c's tokenizer.bin: max_token_length, then (score, length, bytes) to the end
        longest, at = (struct.unpack("<i", head[:4])[0] if len(head) >= 4 else -1), 4
        while 0 <= longest and at + 8 <= size:
            f.seek(at + 4)
            n = struct.unpack("<i", f.read(4))[0]
            if not 0 < n <= longest:
                return None
            at += 8 + n
        return "llama2c tokenizer" if longest >= 0 and at == size > 4 else None


def check_out_path(out, inputs, kind):
    """Refuse an output path whose replacement would destroy something: a directory, a device or other
    special file, one of the export's inputs, a checkpoint, tokenizer or report (an easy slip: --out for --ckpt),
    any existing file an export did not write, or an export of another `kind` (`--format llama2c --out
    out/model.bin` replaced the blob run.py reads)."""
    if not out or out.endswith(os.sep):
        raise ValueError(f"--out {out!r} names no file: name one, e.g. out/model.bin")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):  # the nearest part of the path that exists must be a directory
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {out}: {parent} is a file, not a directory")
    if os.path.isdir(out):
        raise ValueError(f"--out {out} is a directory: name a file in it, e.g. {os.path.join(out, 'model.bin')}")
    if os.path.lexists(out) and not os.path.isfile(out):
        raise ValueError(f"--out {out} exists and is not a regular file")
    if (any(os.path.exists(out) and os.path.samefile(out, p) for p in inputs)
            or out.endswith((".pt", ".model", ".vocab"))
            or os.path.basename(out) in ("report.md", "report.json", "train.bin", "val.bin", "data.json")):
        raise ValueError(f"--out {out} would overwrite a checkpoint, tokenizer, token file or report; write to a new "
                         "name, e.g. model.bin")
    found = made_by_export(out) if os.path.exists(out) else None
    if os.path.exists(out) and not found:
        raise ValueError(f"--out {out} would overwrite a file that is not an export (a blob, GGUF or llama2.c file); "
                         "write to a new name, e.g. model.bin")
    if found not in (None, kind):
        raise ValueError(f"--out {out} is a {found} export, which a {kind} would replace: write to a new name "
                         "(or remove it first)")


def load(ckpt_path, tok_path):
    """(model, stage, step, tokenizer) of a generating checkpoint, with its tokenizer checked against it."""
    tok = tokenizer.Tokenizer(tok_path)
    net, ckpt = model.load_checkpoint(ckpt_path, tokenizer=tok.fingerprint)  # same size, other pieces: refused
    stage = ckpt.get("stage")
    if net.args.reward_head or stage == "rm":
        raise model.CheckpointError(f"{ckpt_path} is a reward model (stage '{stage}', with a reward head): it scores "
                                    "text but does not generate it, so there is nothing to export; export the policy "
                                    "(out/rlhf.pt) or another stage's checkpoint instead")
    if stage not in STAGES:
        raise model.CheckpointError(f"{ckpt_path} is a '{stage}' checkpoint; expected {' or '.join(STAGES)}")
    if tok.vocab_size != net.args.vocab_size:
        raise ValueError(f"the model's vocab ({net.args.vocab_size}) is not the tokenizer's ({tok.vocab_size} in "
                         f"{tok_path}): pass the tokenizer the model was trained with (--tokenizer)")
    return net, stage, ckpt.get("step", 0), tok


def blob_tensors(net):
    """(name, float32 array) for every weight run.py needs, in model.py's state_dict order. A tied output
    matrix is the embedding itself: it is written once, as tok_embeddings.weight."""
    out = []
    for name, t in net.state_dict().items():
        if name == "output.weight" and net.args.tie_embeddings:
            continue
        out.append((name, t.detach().float().cpu().numpy()))
    return out


def blob_header(net, stage, step, tok, tensors, data_start):
    """The JSON header: everything run.py needs besides the weights, with each tensor's absolute offset."""
    pieces = tok.pieces()
    entries, offset = [], data_start
    for name, a in tensors:
        entries.append({"name": name, "dtype": "float16", "shape": list(a.shape), "offset": offset})
        offset += -(-a.size * 2 // ALIGN) * ALIGN  # float16 bytes, rounded up to the alignment
    return {
        "stage": stage, "step": step,
        "model_args": {k: getattr(net.args, k) for k in net.args.__dataclass_fields__},
        "tokenizer": {"pieces": [p for p, _, _ in pieces], "scores": [s for _, s, _ in pieces],
                      "types": [k for _, _, k in pieces],
                      "unk_id": tok.unk_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id},
        # the chat template of tokenizer.render_chat: [bos] + per message [role_ids[role]]
        # + encode(content_prefix + content) + [end_id], then [role_ids["assistant"]] to ask for an answer
        "chat": {"role_ids": dict(tok.role_ids), "end_id": tok.end_id, "content_prefix": tokenizer.CONTENT_PREFIX},
        "tensors": entries,
    }


def write_blob(path, net, stage, step, tok):
    """magic | version (u32) | header length (u32) | JSON header | zero padding | float16 tensors, each
    64-byte aligned at the offset the header gives. The data offsets depend on the header's length, which
    depends on the offsets' digits: iterate until the layout is stable (two passes in practice)."""
    tensors = blob_tensors(net)
    data_start = 0
    while True:
        header = json.dumps(blob_header(net, stage, step, tok, tensors, data_start), ensure_ascii=False).encode()
        start = -(-(16 + len(header)) // ALIGN) * ALIGN
        if start == data_start:
            break
        data_start = start
    with common.atomic_open(path, "wb") as f:  # a failure mid-write never leaves a half blob under the final name
        f.write(MAGIC + struct.pack("<II", VERSION, len(header)) + header)
        for entry, (_, a) in zip(json.loads(header)["tensors"], tensors):
            f.write(b"\0" * (entry["offset"] - f.tell()))
            f.write(a.astype("<f2").tobytes())
        f.write(b"\0" * (-f.tell() % ALIGN))


def llama2c_order(tok):
    """A permutation of the token ids into llama2.c's layout: run.c hard-codes <unk> 0, <s> 1, </s> 2 and
    byte b at id 3 + b (its byte fallback), while sentencepiece puts our user-defined chat tokens before
    the bytes. Permuting the embedding rows with the vocabulary leaves the model's function unchanged."""
    pieces = tok.pieces()
    byte_id = {int(p[3:5], 16): i for i, (p, _, kind) in enumerate(pieces) if kind == tokenizer.BYTE}
    if (tok.unk_id, tok.bos_id, tok.eos_id) != (0, 1, 2) or len(byte_id) != 256:
        raise ValueError("llama2.c needs <unk>, <s>, </s> at ids 0, 1, 2 and 256 byte-fallback pieces; "
                         "this tokenizer has neither layout")
    head = [0, 1, 2] + [byte_id[b] for b in range(256)]
    moved = set(head)
    return head + [i for i in range(len(pieces)) if i not in moved]


def write_llama2c(path, tok_path, net, tok):
    """llama2.c's legacy format (its export.py `legacy_export`, version 0), read by run.c:
    int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative: output not tied), seq_len;
    then float32: tok_embeddings, attention_norm x layers, wq x layers, wk, wv, wo, ffn_norm, w1, w2, w3,
    norm, the RoPE cos and sin tables (seq_len, hs/2) that run.c skips, and output when not tied.
    tokenizer.bin: int32 max_token_length, then per id: float32 score, int32 length, UTF-8 bytes."""
    a = net.args
    if a.rope_theta != 10000.0 or a.norm_eps != 1e-5:
        raise ValueError(f"run.c hard-codes rope_theta 10000 and norm_eps 1e-5; this model has rope_theta "
                         f"{a.rope_theta} and norm_eps {a.norm_eps}, which run.c would silently get wrong")
    perm = llama2c_order(tok)
    sd = {k: v.detach().float().cpu().numpy() for k, v in net.state_dict().items()}
    per_layer = ["attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo",
                 "ffn_norm", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]
    cos, sin = model.rope_tables(a.dim // a.n_heads, a.max_seq_len, a.rope_theta)
    arrays = [sd["tok_embeddings.weight"][perm]]
    arrays += [sd[f"layers.{i}.{name}.weight"] for name in per_layer for i in range(a.n_layers)]
    arrays += [sd["norm.weight"], cos.numpy(), sin.numpy()]
    if not a.tie_embeddings:
        arrays.append(sd["output.weight"][perm])
    vocab = a.vocab_size if a.tie_embeddings else -a.vocab_size
    with common.atomic_open(path, "wb") as f:
        f.write(struct.pack("<7i", a.dim, a.hidden_dim, a.n_layers, a.n_heads, a.n_kv_heads, vocab, a.max_seq_len))
        for arr in arrays:
            f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    # pieces as run.c prints them: U+2581 back to a space, <s> and </s> on lines of their own (as llama2.c's
    # tokenizer.py writes them), byte pieces kept as the text "<0xXX>" which run.c's decode turns into the byte
    pieces = tok.pieces()
    names = {tok.bos_id: "\n<s>\n", tok.eos_id: "\n</s>\n"}
    encoded = [(names.get(i, pieces[i][0].replace("\u2581", " ")).encode(), pieces[i][1]) for i in perm]
    with common.atomic_open(tok_path, "wb") as f:
        f.write(struct.pack("<i", max(len(b) for b, _ in encoded)))
        for b, score in encoded:
            f.write(struct.pack("<fi", score, len(b)) + b)


# ----------------------------------------------------------------------------------------------------------
# GGUF, the file format of llama.cpp (ggml's docs/gguf.md, version 3). Little-endian throughout:
#   "GGUF" | u32 version | u64 tensor count | u64 key/value count
#   key/values:   string key | u32 value type | value    (a string is a u64 byte length, then UTF-8 bytes;
#                 an array is u32 element type | u64 count | the elements)
#   tensor infos: string name | u32 n_dims | u64 dims, fastest-varying first | u32 ggml type | u64 offset
#   zero padding to the alignment | the tensor data, each tensor at its offset from here, aligned

GGUF_MAGIC, GGUF_VERSION = b"GGUF", 3
GGUF_ALIGN = 32  # the default alignment; written out anyway as general.alignment
U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9  # GGUF value types (gguf_metadata_value_type)
GGML_F32, GGML_F16 = 0, 1  # ggml tensor types
SCALAR = {U32: "<I", I32: "<i", F32: "<f", BOOL: "<?"}
MOSTLY_F16 = 1  # general.file_type: every matrix float16, the 1-D norms float32
# model.py's module names -> llama.cpp's tensor names for the llama architecture (gguf-py's constants.py)
GGUF_NAMES = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output",
              "attention_norm": "attn_norm", "attention.wq": "attn_q", "attention.wk": "attn_k",
              "attention.wv": "attn_v", "attention.wo": "attn_output", "ffn_norm": "ffn_norm",
              "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up", "feed_forward.w2": "ffn_down"}
# tokenizer.render_chat as a Jinja template (the `tokenizer.chat_template` that llama.cpp, LM Studio and
# HF-style chat UIs render): <s>, then per message <|role|> ␣content <|end|>, then <|assistant|> to ask for an
# answer. A second writing of the chat format, held equal to render_chat by tests/test_gguf.py.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>" + tokenizer.CONTENT_PREFIX + "' + message['content'] + '"
    + tokenizer.END_TOKEN + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + tokenizer.ROLE_TOKENS["assistant"] + "' }}{% endif %}")


def gguf_value(kind, value):
    """The bytes of one GGUF value of the given type; an ARRAY value is (element type, list)."""
    if kind == STRING:
        b = value.encode("utf-8")
        return struct.pack("<Q", len(b)) + b
    if kind == ARRAY:
        elem, items = value
        return struct.pack("<IQ", elem, len(items)) + b"".join(gguf_value(elem, v) for v in items)
    return struct.pack(SCALAR[kind], value)


def gguf_metadata(net, stage, tok):
    """(key, type, value) for every key llama.cpp reads for a llama model with a sentencepiece vocabulary.
    The integers are u32 and the floats f32 because llama.cpp checks each key's type as it reads it."""
    a, pieces = net.args, tok.pieces()
    return [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, f"twofiles-{stage}"),
        ("general.file_type", U32, MOSTLY_F16),
        ("general.alignment", U32, GGUF_ALIGN),
        ("llama.vocab_size", U32, a.vocab_size),
        ("llama.context_length", U32, a.max_seq_len),
        ("llama.embedding_length", U32, a.dim),
        ("llama.block_count", U32, a.n_layers),
        ("llama.feed_forward_length", U32, a.hidden_dim),
        ("llama.attention.head_count", U32, a.n_heads),
        ("llama.attention.head_count_kv", U32, a.n_kv_heads),  # fewer than head_count: grouped-query attention
        ("llama.attention.layer_norm_rms_epsilon", F32, a.norm_eps),
        ("llama.rope.freq_base", F32, a.rope_theta),
        ("llama.rope.dimension_count", U32, a.dim // a.n_heads),  # every dimension of a head is rotated
        # the vocabulary as sentencepiece has it: pieces with U+2581 for spaces, BPE merge scores, and the
        # piece types, whose numbers GGUF shares with sentencepiece (normal 1, unknown 2, control 3, byte 6
        # for the 256 byte-fallback pieces <0x00>..<0xFF>). The chat markers go in as control (3), not as
        # sentencepiece's user-defined (4): llama.cpp then parses them only where special tokens are asked for
        # and spells them out in plain text, as tokenizer.py and run.py do. But its chat path renders the Jinja
        # template, messages included, into one string and parses that with special tokens on, so a marker
        # typed in a message becomes a real one there (llama-cpp-python 0.3.36; see the README)
        ("tokenizer.ggml.model", STRING, "llama"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, [p for p, _, _ in pieces])),
        ("tokenizer.ggml.scores", ARRAY, (F32, [s for _, s, _ in pieces])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [tokenizer.CONTROL if k == tokenizer.USER_DEFINED else k
                                                    for _, _, k in pieces])),
        ("tokenizer.ggml.unknown_token_id", U32, tok.unk_id),
        ("tokenizer.ggml.bos_token_id", U32, tok.bos_id),
        ("tokenizer.ggml.eos_token_id", U32, tok.eos_id),  # </s>: ends a document (what a base model emits)
        ("tokenizer.ggml.eot_token_id", U32, tok.end_id),  # <|end|>: ends a chat turn; llama.cpp stops at both
        ("tokenizer.ggml.add_bos_token", BOOL, True),
        ("tokenizer.ggml.add_eos_token", BOOL, False),
        ("tokenizer.ggml.add_space_prefix", BOOL, False),  # trained with add_dummy_prefix=False
        ("tokenizer.chat_template", STRING, CHAT_TEMPLATE),
    ]


def gguf_tensors(net):
    """(llama.cpp name, array) per weight: matrices float16, norms float32. No permutation of wq and wk:
    model.py rotates consecutive pairs, as Meta's release and llama.cpp's llama architecture do (HF
    checkpoints rotate halves, which is why llama.cpp's converter permutes theirs). A tied output matrix is
    left out: llama.cpp then uses token_embd for the output."""
    out = []
    for name, t in net.state_dict().items():
        if name == "output.weight" and net.args.tie_embeddings:
            continue
        parts = name.split(".")  # layers.3.attention.wq.weight, or tok_embeddings.weight
        if parts[0] == "layers":
            gguf_name = f"blk.{parts[1]}.{GGUF_NAMES['.'.join(parts[2:-1])]}.weight"
        else:
            gguf_name = f"{GGUF_NAMES[parts[0]]}.weight"
        a = t.detach().float().cpu().numpy()
        out.append((gguf_name, a.astype("<f2" if a.ndim == 2 else "<f4")))
    return out


def write_gguf(path, net, stage, tok):
    """The GGUF file: header, key/values, tensor infos, then the aligned tensor data."""
    metadata, tensors = gguf_metadata(net, stage, tok), gguf_tensors(net)
    head = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(metadata))]
    for key, kind, value in metadata:
        head += [gguf_value(STRING, key), struct.pack("<I", kind), gguf_value(kind, value)]
    offset = 0
    for name, a in tensors:
        dims = a.shape[::-1]  # ggml lists dimensions fastest-varying first: an (out, in) matrix is [in, out]
        head += [gguf_value(STRING, name), struct.pack(f"<I{len(dims)}Q", len(dims), *dims),
                 struct.pack("<IQ", GGML_F16 if a.dtype == np.float16 else GGML_F32, offset)]
        offset += -(-a.nbytes // GGUF_ALIGN) * GGUF_ALIGN
    with common.atomic_open(path, "wb") as f:
        f.write(b"".join(head))
        f.write(b"\0" * (-f.tell() % GGUF_ALIGN))
        for _, a in tensors:
            f.write(a.tobytes())
            f.write(b"\0" * (-a.nbytes % GGUF_ALIGN))


# ----------------------------------------------------------------------------------------------------------
# the runtime check: the blob as a user meets it, written into the report card

PROBE = "Where does the baker live?"  # a short chat turn: any text would do; a chat prompt is what users send


def check_blob(path, net, stage, step, started):
    """Load the blob with run.py's own loader and measure what the runtime section of the report claims:
    the largest logit difference between run.py and PyTorch holding the same float16-rounded weights (at
    every position of a short prompt) and run.py's greedy tokens/s. Returns the metrics."""
    header, weights, release = run.load_blob(path)
    rt = run.Transformer(header["model_args"], weights, release)
    rtok = run.Tokenizer(header["tokenizer"], header["chat"])
    ids = run.render_chat(rtok, [{"role": "user", "content": PROBE}], add_generation_prompt=True)
    ids = ids[:net.args.max_seq_len // 2]  # room to generate in, even in a tiny context
    ref = model.Transformer(net.args).eval()  # PyTorch on the very weights the blob holds
    ref.load_state_dict({k: v.half().float() for k, v in net.state_dict().items()})
    with torch.no_grad():
        want = ref(torch.tensor([ids]))[0].numpy()  # (T, V)
    parity = float(np.abs(rt.forward(ids, 0) - want).max())
    greedy = lambda logits: int(logits.argmax())  # noqa: E731
    list(run.generate(rt, ids, 0, 4, greedy))  # warm up (first-touch page faults, BLAS threads), as run.py --bench
    stats = run.Stats()  # tokens/s as run.py's chat and completion report it: the prefill excluded
    list(stats.timed(run.generate(rt, ids, 0, 64, greedy)))
    with open(run.__file__, encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    return {"parity_max_abs_logit_diff": parity, "tok_per_s": stats.tokens / max(stats.seconds, 1e-9),
            "blob_bytes": os.path.getsize(path), "run_py_lines": lines, "stage": stage, "step": step,
            "parity_positions": len(ids), "generated_tokens": stats.tokens + 1, "wall_s": time.time() - started}


def runtime_markdown(path, m):
    rows = [("files", f"`run.py` ({m['run_py_lines']} lines, NumPy + stdlib) and `{os.path.basename(path)}` "
                      f"({m['blob_bytes'] / 1e6:.2f} MB, float16, stage {m['stage']}, step {m['step']})"),
            ("parity", f"max abs logit diff {m['parity_max_abs_logit_diff']:.2e}, run.py vs PyTorch on the same "
                       f"float16 weights, {m['parity_positions']} positions"),
            ("speed", f"{m['tok_per_s']:.0f} tokens/s, greedy, {m['generated_tokens']} tokens after a chat prompt"),
            ("wall", f"{m['wall_s']:.1f} s (export and check)")]
    return "## runtime: two files\n\n" + common.md_table(["", "measured"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None,
                        help="checkpoint to export (default: out/rlhf.pt, else out/sft.pt, else out/base.pt)")
    parser.add_argument("--tokenizer", default=None, help="sentencepiece model (default: tok.model beside the checkpoint)")
    parser.add_argument("--out", default=None,
                        help="output file (default, beside the checkpoint: model.bin for blob, llama2c.bin for "
                             "llama2c, model.gguf for gguf; llama2c also writes tokenizer.bin in the same directory)")
    parser.add_argument("--format", choices=["blob", "llama2c", "gguf"], default="blob",
                        help="blob: run.py's float16 file, then checked with run.py (into the report card when "
                             "named model.bin); "
                             "llama2c: llama2.c's run.c .bin + tokenizer.bin; gguf: llama.cpp / LM Studio / ollama")
    args = parser.parse_args(argv)

    started = time.time()
    written = None  # the output, named in a write error once known
    try:
        ckpt = args.ckpt or default_checkpoint()
        model.require_checkpoint(ckpt)
        tok_path = args.tokenizer or os.path.join(os.path.dirname(os.path.abspath(ckpt)), "tok.model")
        net, stage, step, tok = load(ckpt, tok_path)
        default_name = {"blob": "model.bin", "llama2c": "llama2c.bin", "gguf": "model.gguf"}[args.format]
        out = os.path.join(os.path.dirname(ckpt), default_name) if args.out is None else args.out  # beside it
        out_dir = os.path.dirname(os.path.abspath(out))
        tok_out = os.path.join(os.path.dirname(out), "tokenizer.bin")  # llama2c's second file
        if args.format == "llama2c" and os.path.basename(out) == "tokenizer.bin":
            raise ValueError(f"--out {out}: llama2c writes its tokenizer to tokenizer.bin beside the model; "
                             "give the model another name, e.g. llama2c.bin")
        if out.endswith(".gguf") != (args.format == "gguf"):  # run.py cannot read a GGUF file, nor llama.cpp a blob
            raise ValueError(f"--out {out} does not match --format {args.format}: --format gguf writes a .gguf file, "
                             "and only it")
        check_out_path(out, [ckpt, tok_path], args.format)
        if args.format == "llama2c":
            check_out_path(tok_out, [ckpt, tok_path], "llama2c tokenizer")
        written = out
        os.makedirs(out_dir, exist_ok=True)
        if args.format == "blob":
            write_blob(out, net, stage, step, tok)
        elif args.format == "gguf":
            write_gguf(out, net, stage, tok)
        else:
            write_llama2c(out, tok_out, net, tok)
            written = f"{out} and {tok_out}"
    except (model.CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:  # a write error names no file (full disk) or a temp file: say which output failed
        sys.exit(f"error: {e}" if written is None else f"error: cannot write {written}: {e.strerror or e}")
    size = os.path.getsize(out)
    print(f"exported {ckpt} (stage {stage}, step {step}, {net.num_params() / 1e6:.2f}M parameters) "
          f"to {written} ({size / 1e6:.1f} MB, {args.format})")
    if args.format == "blob":
        try:
            m = check_blob(out, net, stage, step, started)
        except run.BlobError as e:  # export.py just wrote it: this is a bug in one of the two files
            sys.exit(f"error: run.py cannot read the blob export.py wrote: {e}")
        print(f"checked with run.py: max abs logit diff {m['parity_max_abs_logit_diff']:.1e} against PyTorch, "
              f"{m['tok_per_s']:.0f} tokens/s")
        if os.path.basename(out) == "model.bin":  # the report card's runtime section describes the main blob
            if common.update_report(out_dir, "runtime", m, runtime_markdown(out, m)):
                print(f"runtime section written to {os.path.join(out_dir, 'report.md')}")


if __name__ == "__main__":
    common.run_main(main)
