"""
Stage 1, pretraining: an "internet document generator" (seed 002) learned by next-token prediction.

Reads documents (the built-in world by default, or --data), trains a sentencepiece BPE tokenizer on them (or
keeps the one beside an --init checkpoint), tokenizes everything once into uint16 memmaps, then trains the
Transformer of model.py to predict each next token. At the end the exam: validation loss, fact recall by
completion ("Anna Ward lives in" -> "Thornbury": knowledge compressed into the weights), questions answered
with the "Q: ... A:" framing of seed 001, and a few "dreamed" documents. Results go to out/report.md and
out/report.json.

Reads: --data (or the world); --init and the tok.model beside it; out/base.pt with --resume
Writes: out/tok.model (+ tok.vocab), train.bin, val.bin, data.json, base.pt
    python train.py                                        # built-in world, a few minutes on 2 CPU cores
    python train.py --resume                               # continue exactly where a stopped run was
    python train.py --data TinyStories/ --preset stories15m --device cuda --dtype bfloat16 --compile
    torchrun --standalone --nproc_per_node 2 train.py --grad-accum 2   # data parallel over 2 processes (or GPUs)
"""
import argparse
import dataclasses
import filecmp
import glob
import itertools
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import common
import world as world_lib
from model import (CheckpointError, ContextError, ModelArgs, Transformer, check_tokenizer, configure_optimizer,
                   generate, generate_many, load_checkpoint, load_optimizer_state, lm_loss, peek_checkpoint,
                   require_checkpoint, save_checkpoint)
from tokenizer import Tokenizer, train_tokenizer

# Shapes one flag away: the default world model, and llama2.c's two TinyStories shapes (its stories260K was
# trained with multiple_of=4: hidden_dim 172 and 260,032 parameters; 32 would give 192 and 279,232). Flags given
# explicitly on the command line override a preset's values.
PRESETS = {
    "world": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, multiple_of=32, vocab_size=1024, seq_len=256,
                  batch_size=16, grad_accum=1, lr=3e-3, max_steps=700, warmup=60),
    "stories260k": dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, multiple_of=4, vocab_size=512, seq_len=512,
                        batch_size=8, grad_accum=1, lr=5e-4, max_steps=100_000, warmup=1000),
    "stories15m": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, multiple_of=32, vocab_size=32000, seq_len=256,
                       batch_size=8, grad_accum=4, lr=5e-4, max_steps=100_000, warmup=1000),
}


# ----------------------------------------------------------------------------------------------------------
# data

# The tokenizer is trained on at most about this many characters of text, every k-th document of a larger corpus
# (llama2.c trains its TinyStories vocabulary on a sample too): sentencepiece holds what it learns from in
# memory, about 2.7 bytes a character (0.6 GB for 0.22 G characters, measured).
TOKENIZER_CHARS = 100_000_000

def data_files(path, out_dir=None):
    """The files --data names: itself, or the .txt, .json and .jsonl files in the directory, in order, without
    those in out_dir when it lies inside the directory (a run's own report.json and data.json are not data)."""
    if not os.path.isdir(path):
        return [path]
    out = os.path.join(os.path.realpath(out_dir), "") if out_dir else None
    return sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                  if os.path.isfile(f) and f.endswith((".txt", ".json", ".jsonl"))
                  and not (out and os.path.realpath(f).startswith(out)))


def data_files_stamp(path, out_dir=None):
    """(name, size, mtime) of every file read_documents reads: prepared data is reused only if none changed."""
    return [[os.path.relpath(f, path) if f != path else "", os.path.getsize(f), int(os.path.getmtime(f))]
            for f in data_files(path, out_dir) if os.path.isfile(f)]


def file_documents(f):
    """The documents of one --data file, stripped, empty ones left out: a .json list (TinyStories' shards) is parsed
    whole; a .jsonl and a .txt are read line by line, so a file of GBs is never held whole (unless it is one text)."""
    try:
        if f.endswith(".jsonl"):
            yield from stripped(jsonl_documents(f))
            return
        with open(f, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark (Windows editors) is not text
            yield from stripped(json_documents(f, fh.read()) if f.endswith(".json") else txt_documents(fh))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {f}: {e}") from None


def stripped(docs):
    """The texts among docs, stripped, the empty ones (and a null "text") left out."""
    return (d.strip() for d in docs if isinstance(d, str) and d.strip())


def json_documents(f, text):
    try:
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise TypeError("not a list")
        return [r if isinstance(r, str) else r["text"] if "text" in r else r["story"] for r in rows]
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # (RecursionError: nested thousands deep)
        raise ValueError(f"{f}: expected a JSON list of {{\"story\": ...}} or {{\"text\": ...}} "
                         f"({type(e).__name__})") from None


def jsonl_documents(f):
    """The "text" (or "story") of each line, a line at a time; bad bytes or JSON are named by FILE:LINE."""
    for n, row in common.read_jsonl(f, f"cannot read {f}: no such file"):
        try:
            text = row["text"] if "text" in row else row["story"]
        except (KeyError, TypeError):
            raise ValueError(f"{f}:{n}: expected a JSON object with a \"text\" or \"story\" field") from None
        yield text


def txt_documents(lines):
    """Texts separated by <|endoftext|> (TinyStories' txt), gathered line by line."""
    doc = []
    for line in lines:
        *ends, rest = line.split("<|endoftext|>")
        for end in ends:
            yield "".join(doc) + end
            doc = []
        doc.append(rest)
    yield "".join(doc)


def iter_documents(path, out_dir=None):
    """Documents from a text file, a directory of them, TinyStories json shards (a list of {"story": ...}),
    jsonl ({"text"} or {"story"} per line), or TinyStories txt (stories separated by <|endoftext|>), one file
    at a time."""
    if not os.path.exists(path):
        raise ValueError(f"--data {path} does not exist")
    files = data_files(path, out_dir)
    if not files:
        raise ValueError(f"--data {path} has no .txt, .json or .jsonl files")
    for f in files:
        yield from file_documents(f)


def read_documents(path, out_dir=None):
    """All of --data's documents in a list."""
    docs = list(iter_documents(path, out_dir))
    if not docs:
        raise ValueError(f"--data {path} holds no text")
    return docs


def split_documents(docs):
    """(train, val): about 1% held out for the validation loss. The last 1% of the documents when there are 100 or
    more; else the text after the last line break between 98% and 99% of it (1-2% held out; at 99% if there is
    none), so that one long text (a book) or a few (chapters) give up about that much, not a whole document."""
    if len(docs) >= 100:
        return docs[:-(len(docs) // 100)], docs[-(len(docs) // 100):]
    total, pos, i = sum(map(len, docs)), 0, 0
    while pos + len(docs[i]) < 0.99 * total:  # docs[i] holds the 99% mark
        pos, i = pos + len(docs[i]), i + 1
    end = min(int(0.99 * total) - pos, len(docs[i]) - 1)  # at least one character held out
    cut = docs[i].rfind("\n", max(0, int(0.98 * total) - pos), end) + 1 or end
    return docs[:i] + [docs[i][:cut]], [docs[i][cut:]] + docs[i + 1:]


class Reread:
    """Documents lo..hi-1 of --data, read from its files again on every pass over them instead of held in memory."""
    def __init__(self, path, out_dir, lo, hi):
        self.path, self.out_dir, self.lo, self.hi = path, out_dir, lo, hi

    def __len__(self):
        return self.hi - self.lo

    def __iter__(self):
        return itertools.islice(iter_documents(self.path, self.out_dir), self.lo, self.hi)


def split_data(path, out_dir=None):
    """(train, val, characters of train) of --data, split as split_documents splits them. From 100 documents on,
    whole documents are held out, and train and val are Rereads: a TinyStories-sized corpus (GBs) is not held
    in memory, where as a list of strings it took 1.24 bytes a character (measured at 0.9 G characters)."""
    sizes = np.fromiter((len(d) for d in iter_documents(path, out_dir)), dtype=np.int64)  # a first pass, to count
    if len(sizes) == 0:
        raise ValueError(f"--data {path} holds no text")
    if len(sizes) < 100:  # a book or a few chapters: held in memory, cut inside the last text
        train, val = split_documents(read_documents(path, out_dir))
        return train, val, sum(map(len, train))
    cut = len(sizes) - len(sizes) // 100
    return Reread(path, out_dir, 0, cut), Reread(path, out_dir, cut, len(sizes)), int(sizes[:cut].sum())


def tokenize_to_file(tok, docs, path):
    """Write [BOS] doc [EOS] for every document (an iterable) as one flat uint16 array (2 bytes a token), in
    batches."""
    if tok.vocab_size > 2**16:
        raise ValueError(f"vocab size {tok.vocab_size} does not fit uint16 token files")
    n = 0
    docs = iter(docs)
    with common.atomic_open(path, "wb") as f:
        while batch := list(itertools.islice(docs, 4096)):
            ids = tok.encode_batch(batch)
            flat = np.fromiter(itertools.chain.from_iterable([tok.bos_id, *d, tok.eos_id] for d in ids), np.uint16)
            f.write(flat.tobytes())
            n += len(flat)
    return n


def init_tokenizer(args):
    """The tok.model beside the --init checkpoint, which the run keeps; None without --init or without that file
    (then the tokenizer is trained from the data flags, and must come out as the checkpoint's)."""
    path = args.init and os.path.join(os.path.dirname(os.path.abspath(args.init)), "tok.model")
    return path if path and os.path.exists(path) else None


def data_source(args):
    """What the token files are made from, as data.json records it."""
    return {"data": os.path.abspath(args.data) if args.data else None, "vocab_size": args.vocab_size,
            "tokenizer_from": init_tokenizer(args),
            "world_people": args.world_people, "world_seed": args.world_seed,
            "files": data_files_stamp(args.data, args.out_dir) if args.data else None}


def prepared(args):
    """out/data.json's record if out/ holds the tokenizer and token files of these data flags, else None."""
    meta_path = os.path.join(args.out_dir, "data.json")
    if not os.path.exists(meta_path):
        return None
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (ValueError, RecursionError) as e:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise ValueError(f"{meta_path} is damaged ({str(e)[:80]}): delete it, and the data is prepared again") from None
    source = data_source(args)
    recorded = {"files": source["files"], "tokenizer_from": None, **meta.get("source", {})}  # an older data.json
    if args.resume:  # --init is not restored on a resume; load_checkpoint checks the tokenizer instead
        recorded["tokenizer_from"] = source["tokenizer_from"]
    there = all(os.path.exists(os.path.join(args.out_dir, x)) for x in ("tok.model", "train.bin", "val.bin"))
    # ... and tok.model is still the one that wrote the .bin files (a data.json from before records none)
    if there and recorded == source and meta.get("tokenizer") in (
            None, Tokenizer(os.path.join(args.out_dir, "tok.model")).fingerprint):
        for name in ("train", "val"):  # a token file cut short (a full disk, a copy) was a traceback from numpy
            size, tokens = os.path.getsize(os.path.join(args.out_dir, f"{name}.bin")), meta.get(f"{name}_tokens")
            if tokens is not None and size != 2 * tokens:
                raise ValueError(f"{args.out_dir}/{name}.bin holds {size:,} bytes where {meta_path} records "
                                 f"{tokens:,} tokens of 2 bytes: delete {meta_path}, and the data is prepared again")
        return meta
    return None


def prepare_data(args, log):
    """Train the tokenizer (or take --init's) and write out/train.bin and out/val.bin, unless out/data.json says
    the same data was already prepared (then reuse them: resuming must see the same tokens)."""
    meta_path = os.path.join(args.out_dir, "data.json")
    meta = prepared(args)
    if meta is not None:
        log(f"data: reusing {args.out_dir}/train.bin ({meta['train_tokens']:,} tokens), "
            f"val.bin ({meta['val_tokens']:,}), tok.model (vocab {meta['tokenizer_vocab']})")
        return meta
    if os.path.exists(meta_path) and args.resume:
        raise ValueError(f"--resume with different data, vocab or tok.model than {meta_path} records")
    src = init_tokenizer(args)
    source = data_source(args)  # the files as they are when read
    if args.data:  # (read before anything in out/ changes: a mistyped --data leaves the prepared data as it was)
        train_docs, val_docs, n_chars = split_data(args.data, args.out_dir)
    else:
        train_docs, val_docs = world_lib.pretrain_docs(world_lib.make_world(args.world_people, args.world_seed))
        n_chars = sum(map(len, train_docs))
    stride = math.ceil(n_chars / TOKENIZER_CHARS)  # the tokenizer learns from every stride-th document
    log(f"data: {len(train_docs):,} train / {len(val_docs):,} val documents ({n_chars / 1e6:.2f} M characters); "
        + (f"tokenizing with {src}" if src else "training the tokenizer" + (
            f" on one document in {stride}" if stride > 1 else "") + " ..."))
    dest = os.path.join(args.out_dir, "tok.model")
    if not src:  # trained beside the old one, which it replaces only if no checkpoint here but base.pt (which this
        # run replaces) needs the old one
        new = train_tokenizer(itertools.islice(train_docs, 0, None, stride), os.path.join(args.out_dir, "tok.new"),
                              args.vocab_size, args.threads)
        later = sorted(f for f in os.listdir(args.out_dir) if f.endswith(".pt") and f != "base.pt")
        try:
            old = Tokenizer(dest).fingerprint if later and os.path.exists(dest) else None
        except ValueError:  # a tok.model that is not a tokenizer: no checkpoint can need it
            old = None
        if old is not None and old != new.fingerprint:
            for ext in ("model", "vocab"):
                os.remove(os.path.join(args.out_dir, f"tok.new.{ext}"))
            raise ValueError(f"these data flags train a new tokenizer, and {', '.join(later)} in {args.out_dir} "
                             "were made with the old one (they would no longer load): give another --out-dir, or "
                             "move them away; nothing was changed")
    if os.path.exists(meta_path):
        os.remove(meta_path)  # from here on the old files are being replaced: an interrupted prep is redone
    if not src:
        for ext in ("model", "vocab"):
            os.replace(os.path.join(args.out_dir, f"tok.new.{ext}"), os.path.join(args.out_dir, f"tok.{ext}"))
    # --init's model knows only its own tokens: new text is cut into those (as nanoGPT finetunes GPT-2)
    elif not (os.path.exists(dest) and os.path.samefile(src, dest)):
        shutil.copyfile(src, dest)
    tok = Tokenizer(dest)
    if not src and tok.vocab_size < args.vocab_size:
        log(f"data: the text supports only {tok.vocab_size} tokens, not {args.vocab_size}: using {tok.vocab_size}")
    meta = {"source": source, "tokenizer_vocab": tok.vocab_size, "tokenizer": tok.fingerprint,
            "train_tokens": tokenize_to_file(tok, train_docs, os.path.join(args.out_dir, "train.bin")),
            "val_tokens": tokenize_to_file(tok, val_docs, os.path.join(args.out_dir, "val.bin"))}
    with common.atomic_open(meta_path) as f:  # written last: it vouches for tok.model, train.bin and val.bin
        json.dump(meta, f, indent=1)
    log(f"data: {meta['train_tokens']:,} train tokens, {meta['val_tokens']:,} val tokens")
    return meta


@torch.no_grad()
def estimate_loss(model, data, batch_size, seq_len, batches, device, ctx, seed=0):
    """Mean loss over a fixed set of windows (the same ones every time, so evaluations are comparable)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(batches):
        x, y = common.get_batch(data, batch_size, min(seq_len, len(data) - 1), gen)
        with ctx:
            losses.append(lm_loss(model(x.to(device)), y.to(device)).item())
    model.train()
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------------------------------------
# the pretraining exam

def complete(model, tok, prompts, max_new_tokens):
    """Greedy completions of text prompts (after BOS), cut at the first newline."""
    outs = generate_many(model, [[tok.bos_id] + tok.encode(p) for p in prompts], max_new_tokens,
                         temperature=0.0, stop_id=tok.eos_id)
    return [tok.decode([t for t in o if t != tok.eos_id]).split("\n")[0] for o in outs]


def pretrain_exam(model, tok, world, n_items):
    """Fact recall by completion and Q/A-framed accuracy on the world's exam questions."""
    recall = world_lib.recall_items(world)[:n_items]
    answers = complete(model, tok, [it["prompt"] for it in recall], 10)
    recall_ok = [world_lib.grade(it, a) for it, a in zip(recall, answers)]
    bare = complete(model, tok, [it["bare_prompt"] for it in recall], 10)
    bare_ok = [world_lib.grade(it, a) for it, a in zip(recall, bare)]
    qa = world_lib.qa_items(world, world.people, "exam")[:n_items]
    qa_answers = complete(model, tok, [world_lib.qa_framed(it["question"]) for it in qa], 16)
    qa_ok = [world_lib.grade(it, a) for it, a in zip(qa, qa_answers)]
    examples = [(it["prompt"], a, ok) for it, a, ok in list(zip(recall, answers, recall_ok))[:4]]
    examples += [(world_lib.qa_framed(it["question"]), a, ok) for it, a, ok in list(zip(qa, qa_answers, qa_ok))[:4]]
    mean = lambda oks: sum(oks) / len(oks)  # noqa: E731
    return mean(recall_ok), mean(bare_ok), mean(qa_ok), examples


def dream(model, tok, n, max_new_tokens, seed):
    """Documents sampled from nothing but BOS: the model "dreams" its training distribution (seed 002)."""
    device = model.tok_embeddings.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    bos = torch.full((n, 1), tok.bos_id, dtype=torch.long, device=device)
    outs = generate(model, bos, max_new_tokens, temperature=0.8, top_p=0.95, stop_id=tok.eos_id, generator=gen)
    return [tok.decode([t for t in o if t != tok.eos_id]) for o in outs]


# ----------------------------------------------------------------------------------------------------------

SHAPE = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of")  # a new model's shape (--init has its own)
# flags that may differ between a run and its --resume: where and how it runs, not what it trains
RUN_CONTROL = ("resume", "init", "out_dir", "device", "dtype", "threads", "compile", "bench", "log_interval")


def preset_help(text, key):
    return f"{text} (default: the preset's; {', '.join(f'{name} {v[key]}' for name, v in PRESETS.items())})"


def get_args(argv=None):
    p = argparse.ArgumentParser(description="Pretrain the Transformer by next-token prediction.",
                                formatter_class=common.HelpFormatter)
    # I/O
    p.add_argument("--out-dir", default="out", help="where the tokenizer, token files, checkpoint and report go")
    p.add_argument("--data", default=None, help="a .txt file (<|endoftext|> separates documents), a .json list or .jsonl "
                   "of {\"text\"} or {\"story\"}, or a directory of them; default: the built-in world")
    p.add_argument("--world-people", type=int, default=100, help="size of the built-in world (people)")
    p.add_argument("--world-seed", type=int, default=1337, help="seed of the built-in world")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/base.pt (optimizer, step, RNG)")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights, with the tok.model beside it "
                   "(a fresh model otherwise)")
    # model (None: the preset's value)
    p.add_argument("--preset", default="world", choices=sorted(PRESETS), help="model shape and schedule")
    p.add_argument("--dim", type=int, help=preset_help("model width", "dim"))
    p.add_argument("--n-layers", type=int, help=preset_help("number of Transformer blocks", "n_layers"))
    p.add_argument("--n-heads", type=int, help=preset_help("attention heads", "n_heads"))
    p.add_argument("--n-kv-heads", type=int, help=preset_help("key/value heads (fewer than n-heads: grouped-query)", "n_kv_heads"))
    p.add_argument("--multiple-of", type=int, help=preset_help("the feed-forward's hidden size, 2/3 of 4 x dim, is "
                                                               "rounded up to a multiple of this", "multiple_of"))
    p.add_argument("--vocab-size", type=int, help=preset_help("BPE vocabulary size to train", "vocab_size"))
    p.add_argument("--seq-len", type=int, help=preset_help("context length (max_seq_len; with --init, the "
                                                           "checkpoint's unless given)", "seq_len"))
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout rate (default 0; with --init or --resume, the checkpoint's unless given)")
    # optimisation
    p.add_argument("--batch-size", type=int, help=preset_help("sequences per micro-batch", "batch_size"))
    p.add_argument("--grad-accum", type=int, help=preset_help("micro-batches per optimizer step (split over processes)", "grad_accum"))
    p.add_argument("--max-steps", type=int, help=preset_help("optimizer steps", "max_steps"))
    p.add_argument("--lr", type=float, help=preset_help("peak learning rate", "lr"))
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of the peak")
    p.add_argument("--warmup", type=int, help=preset_help("linear warmup steps", "warmup"))
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay on 2-D weights")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    # evaluation, logging
    p.add_argument("--eval-interval", type=int, default=200, help="steps between val loss + checkpoint")
    p.add_argument("--eval-batches", type=int, default=10, help="batches per val loss estimate")
    p.add_argument("--log-interval", type=int, default=20, help="steps between log lines")
    p.add_argument("--exam-items", type=int, default=400,
                   help="questions per exam (0: no exam; the val loss and dreams still run)")
    # system
    common.add_system_args(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on CUDA)")
    p.add_argument("--seed", type=common.SEED, default=1337, help="seed for init, batches and dropout's masks")
    p.add_argument("--bench", type=int, default=0, metavar="STEPS",
                   help="time STEPS training steps on random tokens at this shape and exit (no data, no files)")
    args = p.parse_args(argv)
    if args.resume:  # the stopped run's flags, unless given again (e.g. a larger --max-steps to train on); not
        # --dropout: untyped, main() takes the checkpoint model's own rate (before 295f36c an --init run recorded
        # the default 0 in its args while training at its checkpoint's rate)
        args = common.resumed_args(p, sys.argv[1:] if argv is None else argv, args,
                                   os.path.join(args.out_dir, "base.pt"), RUN_CONTROL + ("dropout",), SHAPE)
    if args.resume and args.init:
        p.error("--resume and --init exclude each other (--resume continues from OUT_DIR/base.pt)")
    typed_shape = [f"--{k.replace('_', '-')}" for k in SHAPE if getattr(args, k) is not None]
    if args.init and typed_shape:
        p.error(f"--init trains the checkpoint's own shape: leave out {', '.join(typed_shape)}")
    if args.init:
        try:
            init_args = dict(peek_checkpoint(args.init)["model_args"])
        except Exception:  # no readable checkpoint: main() says so
            init_args = {}
        vocab = init_args.get("vocab_size", args.vocab_size)
        if args.vocab_size is not None and vocab != args.vocab_size:  # typed: but the run keeps its tokenizer
            p.error(f"--init keeps its checkpoint's tokenizer ({vocab} tokens): leave out --vocab-size")
        if args.seq_len is None:  # the context it was trained at, not the preset's (which may be longer)
            args.seq_len = init_args.get("max_seq_len")
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    common.check_ranges(p, args, at_least_1=("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "vocab_size",
                                             "seq_len", "batch_size", "grad_accum", "max_steps", "eval_interval",
                                             "eval_batches", "log_interval"),
                        at_least_0=("warmup", "weight_decay", "grad_clip", "exam_items", "threads",
                                    "bench"),
                        positive=("lr",), below_1=("dropout", "beta2"), fractions=("min_lr_ratio",),
                        people=("world_people",))
    if args.seq_len < 2:  # a model of context 1 cannot be given a token and then write one
        p.error(f"--seq-len must be at least 2 (got {args.seq_len})")
    # paths as absolute: a checkpoint records them, and --resume may run from another directory
    args.data = args.data and os.path.abspath(args.data)
    return args


def lr_at(step, max_steps, lr, warmup, min_lr):
    """Linear warmup for `warmup` steps, then cosine decay to min_lr at max_steps (GPT-3, Chinchilla)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def model_args(args, vocab_size, dropout=0.0):
    """The ModelArgs of a new model from the shape flags (--dim, --n-layers, ...): one place for bench and main."""
    return ModelArgs(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                     multiple_of=args.multiple_of, vocab_size=vocab_size, max_seq_len=args.seq_len, dropout=dropout)


def memory_bytes(device):
    """The memory a device has: a GPU's own, else the machine's RAM plus swap; None where it cannot be told. For
    refusing at once, in one line, sizes that cannot fit: the kernel's OOM killer ends a process without a word."""
    try:
        if device.startswith("cuda"):
            return torch.cuda.get_device_properties(torch.device(device)).total_memory
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None
    try:
        with open("/proc/meminfo") as f:  # (Linux; elsewhere RAM alone)
            swap = next((int(line.split()[1]) * 1024 for line in f if line.startswith("SwapTotal:")), 0)
    except (OSError, ValueError, IndexError):
        swap = 0
    return ram + swap


def check_fits(margs, batch_size, device):
    """Stop with one line when training this shape cannot fit in the device's memory, before any work. The bound
    is a floor: float32 weights, gradients and AdamW's two moments (16 bytes a parameter) and one micro-batch's
    logits with their gradient (2 x B x T x V float32), the parameters counted on the meta device (nothing is
    allocated). Without it, a --dim or --batch-size far too large ran until the kernel killed it, without a word."""
    with torch.device("meta"):
        n = Transformer(margs).num_params()
    need, have = 16 * n + 8 * batch_size * margs.max_seq_len * margs.vocab_size, memory_bytes(device)
    if have is not None and need > have:
        common.fail(f"a {n / 1e6:,.1f}M-parameter model with batches of {batch_size} x {margs.max_seq_len} tokens "
                    f"needs at least {need / 1e9:,.1f} GB to train (weights, gradients, AdamW state, logits) and "
                    f"{device} has {have / 1e9:,.1f} GB: lower --dim, --n-layers, --vocab-size, --batch-size or "
                    "--seq-len")


def bench(args, device, dtype):
    """Training throughput at a model shape, on random tokens: what llama2.c's train.py is compared with."""
    torch.manual_seed(args.seed)
    try:
        margs = model_args(args, args.vocab_size)
    except ValueError as e:  # a bad shape (dim not a multiple of n_heads, ...)
        common.fail(e)
    check_fits(margs, args.batch_size, device)
    model = Transformer(margs).to(device)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay, (0.9, args.beta2), device.split(":")[0])
    train_model = torch.compile(model) if args.compile else model
    x = torch.randint(args.vocab_size, (args.batch_size, args.seq_len + 1), device=device)
    ctx = common.autocast(device, dtype)
    print(f"bench: {model.num_params() / 1e6:.2f}M parameters, batch {args.batch_size} x {args.seq_len}, "
          f"{device} {dtype}, {torch.get_num_threads()} threads")
    for step in range(args.bench + 2):  # two warm-up steps
        if step == 2:
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)  # the warm-up's queued kernels are not timed
            timer = common.Timer()
        with ctx:
            loss = lm_loss(train_model(x[:, :-1]), x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)  # this run's GPU (cuda:1 is not the current device unless set)
    dt = timer() / args.bench
    print(f"bench: {dt * 1000:.0f} ms/step | {args.batch_size * args.seq_len / dt:,.0f} tokens/s")


def main(argv=None):
    args = get_args(argv)
    device, dtype = common.start(args)
    if args.bench:  # (under torchrun every process would time itself on the same device)
        if common.torchrun_env()[0] > 1:
            common.fail("--bench times one process: start it with python, not torchrun")
        return bench(args, device, dtype)
    ddp = common.Dist(device)
    device, master = ddp.device, ddp.master
    log = print if master else (lambda *a, **k: None)
    timer = common.Timer()
    ckpt_path = os.path.join(args.out_dir, "base.pt")
    if args.grad_accum % ddp.world_size:
        common.fail(f"--grad-accum {args.grad_accum} must be a multiple of the {ddp.world_size} processes")
    init_model = init_ckpt = None
    try:  # what can be checked before the data prep, which replaces out/tok.model (and so every checkpoint's key)
        if args.data and os.path.realpath(args.data) == os.path.realpath(args.out_dir):
            raise ValueError("--out-dir is the --data directory: the run's own files (data.json, report.json, ...) "
                             "would be read back as text; give a subdirectory or another directory")
        if args.resume:  # (without it, the flags fell back to the defaults and the data check spoke first)
            require_checkpoint(ckpt_path)
        if args.init:  # its stage and weights, before the data prep (its tokenizer is checked after it)
            init_model, init_ckpt = load_checkpoint(args.init, "cpu", stages=("base", "sft", "rlhf"))
            # the run keeps the checkpoint's tokenizer: another tok.model in OUT_DIR would be replaced, and every
            # checkpoint made with it orphaned
            here, src = os.path.join(args.out_dir, "tok.model"), init_tokenizer(args)
            if src and os.path.exists(here) and not filecmp.cmp(here, src, shallow=False):
                raise ValueError(f"--init keeps the tokenizer beside its checkpoint, {src}, but {here} is another "
                                 "one (its checkpoints would no longer load): give another --out-dir")
            if not src and os.path.exists(here) and prepared(args) is None:  # (it would be trained anew)
                raise ValueError(f"--init keeps its tokenizer, but there is no tok.model beside {args.init} and these "
                                 f"data flags would replace {here}: put its tok.model beside it, or give another "
                                 "--out-dir")
        if not args.resume and not args.init:  # a bad shape (dim not a multiple of n_heads, ...) is a ValueError
            check_fits(model_args(args, args.vocab_size), args.batch_size, device)
    except (CheckpointError, ValueError) as e:
        common.fail(e)
    ddp.barrier()  # every process has checked OUT_DIR before the master writes to it (NCCL starts ranks apart)

    # data: prepared once by the master, read by everyone
    try:
        if master:
            common.check_writable(args.out_dir)
            meta = prepare_data(args, log)
        ddp.barrier()
        if not master:
            with open(os.path.join(args.out_dir, "data.json")) as f:
                meta = json.load(f)
        tok = Tokenizer(os.path.join(args.out_dir, "tok.model"))
    except OSError as e:  # on another node: the master wrote to its own disk
        common.fail(f"process {ddp.rank} cannot read what the master prepared in {args.out_dir} ({e.strerror}): on "
                    "several nodes, --out-dir must be on a filesystem they all share")
    except ValueError as e:
        common.fail(e)
    train_data = np.memmap(os.path.join(args.out_dir, "train.bin"), dtype=np.uint16, mode="r")
    val_data = np.memmap(os.path.join(args.out_dir, "val.bin"), dtype=np.uint16, mode="r")
    if len(train_data) <= args.seq_len:
        common.fail(f"only {len(train_data)} training tokens: fewer than one window of --seq-len {args.seq_len}")

    # model, optimizer; from a checkpoint when resuming
    torch.manual_seed(args.seed)
    start_step, ckpt = 0, None
    try:
        if args.resume:
            model, ckpt = load_checkpoint(ckpt_path, device, stages=("base",), tokenizer=tok.fingerprint)
            start_step = ckpt["step"]
        elif args.init:  # loaded before the data prep; its tokenizer can be checked now
            check_tokenizer(args.init, init_ckpt, tok.fingerprint)
            model = init_model.to(device)
            for k in SHAPE:  # recorded as trained (not the preset's), so --resume can compare typed values with it
                setattr(args, k, getattr(model.args, k))
        else:
            model = Transformer(model_args(args, tok.vocab_size, args.dropout or 0.0)).to(device)
        if args.dropout is None:  # not typed: the checkpoint's rate for --init and --resume (0 for a new model)
            args.dropout = model.args.dropout
        elif args.dropout != model.args.dropout:  # typed with --init or --resume: a training choice, not the shape
            weights = model.state_dict()
            model = Transformer(dataclasses.replace(model.args, dropout=args.dropout)).to(device)
            model.load_state_dict(weights)
    except (CheckpointError, ValueError) as e:
        common.fail(e)
    if model.args.vocab_size != tok.vocab_size:
        common.fail(f"the model's vocab ({model.args.vocab_size}) is not the tokenizer's ({tok.vocab_size})")
    if args.resume:  # shape flags typed again with other values would be recorded, not used
        changed = [f"--{k.replace('_', '-')} {v}" for k in SHAPE if (v := getattr(args, k)) != getattr(model.args, k)]
        if changed:
            common.fail(f"--resume continues the model of {ckpt_path}: {', '.join(changed)} cannot change its shape")
        if args.preset != ckpt["args"].get("preset", args.preset):  # typed: its values all come from the run
            common.fail(f"--resume continues the run of {ckpt_path}: --preset {args.preset} would change nothing "
                        "(give the flags to change, e.g. --max-steps)")
    if args.seq_len > model.args.max_seq_len:
        common.fail(f"--seq-len {args.seq_len} is longer than the checkpoint's context ({model.args.max_seq_len})")
    optimizer = configure_optimizer(model, args.lr, args.weight_decay, (0.9, args.beta2), device.split(":")[0])
    batch_gen = torch.Generator().manual_seed(args.seed)  # all processes draw the same global batch
    if ckpt is not None:
        load_optimizer_state(optimizer, ckpt["optimizer"])
        batch_gen.set_state(ckpt["batch_rng"].cpu())  # (load_checkpoint moved it to the device: a CPU generator)
    train_model = torch.compile(model) if args.compile else model
    if ddp.enabled:
        train_model = DDP(train_model, device_ids=[ddp.local_rank] if device.startswith("cuda") else None)
    ctx = common.autocast(device, dtype)
    micro_per_rank = args.grad_accum // ddp.world_size
    tokens_per_step = args.batch_size * args.grad_accum * args.seq_len
    log(f"model: {model.num_params() / 1e6:.2f}M parameters {model.args} | {tokens_per_step:,} tokens/step | "
        f"{ddp.world_size} process(es) on {device} in {dtype}" + (f" | resuming at step {start_step}" if ckpt else ""))
    if not args.resume:
        common.note_fresh_run([ckpt_path], log)

    def save(step):
        if master:
            save_checkpoint(ckpt_path, model, "base", step=step, optimizer=optimizer, args=vars(args),
                            tokenizer=tok.fingerprint,
                            batch_rng=batch_gen.get_state())

    # the loop: one optimizer step = grad_accum micro-batches drawn as one global batch; each process
    # takes every world_size-th micro-batch, DDP averages the gradients (so N processes = 1 process)
    step, val_loss, t_last, logged = start_step, None, common.Timer(), start_step
    with common.GracefulStop() as stop:
        while step < args.max_steps and not ddp.any(stop.requested):
            lr = lr_at(step, args.max_steps, args.lr, args.warmup, args.lr * args.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, y = common.get_batch(train_data, args.batch_size * args.grad_accum, args.seq_len, batch_gen)
            if model.args.dropout:
                common.seed_dropout(args.seed, step, ddp.rank, ddp.world_size)
            loss_sum = torch.zeros((), device=device)  # summed on the device: no wait for the GPU per micro-batch
            for k in range(micro_per_rank):
                rows = slice((k * ddp.world_size + ddp.rank) * args.batch_size,
                             (k * ddp.world_size + ddp.rank + 1) * args.batch_size)
                if ddp.enabled:  # only the last backward of the step all-reduces the gradients
                    train_model.require_backward_grad_sync = k == micro_per_rank - 1
                with ctx:
                    loss = lm_loss(train_model(x[rows].to(device)), y[rows].to(device)) / micro_per_rank
                loss.backward()
                loss_sum += loss.detach()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum = common.stop_if_diverged(loss_sum, model, step + 1, ckpt_path, ddp)
            step += 1
            if step % args.log_interval == 0 or step == args.max_steps or step == start_step + 1:
                loss_avg = ddp.mean(loss_sum)
                dt, logged = t_last() / (step - logged), step  # the steps since the last line, not the interval
                eta = dt * (args.max_steps - step)
                log(common.step_line(step, args.max_steps, loss_avg, lr, dt, tokens_per_step,
                                     f" | eta {eta / 60:.1f} min"), flush=True)
                t_last = common.Timer()
            if step % args.eval_interval == 0 or step == args.max_steps:
                if master:
                    val_loss = estimate_loss(model, val_data, args.batch_size, args.seq_len, args.eval_batches,
                                             device, ctx)
                    log(f"step {step}: val loss {val_loss:.3f}", flush=True)
                if master and not math.isfinite(val_loss):  # never write nan weights over a good checkpoint
                    log(f"step {step}: not saved, the val loss is {val_loss}")
                else:
                    save(step)
    stop.exit_if_stopped(step, step >= args.max_steps, lambda: save(step), ckpt_path, log, ddp)
    train_s = timer()
    ddp.close()
    if not master:
        return

    # the exam
    model.eval()
    world_exam = not args.data and args.exam_items > 0  # (the world's questions mean nothing to a model of your text)
    log("exam: validation loss" + (", fact recall, Q/A-framed answers" if world_exam else "") + ", dreams ...",
        flush=True)
    val_loss = estimate_loss(model, val_data, args.batch_size, args.seq_len, 4 * args.eval_batches, device, ctx)
    metrics = {"val_loss": round(val_loss, 4), "fact_recall": None, "qa_framed": None, "steps": step,
               "params": model.num_params(), "train_tokens": meta["train_tokens"], "seed": args.seed}
    lines = [f"## Pretraining (`{common.command_line('train.py', argv)}`)", "",
             f"{model.num_params() / 1e6:.2f}M parameters, {step} steps x {tokens_per_step:,} tokens, "
             f"seed {args.seed}, on {device}.", "", f"- validation loss: **{val_loss:.3f}**"]
    exam = None
    if world_exam:
        try:
            exam = pretrain_exam(model, tok, world_lib.make_world(args.world_people, args.world_seed), args.exam_items)
        except ContextError as e:  # a --seq-len too short for the world's questions: the report is written without
            log(f"note: no recall or Q/A exam: {e}")
    if exam:
        recall, bare, qa, examples = exam
        metrics.update(fact_recall=round(recall, 4), fact_recall_bare=round(bare, 4), qa_framed=round(qa, 4))
        lines += [f"- fact recall by completion of a bio page (\"People of the valley: Anna Ward\\n\\nAnna Ward "
                  f"lives in\"): **{recall:.1%}**; of the bare sentence, with no page around it: {bare:.1%}",
                  f"- Q/A-framed accuracy (seed 001's \"Q: ... A:\" hack, exam phrasings): **{qa:.1%}**", "",
                  common.md_table(["prompt", "greedy completion", "correct"], examples)]
        log(f"exam: val loss {val_loss:.3f} | fact recall {recall:.1%} (bare sentence {bare:.1%}) | Q/A-framed {qa:.1%}")
    else:
        log(f"exam: val loss {val_loss:.3f}")
    dreams = dream(model, tok, 3, 120, args.seed)
    lines += ["", "Dreamed documents (sampled from BOS, temperature 0.8, top-p 0.95):", ""]
    lines += ["```\n" + d.strip() + "\n```" for d in dreams]
    for d in dreams:
        log("--- dream ---\n" + d.strip())
    metrics["wall_s"] = round(timer(), 1)
    lines.insert(3, f"Wall time {metrics['wall_s']:.0f} s (training {train_s:.0f} s).")
    reported = common.update_report(args.out_dir, "pretrain", metrics, "\n".join(lines))
    log(f"done in {metrics['wall_s']:.0f} s: {ckpt_path}"
        + (f", report in {args.out_dir}/report.md" if reported else ""))


if __name__ == "__main__":
    common.run_main(main)
