"""
Stage 2, instruction finetuning (SFT): from document generator to assistant (seed 002).

Seed 002: "keep the optimization identical" and change the dataset. The same objective, pretraining's
next-token loss (the schedule is SFT's own: a few epochs, decay to 0), on conversations instead of documents,
counted only on what the assistant says (its content and the <|end|> that closes its turn; target -1
elsewhere). This is behaviour cloning (seed 000): the model learns to answer in the demonstrators' format,
and to stop, while the knowledge comes from pretraining.

The exam asks questions in phrasings the SFT data never used, about people the SFT data asked about and
about people only the pretraining documents mentioned (does stage-1 knowledge surface in stage-2 format?),
plus the reversal probe (seed 002's reversal curse) and the base model with the "Q: ... A:" framing.

Reads: out/base.pt, out/tok.model, out/train.bin (the --pretrain-mix), --data (JSONL chats) or the world
Writes: out/sft.pt, report
    python sft.py                                    # the world's conversations, ~1-2 minutes on 2 CPU cores
    python sft.py --data chats.jsonl --epochs 2      # {"messages": [{"role": "user", "content": ...}, ...]}
    torchrun --standalone --nproc_per_node 2 sft.py
"""
import argparse
import hashlib
import json
import math
import os
import random
import sys

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import common
import world as world_lib
from model import (CheckpointError, ContextError, configure_optimizer, load_checkpoint, load_optimizer_state, lm_loss,
                   save_checkpoint)
from tokenizer import Tokenizer, check_messages, render_chat


# ----------------------------------------------------------------------------------------------------------
# data

def read_chat_jsonl(path):
    """Conversations from a JSONL file, one {"messages": [...]} per line; any bad line stops the run with
    its line number, before any training."""
    convs = []
    for n, row in common.read_jsonl(path, f"--data {path} does not exist"):
        if not isinstance(row, dict) or "messages" not in row:
            raise ValueError(f"{path}:{n}: expected an object with a \"messages\" list")
        try:
            check_messages(row["messages"])
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        if not any(m["role"] == "assistant" for m in row["messages"]):
            raise ValueError(f"{path}:{n}: no assistant message to learn from")
        empty = [i for i, m in enumerate(row["messages"]) if not m["content"].strip()]
        if empty:  # most likely a field lost on the way; an empty answer would teach the model to say nothing
            raise ValueError(f"{path}:{n}: message {empty[0]} ({row['messages'][empty[0]]['role']}) is empty")
        convs.append(row["messages"])
    if not convs:
        raise ValueError(f"--data {path} holds no conversations")
    return convs


def conversations_sha(convs):
    """The sha256 of json.dumps(convs, sort_keys=True), fed a conversation at a time: the same digest without a
    second copy of a chat dataset as one string. 16 hex digits, recorded in sft.pt to refuse a resume on other data."""
    h = hashlib.sha256(b"[")
    for i, c in enumerate(convs):
        h.update(((", " if i else "") + json.dumps(c, sort_keys=True)).encode())
    h.update(b"]")
    return h.hexdigest()[:16]


def encode_conversation(tok, messages, max_len):
    """(x, y) for one conversation: inputs and next-token targets, -1 where the next token is not the
    assistant's. A conversation longer than the context loses whole turns from its end, so no assistant
    answer is ever cut in the middle; returns None if not even the first answer fits."""
    while True:
        ids, mask = render_chat(tok, messages)
        if len(ids) <= max_len + 1:
            break
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages = messages[:last_user]
        if not any(m["role"] == "assistant" for m in messages):
            return None
    # int32 arrays, as a dataset of chats is held whole: 14 bytes a token, where lists of Python ints took 45
    # (a pointer in each list and an int object; the world's chats, measured with tracemalloc)
    x = np.array(ids[:-1], dtype=np.int32)
    y = np.where(np.array(mask[1:], dtype=bool), ids[1:], -1).astype(np.int32)
    return x, y


def collate(examples, device):
    """Right-pad a list of (x, y) to the longest: pad inputs with 0, targets with -1 (no loss).
    Padding rather than packing: conversations are short and independent, and a padded row never lets one
    conversation attend to another."""
    T = max(len(x) for x, _ in examples)
    xs = torch.zeros(len(examples), T, dtype=torch.long)
    ys = torch.full((len(examples), T), -1, dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        xs[i, :len(x)], ys[i, :len(y)] = torch.as_tensor(x), torch.as_tensor(y)
    return xs.to(device), ys.to(device)


@torch.no_grad()
def eval_loss(model, examples, batch_size, device):
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(examples), batch_size):
        x, y = collate(examples[s:s + batch_size], device)
        n = (y != -1).sum().item()
        total += lm_loss(model(x), y).item() * n
        count += n
    model.train()
    return total / max(count, 1)


# ----------------------------------------------------------------------------------------------------------
# the SFT exam

def sft_exam(model, base, tok, world, n_items):
    """Chat accuracy on unseen phrasings for SFT-seen and pretraining-only people, the reversal probe, the
    stop rate; and the base model on the same questions with the Q/A framing of seed 001."""
    sets = {"qa_seen": world_lib.qa_items(world, world.sft_people, "exam")[:n_items],
            "qa_unseen": world_lib.qa_items(world, world.pretrain_only_people, "exam")[:n_items],
            "reversal": [it for it in world_lib.reversal_items(world) if not it["sft"]][:n_items]}
    metrics, rows, samples, ended_all = {}, [], [], []
    for name, items in sets.items():
        answers = common.chat_answers(model, tok, [it["question"] for it in items])
        ok = [world_lib.grade(it, text) for it, (_, text, _) in zip(items, answers)]
        ended_all += [ended for _, _, ended in answers]
        prompts = [[tok.bos_id] + tok.encode(world_lib.qa_framed(it["question"])) for it in items]
        base_out = common.generate_many(base, prompts, 16, temperature=0.0, stop_id=tok.eos_id)
        base_ok = [world_lib.grade(it, tok.decode([t for t in o if t != tok.eos_id]).split("\n")[0])
                   for it, o in zip(items, base_out)]
        metrics[name] = round(sum(ok) / len(ok), 4)
        metrics[f"base_{name}"] = round(sum(base_ok) / len(base_ok), 4)
        rows.append([name.replace("_", " "), len(items), f"{sum(base_ok) / len(base_ok):.1%}", f"{sum(ok) / len(ok):.1%}"])
        samples += [(it["question"], text, "yes" if good else "no") for it, (_, text, _), good
                    in list(zip(items, answers, ok))[:3]]
    metrics["stop_rate"] = round(sum(ended_all) / len(ended_all), 4)
    return metrics, rows, samples


# ----------------------------------------------------------------------------------------------------------

def get_args(argv=None):
    p = argparse.ArgumentParser(description="Instruction finetuning: loss on the assistant's tokens only.",
                                formatter_class=common.HelpFormatter)
    # I/O
    p.add_argument("--out-dir", default="out", help="where tok.model is, and sft.pt and the report go")
    p.add_argument("--init", default=None, help="checkpoint to finetune (default: OUT_DIR/base.pt)")
    p.add_argument("--data", default=None, help="JSONL of {\"messages\": [...]} (default: the world's conversations)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/sft.pt (optimizer, step)")
    p.add_argument("--conversations", type=int, default=None,
                   help="world conversations (default: 15 x the world's people; all about the SFT half, or sums)")
    # optimisation. Small data: a few epochs, linear warmup then linear decay to 0, so the model takes the
    # format without forgetting what pretraining put in the weights (nanochat's chat_sft decays linearly to 0).
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the conversations")
    p.add_argument("--batch-size", type=int, default=32, help="conversations per step (split over processes)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=20, help="linear warmup steps, then linear decay to 0")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decay on 2-D weights")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="conversations held out for val loss")
    # Pretraining text mixed into every step (InstructGPT's "ptx" mix, here during SFT): without it the
    # model memorised the SFT people and forgot how to reach what it knew about the others (measured on
    # the default world, exam phrasings: pretraining-only people 35% without it, 61-72% with it, when the mix
    # was added; 91.7% with it in the README's run).
    p.add_argument("--pretrain-mix", type=int, default=16,
                   help="windows of OUT_DIR/train.bin per step, whose next-token loss is added to the chat loss (0: off)")
    p.add_argument("--pretrain-mix-len", type=int, default=128, help="tokens per pretraining window")
    # evaluation, logging
    p.add_argument("--log-interval", type=int, default=20, help="steps between log lines")
    p.add_argument("--eval-interval", type=int, default=100, help="steps between val loss + checkpoint")
    p.add_argument("--exam-items", type=int, default=300, help="questions per exam set (0: skip the exam)")
    # system
    common.add_system_args(p)
    p.add_argument("--seed", type=common.SEED, default=1337,
                   help="seed for the data order, the pretraining windows and dropout's masks")
    args = p.parse_args(argv)
    if args.resume and args.init:  # as typed: a run started with --init records it, and --resume brings it back
        p.error("--resume and --init exclude each other (--resume continues from OUT_DIR/sft.pt)")
    if args.resume:  # the stopped run's flags unless given again, as train.py does
        args = common.resumed_args(p, sys.argv[1:] if argv is None else argv, args,
                                   os.path.join(args.out_dir, "sft.pt"),
                                   ("resume", "out_dir", "device", "dtype", "threads", "log_interval"))
    common.check_ranges(p, args, at_least_1=("conversations", "batch_size", "pretrain_mix_len", "log_interval",
                                             "eval_interval"),
                        at_least_0=("warmup", "weight_decay", "grad_clip", "pretrain_mix", "exam_items", "threads"),
                        positive=("epochs", "lr"), below_1=("val_fraction",))
    # paths as absolute: a checkpoint records them, and --resume may run from another directory
    args.data, args.init = (x and os.path.abspath(x) for x in (args.data, args.init))
    return args


def main(argv=None):
    args = get_args(argv)
    device, dtype = common.start(args)
    ddp = common.Dist(device)
    device, master = ddp.device, ddp.master
    log = print if master else (lambda *a, **k: None)
    timer = common.Timer()
    init = args.init or os.path.join(args.out_dir, "base.pt")
    ckpt_path = os.path.join(args.out_dir, "sft.pt")
    for flag in ("batch_size", "pretrain_mix"):  # each process takes an equal share of the step's rows
        if getattr(args, flag) % ddp.world_size:
            common.fail(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be a multiple of the "
                        f"{ddp.world_size} processes")
    try:
        tok = Tokenizer(os.path.join(args.out_dir, "tok.model"))
        if master:
            common.check_writable(args.out_dir)
        if args.resume:
            model, ckpt = load_checkpoint(ckpt_path, device, stages=("sft",), tokenizer=tok.fingerprint)
        else:
            model, ckpt = load_checkpoint(init, device, stages=("base", "sft", "rlhf"), tokenizer=tok.fingerprint)
        base_args = ckpt["args"] if ckpt["stage"] == "base" else ckpt["args"].get("base_args", {})
        world = world_lib.make_world(base_args.get("world_people", 100), base_args.get("world_seed", 1337))
        base_path = (ckpt["args"].get("init") or init) if args.resume else init  # the model SFT started from
        if args.exam_items > 0 and not args.data and not os.path.exists(base_path):  # found now, not after training
            raise ValueError(f"the exam compares with the model SFT started from, {base_path}, which is gone: "
                             "put it back, or pass --exam-items 0")
        convs = read_chat_jsonl(args.data) if args.data else world_lib.sft_conversations(world, args.conversations)
    except (CheckpointError, ValueError) as e:
        common.fail(e)
    if model.args.vocab_size != tok.vocab_size:
        common.fail(f"{init} has vocab {model.args.vocab_size} but {args.out_dir}/tok.model has {tok.vocab_size}")
    data_sha = conversations_sha(convs)
    if args.resume and ckpt.get("data_sha", data_sha) != data_sha:  # the step counts and the order would not hold
        common.fail(f"cannot resume: the conversations ({args.data or 'the built-in world'}) changed since this run "
                    "started; start over without --resume")

    # conversations -> (x, y); the order of the examples is fixed by the seed, so a resumed run sees the same
    random.Random(args.seed).shuffle(convs)
    encoded = [encode_conversation(tok, c, model.args.max_seq_len) for c in convs]
    dropped = sum(e is None for e in encoded)
    examples = [e for e in encoded if e is not None]
    truncated = sum(len(e[0]) < len(render_chat(tok, c)[0]) - 1 for c, e in zip(convs, encoded) if e is not None)
    if not examples:
        common.fail(f"no conversation fits the {model.args.max_seq_len}-token context")
    n_val = int(len(examples) * args.val_fraction)
    val, train = examples[:n_val], examples[n_val:]
    steps_per_epoch = -(-len(train) // args.batch_size)
    max_steps = max(1, int(args.epochs * steps_per_epoch))
    log(f"data: {len(train):,} train / {len(val):,} val conversations, "
        f"{sum(int((y != -1).sum()) for _, y in train):,} supervised tokens; "
        f"{truncated} cut to fit the context at a turn boundary, {dropped} dropped (first answer does not fit)")

    mix_data = None
    if args.pretrain_mix > 0:
        mix_path = os.path.join(args.out_dir, "train.bin")
        if not os.path.exists(mix_path):
            common.fail(f"--pretrain-mix needs the pretraining tokens at {mix_path} (or --pretrain-mix 0)")
        size = os.path.getsize(mix_path)  # uint16 tokens: an odd size is a file cut short
        if size % 2 or size // 2 <= min(args.pretrain_mix_len, model.args.max_seq_len):
            common.fail(f"{mix_path} is damaged or shorter than one window ({size:,} bytes): run train.py again, or "
                        "give --pretrain-mix 0")
        mix_data = np.memmap(mix_path, dtype=np.uint16, mode="r")
    optimizer = configure_optimizer(model, args.lr, args.weight_decay, (0.9, 0.95), device.split(":")[0])
    start_step = 0
    if args.resume:
        load_optimizer_state(optimizer, ckpt["optimizer"])
        start_step = ckpt["step"]
    train_model = DDP(model, device_ids=[ddp.local_rank] if device.startswith("cuda") else None) if ddp.enabled else model
    ctx = common.autocast(device, dtype)
    run_args = {**vars(args), "base_args": base_args}
    log(f"model: {model.num_params() / 1e6:.2f}M parameters from {ckpt_path if args.resume else init} | "
        f"{max_steps} steps ({args.epochs} epochs x {steps_per_epoch}) | {ddp.world_size} process(es) on {device} "
        f"in {dtype}")
    if not args.resume:
        common.note_fresh_run([ckpt_path], log)

    def save(step):
        if master:
            save_checkpoint(ckpt_path, model, "sft", step=step, optimizer=optimizer, args=run_args,
                            tokenizer=tok.fingerprint, data_sha=data_sha)

    def batch_rows(step):
        """The conversations of a step: epoch-wise permutations from the seed, so any step can be rebuilt."""
        epoch, k = divmod(step, steps_per_epoch)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed + epoch)).tolist()
        rows = order[k * args.batch_size:(k + 1) * args.batch_size]
        mine = [train[i] for i in rows[ddp.rank::ddp.world_size]]
        # the last batch of an epoch can have fewer rows than there are processes: one left without a row still
        # takes part in the step (DDP waits for every process's backward), on a row it gives the weight 0 below
        return (mine, True) if mine else ([train[rows[0]]], False)

    step, t_last, logged = start_step, common.Timer(), start_step
    with common.GracefulStop() as stop:
        while step < max_steps and not ddp.any(stop.requested):
            lr = common.linear_lr(step, max_steps, args.lr, args.warmup)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch, weighted = batch_rows(step)
            if model.args.dropout:
                common.seed_dropout(args.seed, step, ddp.rank, ddp.world_size)
            x, y = collate(batch, device)
            with ctx:
                loss = lm_loss(train_model(x), y)
                if ddp.enabled:  # each process's mean over its own answer tokens, weighted so that DDP's mean of
                    n = (y != -1).sum().item() if weighted else 0  # the gradients is the whole batch's mean (= 1 process)
                    loss = loss * n * ddp.world_size / ddp.sum(n)
                if mix_data is not None:  # the same next-token loss on pretraining text, drawn anew per step
                    # (through the unwrapped model: DDP's forward runs once a step, the gradients of both
                    # losses reach the parameters before its one all-reduce); the step's windows, this process's share
                    gen = torch.Generator().manual_seed(args.seed * 100_003 + step)
                    px, py = common.get_batch(mix_data, args.pretrain_mix,
                                              min(args.pretrain_mix_len, model.args.max_seq_len), gen)
                    px, py = px[ddp.rank::ddp.world_size], py[ddp.rank::ddp.world_size]
                    chat_loss, ptx_loss = loss, lm_loss(model(px.to(device)), py.to(device))
                    loss = chat_loss + ptx_loss
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = common.stop_if_diverged(loss.detach(), model, step + 1, ckpt_path, ddp)
            step += 1
            if step % args.log_interval == 0 or step == max_steps:
                dt, logged = t_last() / (step - logged), step
                tokens = (x.numel() + args.pretrain_mix * args.pretrain_mix_len // ddp.world_size) * ddp.world_size
                parts = "" if mix_data is None else (f" | loss = chat {ddp.mean(chat_loss.item()):.3f} + pretraining "
                                                     f"text {ddp.mean(ptx_loss.item()):.3f}")
                log(common.step_line(step, max_steps, ddp.mean(loss_value), lr, dt, tokens,
                                     f"{parts} | eta {dt * (max_steps - step) / 60:.1f} min"), flush=True)
                t_last = common.Timer()
            if step % args.eval_interval == 0 or step == max_steps:
                val_loss = eval_loss(model, val, args.batch_size, device) if master and val else 0.0
                if val:
                    log(f"step {step}: val loss {val_loss:.3f}", flush=True)
                if math.isfinite(val_loss):
                    save(step)
                else:  # never write nan weights over a good checkpoint
                    log(f"step {step}: not saved, the val loss is {val_loss}")
    stop.exit_if_stopped(step, step >= max_steps, lambda: save(step), ckpt_path, log, ddp)
    train_s = timer()
    ddp.close()
    if not master:
        return

    # the exam (on the world's people; with --data, only the val loss)
    model.eval()
    val_loss = eval_loss(model, val, args.batch_size, device) if val else None
    metrics = {"val_loss": round(val_loss, 4) if val_loss is not None else None, "steps": step,
               "conversations": len(train), "dropped": dropped, "truncated": truncated}
    lines = [f"## SFT: instruction finetuning (`{common.command_line('sft.py', argv)}`)", "",
             f"{len(train):,} conversations, {step} steps, seed {args.seed}, from `{init}`.", ""]
    if val_loss is not None:
        lines.append(f"- validation loss on held-out conversations (assistant tokens): **{val_loss:.3f}**")
    exam = None
    if args.exam_items > 0 and not args.data:
        log("exam: unseen phrasings for SFT-seen and pretraining-only people, reversal, base model ...", flush=True)
        try:
            base, _ = load_checkpoint(base_path, device, tokenizer=tok.fingerprint)
        except CheckpointError as e:  # sft.pt is saved: only the exam is lost
            common.fail(f"{e} (sft.pt is saved; only the exam is missing)")
        try:
            exam, rows, samples = sft_exam(model, base.eval(), tok, world, args.exam_items)
        except ContextError as e:  # a context too short for the world's questions: the report is written without
            log(f"note: no exam: {e}")
    if exam:
        metrics.update(exam)
        lines += [f"- answers that end with `<|end|>` (stop rate): **{exam['stop_rate']:.1%}**", "",
                  "Exam phrasings never appear in the SFT data. Base = the model SFT started from, with the "
                  "`Q: ... A:` framing; SFT = the chat model.", "",
                  common.md_table(["questions about", "n", "base (Q/A framing)", "SFT (chat)"], rows), "",
                  "The reversal probe asks \"Who is <mother>'s child?\" when every document only ever said "
                  "\"<child>'s mother is <mother>\" (the reversal curse, seed 002).", "",
                  common.md_table(["question", "SFT answer", "correct"], samples)]
        log(f"exam: seen {exam['qa_seen']:.1%} | unseen {exam['qa_unseen']:.1%} | reversal {exam['reversal']:.1%} "
            f"| stop rate {exam['stop_rate']:.1%} | base Q/A: seen {exam['base_qa_seen']:.1%} "
            f"unseen {exam['base_qa_unseen']:.1%}")
    metrics["wall_s"] = round(timer(), 1)
    lines.insert(3, f"Wall time {metrics['wall_s']:.0f} s (training {train_s:.0f} s).")
    reported = common.update_report(args.out_dir, "sft", metrics, "\n".join(lines))
    log(f"done in {metrics['wall_s']:.0f} s: {ckpt_path}"
        + (f", report in {args.out_dir}/report.md" if reported else ""))


if __name__ == "__main__":
    common.run_main(main)
