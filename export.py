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
  gguf     not implemented yet (issue 7).

By default the latest stage's checkpoint in out/ (out/rlhf.pt, else out/sft.pt, else out/base.pt) goes to
out/model.bin (blob) or out/llama2c.bin + out/tokenizer.bin (llama2c); the tokenizer is tok.model in the
checkpoint's directory unless --tokenizer says otherwise.

    python export.py                                   # out/rlhf.pt (or sft, base) -> out/model.bin
    python export.py --ckpt out/base.pt --out out/base.bin
    python export.py --format llama2c                  # -> out/llama2c.bin, out/tokenizer.bin
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

import model
import tokenizer

MAGIC = b"twofiles"  # the first 8 bytes of every blob
VERSION = 1  # bump on any change a version-1 reader would misread; run.py refuses newer versions
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


def load(ckpt_path, tok_path):
    """(model, stage, step, tokenizer) of a generating checkpoint, with its tokenizer checked against it."""
    net, ckpt = model.load_checkpoint(ckpt_path)
    stage = ckpt.get("stage")
    if net.args.reward_head or stage == "rm":
        raise model.CheckpointError(f"{ckpt_path} is a reward model (stage '{stage}', with a reward head): it scores "
                                    "text but does not generate it, so there is nothing to export; export the policy "
                                    "(out/rlhf.pt) or another stage's checkpoint instead")
    if stage not in STAGES:
        raise model.CheckpointError(f"{ckpt_path} is a '{stage}' checkpoint; expected {' or '.join(STAGES)}")
    tok = tokenizer.Tokenizer(tok_path)
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
        # the chat template of tokenizer.render_chat: [bos] + per message [role_ids[role]] + content + [end_id],
        # then [role_ids["assistant"]] to ask for an answer
        "chat": {"role_ids": dict(tok.role_ids), "end_id": tok.end_id},
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
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<II", VERSION, len(header)) + header)
        for entry, (_, a) in zip(json.loads(header)["tensors"], tensors):
            f.write(b"\0" * (entry["offset"] - f.tell()))
            f.write(a.astype("<f2").tobytes())
        f.write(b"\0" * (-f.tell() % ALIGN))
    os.replace(tmp, path)  # a kill mid-write never leaves a half blob under the final name


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
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", a.dim, a.hidden_dim, a.n_layers, a.n_heads, a.n_kv_heads, vocab, a.max_seq_len))
        for arr in arrays:
            f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    # pieces as run.c prints them: U+2581 back to a space, <s> and </s> on lines of their own (as llama2.c's
    # tokenizer.py writes them), byte pieces kept as the text "<0xXX>" which run.c's decode turns into the byte
    pieces = tok.pieces()
    names = {tok.bos_id: "\n<s>\n", tok.eos_id: "\n</s>\n"}
    encoded = [(names.get(i, pieces[i][0].replace("\u2581", " ")).encode(), pieces[i][1]) for i in perm]
    with open(tok_path, "wb") as f:
        f.write(struct.pack("<i", max(len(b) for b, _ in encoded)))
        for b, score in encoded:
            f.write(struct.pack("<fi", score, len(b)) + b)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None,
                        help="checkpoint to export (default: out/rlhf.pt, else out/sft.pt, else out/base.pt)")
    parser.add_argument("--tokenizer", default=None, help="sentencepiece model (default: tok.model beside the checkpoint)")
    parser.add_argument("--out", default=None,
                        help="output file (default: out/model.bin for blob, out/llama2c.bin for llama2c; "
                             "llama2c also writes tokenizer.bin in the same directory)")
    parser.add_argument("--format", choices=["blob", "llama2c", "gguf"], default="blob",
                        help="blob: run.py's float16 file; llama2c: llama2.c's run.c .bin + tokenizer.bin; gguf: later")
    args = parser.parse_args()

    if args.format == "gguf":
        print("error: --format gguf is not implemented yet (issue 7)", file=sys.stderr)
        sys.exit(2)
    try:
        ckpt = args.ckpt or default_checkpoint()
        tok_path = args.tokenizer or os.path.join(os.path.dirname(os.path.abspath(ckpt)), "tok.model")
        net, stage, step, tok = load(ckpt, tok_path)
        out = args.out or os.path.join("out", "model.bin" if args.format == "blob" else "llama2c.bin")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        if args.format == "blob":
            write_blob(out, net, stage, step, tok)
            written = out
        else:
            tok_out = os.path.join(os.path.dirname(os.path.abspath(out)), "tokenizer.bin")
            write_llama2c(out, tok_out, net, tok)
            written = f"{out} and {tok_out}"
    except (model.CheckpointError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    size = os.path.getsize(out)
    print(f"exported {ckpt} (stage {stage}, step {step}, {net.num_params() / 1e6:.2f}M parameters) "
          f"to {written} ({size / 1e6:.1f} MB, {args.format})")


if __name__ == "__main__":
    main()
