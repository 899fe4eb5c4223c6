"""
Stage 3, RLHF: comparisons -> a reward model -> policy optimisation against it (seeds 000-004).

It is easier to compare two answers than to write a good one (seeds 002, 003). So we sample several answers per
prompt from the SFT model, have them compared, train a reward model (RM) to imitate the comparisons, and then
let the policy maximise the RM's score, on a leash (a KL penalty) to the SFT model it started from. The RM
is only a model of the labeler: optimise it too hard and the policy finds answers it scores high that the
labeler would not like ("adversarial examples", seed 003). Because the built-in world's labeler is a known
function (world.gold_score), we can watch this happen: the gold reward is measured at every step and never
optimised.

1. Comparisons, from one of: the simulated labeler (default; world.label, Bradley-Terry noise), a person at
   the terminal (--label; 1/2/t(ie)/s(kip)/q(uit), saved as you go), or a JSONL file (--comparisons FILE,
   one {"prompt", "chosen", "rejected"} per line, optional "tie", "chosen_ended", "rejected_ended").
   Written to OUT_DIR/comparisons.jsonl (comparisons_TAG.jsonl for a --tag run with its own RM); a run that
   would write over comparisons no run can make again (a person's, a file put there) refuses instead.
2. Reward model: the SFT transformer with a scalar head read at the last token, plus --rm-likelihood times the
   mean log-probability its own LM head gives the answer (model.Transformer.score), trained with the
   Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), a prompt's answers scored once for all its pairs
   (InstructGPT's batching, so many comparisons per prompt are cheap); its held-out pairwise accuracy is reported
   beside the accuracy the noisy labeler itself allows on the same pairs. OUT_DIR/rm.pt. A later run reuses
   rm.pt when it was trained from the same SFT checkpoint, comparisons and settings.
   Why the likelihood term: a freshly initialised head knows nothing, and fine-tuning the body for it wears away
   what the body knew (untrained, the SFT likelihood orders right against wrong answers as well as a head-only
   RM does after training). With the term, the RM starts from the model's own belief in the answer and the
   comparisons adjust it; the LM weights are trained through both terms (a reference-free cousin of DPO's
   implicit reward, Rafailov et al. 2023). Measured in the README; --rm-likelihood 0 is InstructGPT's RM.
3. Policy optimisation: REINFORCE with a leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024,
   "RLOO") over K samples per prompt, reward = RM score - kl_coef * KL(policy || SFT), optionally with PPO's
   clipped ratio for several updates per batch (--ppo-epochs). The policy-gradient derivation (seed 004) is
   written next to the loss, in `policy_loss`.
4. Early stopping by a held-out spot check: every --eval-interval steps the labeler compares the current
   policy's answer with the SFT model's answer on a fixed set of held-out prompts (fresh comparisons, the
   periodic human check a team does by hand; --spot-prompts labels per check, beyond --n-comparisons).
   OUT_DIR/rlhf.pt holds the policy with the best spot-check win-rate (the latest, on a model pretrained on other
   text than the world's, which the labeler cannot judge); OUT_DIR/rlhf_last.pt the latest one (with the
   optimizer, for --resume).
5. The exam: gold win-rate of the chosen policy against SFT on other held-out prompts (both sampled at
   temperature 1, ties count half), KL to SFT, QA accuracy before and after (the alignment tax), the curve of
   proxy and gold reward against KL (rl_curve.jsonl, rl_curve.svg), and what changed in the answers from the
   gold peak to the end (the reward hacking, if any).

Simplifications against InstructGPT's PPO (Ouyang et al. 2022; Stiennon et al. 2020; Ziegler et al. 2019):
- No value network and no GAE: the baseline is the mean reward of the other K-1 samples of the same prompt,
  and the advantage is one number per answer (the whole answer is one action for the credit assignment).
- The reward (RM score minus the KL penalty) is given per answer, not per token; the KL penalty uses the
  sampled estimate sum_t [log pi(a_t) - log pi_ref(a_t)] (the exact KL over the vocabulary is logged beside).
- --ppo-epochs 1 (the default) is plain on-policy REINFORCE: the ratio is 1 and clipping never acts. With more
  epochs, PPO's clipped ratio per token, on the same advantages; no minibatches, no value loss, no entropy bonus.
- A fixed KL coefficient (no adaptive KL controller), and no pretraining-gradient mix (InstructGPT's PPO-ptx).
- The RM is initialised from the policy's own SFT model (InstructGPT's from a 6B SFT model whatever the
  policy's size), and its score adds the answer's mean log-probability under its own LM head (InstructGPT's RM
  is the head alone: --rm-likelihood 0). Each pair of a prompt's K answers is labelled on its own
  (InstructGPT's labelers rank all K at once); as there, all of a prompt's pairs are one batch element. RM
  scores are normalised to mean 0 / std 1 on the answers of the comparisons, SFT samples by default
  (InstructGPT: mean 0 on demonstrations).
- The prompts of one step share their token length (model.generate has no attention mask for left padding),
  the length drawn in proportion to how many prompts have it; over many steps every prompt of a length shared
  by at least --prompts-per-step prompts is equally likely (10 of the world's 2,400 are never drawn).
- Early stopping by a labeler spot check of the current policy against SFT (see 4.), not by a held-out RM.
- Tiny everything: one process, prompts from the built-in world, answers of at most --max-new-tokens tokens.

Reads: OUT_DIR/sft.pt (or --init), OUT_DIR/tok.model; rm.pt when it was trained the same way; a --comparisons
file or, with --label, OUT_DIR/comparisons.jsonl; with --resume, rlhf_last.pt, rlhf.pt and rl_curve.jsonl
Writes: comparisons.jsonl, rm.pt, rlhf.pt, rlhf_last.pt,
rl_curve.jsonl, rl_curve.svg, report (with --tag T: rlhf_T.pt, rlhf_T_last.pt, rl_curve_T.*, report section
rlhf_T, and rm_T.pt, comparisons_T.jsonl and report section rm_T unless rm.pt is there and was trained the
same way)
    python rlhf.py                                  # simulated labeler, RM, RL, exam: a few minutes on 2 CPU cores
    python rlhf.py --rm-likelihood 0 --rm-lr 1e-3 --kl-coef 0 --steps 300 --tag hack
                                                    # reward hacking on purpose: InstructGPT's RM (the head alone),
                                                    # no leash; its own rm_hack.pt
    python rlhf.py --kl-coef 0 --steps 600 --tag nokl   # the default RM (reuses rm.pt) without the leash
    python rlhf.py --label                          # be the labeler yourself (q saves and quits; run again to go on)
    python rlhf.py --comparisons my_pairs.jsonl     # comparisons from a file
"""
import argparse
import collections
import copy
import hashlib
import json
import os
import random
import re
import sys
from dataclasses import asdict

import torch
import torch.nn.functional as F

import common
import world as world_lib
from model import (CheckpointError, ModelArgs, Transformer, configure_optimizer, load_checkpoint,
                   load_optimizer_state, mean_logprob, peek_checkpoint, save_checkpoint, token_logprobs)
from tokenizer import Tokenizer, encode_content, render_chat


# ----------------------------------------------------------------------------------------------------------
# sequences: a prompt is a one-turn chat ending in <|assistant|>; an answer is its tokens, plus <|end|> if it ended

def prompt_ids(tok, question):
    return render_chat(tok, [{"role": "user", "content": question}], add_generation_prompt=True)[0]


def answer_ids(tok, text, ended):
    """An answer's ids as render_chat writes an assistant turn, <|end|> if it ended."""
    return encode_content(tok, text) + ([tok.end_id] if ended else [])


def fits(tok, question, text, ended, max_len):
    """Whether the answer, as the RM reads it (re-encoded from its text), fits the context after the prompt. A chat
    marker or a stray byte the model sampled re-encodes to more tokens than it was sampled as, so an answer that
    fit while it was sampled may not (with --max-new-tokens near the context)."""
    return len(prompt_ids(tok, question)) + len(answer_ids(tok, text, ended)) <= max_len


def pad_batch(prompts, answers, device):
    """Rows [prompt + answer], right-padded with 0: tokens (B, T), targets (B, T) = the next token where it is
    an answer token and -1 elsewhere (prompt, padding: the one masking convention), lengths (B,)."""
    T = max(len(p) + len(a) for p, a in zip(prompts, answers))
    x = [p + a + [0] * (T - len(p) - len(a)) for p, a in zip(prompts, answers)]
    y = [[-1] * (len(p) - 1) + a + [-1] * (T - len(p) - len(a) + 1) for p, a in zip(prompts, answers)]
    lengths = [len(p) + len(a) for p, a in zip(prompts, answers)]
    return (torch.tensor(x, device=device), torch.tensor(y, device=device),
            torch.tensor(lengths, device=device))


def sampling_generator(model, seed):
    """A seeded generator on the model's device: the torch.rand of model.sample_next wants the two on the same
    device (a CPU generator fails on CUDA or MPS), as train.py's dream does."""
    return torch.Generator(device=model.tok_embeddings.weight.device).manual_seed(seed)


def file_sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# 1. comparisons

# the labelers of rows a run can make again: the simulated labeler's, and rlhf.py's copies of a --comparisons file
REMADE = ("simulated", "file")


def sample_answers(model, tok, items, k, max_new_tokens, generator):
    """k answers per item at temperature 1, as [(ids, text, ended)] grouped by item (k consecutive rows)."""
    return common.chat_answers(model, tok, [it["question"] for it in items for _ in range(k)], max_new_tokens,
                               temperature=1.0, generator=generator)


def simulated_comparisons(model, tok, items, n, k, max_new_tokens, seed, log):
    """n comparisons by the simulated labeler: k answers per prompt, every pair of different answers labelled
    (world.label: Bradley-Terry noise on the gold score). Each record keeps the labeler's agreement with the
    gold ordering (its ceiling) and the gold scores, which only the report reads."""
    rng, gen = random.Random(f"labeler-{seed}"), sampling_generator(model, seed)
    records, pos, chunk, too_long = [], 0, 256, 0  # (generate_many batches a chunk's equal-length prompts itself;
    # the sort by length only fixes the order of the records and of the random draws)
    while len(records) < n and pos < len(items):
        batch = sorted(items[pos:pos + chunk], key=lambda it: len(tok.encode(it["question"])))
        pos += chunk
        answers = sample_answers(model, tok, batch, k, max_new_tokens, gen)
        for i, it in enumerate(batch):
            group = answers[i * k:(i + 1) * k]
            fit = [fits(tok, it["question"], t, e, model.args.max_seq_len) for _, t, e in group]
            for a in range(k):
                for b in range(a + 1, k):
                    (_, ta, ea), (_, tb, eb) = group[a], group[b]
                    if (ta, ea) == (tb, eb) or len(records) == n:
                        continue  # the same answer twice teaches nothing
                    if not (fit[a] and fit[b]):
                        too_long += 1
                        continue
                    first = world_lib.label(it, ta, tb, rng, ea, eb)
                    (tc, ec), (tr, er) = ((ta, ea), (tb, eb)) if first == 0 else ((tb, eb), (ta, ea))
                    records.append({"prompt": it["question"], "chosen": tc, "rejected": tr, "chosen_ended": ec,
                                    "rejected_ended": er, "labeler": "simulated",
                                    "agreement": round(world_lib.labeler_agreement(it, ta, tb, ea, eb), 4),
                                    "gold_chosen": round(world_lib.gold_score(it, tc, ec), 3),
                                    "gold_rejected": round(world_lib.gold_score(it, tr, er), 3),
                                    "correct_chosen": world_lib.grade(it, tc), "correct_rejected": world_lib.grade(it, tr)})
        log(f"comparisons: {len(records)}/{n} labelled ({pos} prompts x {k} answers sampled)", flush=True)
    if too_long:
        log(f"note: {too_long} pairs left out: an answer re-encodes longer than the context (lower --max-new-tokens)")
    return records


def terminal_pairs(model, tok, items, max_new_tokens, generator, chunk=8):
    """(prompt, a, b, ended_a, ended_b) for a person to compare: two answers per item, sampled a few items at a
    time as the person goes (sampling thousands first would keep them waiting), never the same answer twice."""
    for pos in range(0, len(items), chunk):
        batch = items[pos:pos + chunk]
        answers = sample_answers(model, tok, batch, 2, max_new_tokens, generator)
        for it, (_, a, ea), (_, b, eb) in zip(batch, answers[::2], answers[1::2]):
            if (a, ea) != (b, eb) and all(fits(tok, it["question"], t, e, model.args.max_seq_len)
                                          for t, e in ((a, ea), (b, eb))):
                yield it["question"], a, b, ea, eb


def append_lines(path):
    """path opened to append lines to, after a newline if it lacks its last one (a file edited by hand)."""
    f = open(path, "a", encoding="utf-8")
    if f.tell():
        with open(path, "rb") as g:
            g.seek(-1, os.SEEK_END)
            if g.read(1) != b"\n":
                f.write("\n")
    return f


def label_at_terminal(pairs, path, goal, ask=input, show=print):
    """A person compares answers until `goal` are saved: for each (prompt, a, b, ended_a, ended_b) shows both
    and asks 1 / 2 / t (tie) / s (skip) / q (quit). Every answer is appended to `path` at once, so quitting (or
    Ctrl-C) loses nothing; the file is created with the first answer, so quitting before one leaves none.
    Returns the number of comparisons saved and whether the person quit."""
    saved, f = 0, None
    try:
        for prompt, a, b, ea, eb in pairs:
            show(f"\n[{saved + 1}/{goal}] user: {prompt}")
            show(f"  1: {a}{'' if ea else '  [cut off]'}")
            show(f"  2: {b}{'' if eb else '  [cut off]'}")
            while True:
                try:
                    choice = ask("better? 1 / 2 / t(ie) / s(kip) / q(uit): ").strip().lower()
                except EOFError:
                    choice = "q"
                if choice in ("1", "2", "t", "tie", "s", "skip", "q", "quit"):
                    break
                show("please answer 1, 2, t, s or q")
            if choice in ("q", "quit"):
                return saved, True
            if choice in ("s", "skip"):
                continue
            (c, ec), (r, er) = ((a, ea), (b, eb)) if choice != "2" else ((b, eb), (a, ea))
            f = f or append_lines(path)
            f.write(json.dumps({"prompt": prompt, "chosen": c, "rejected": r, "chosen_ended": ec,
                                "rejected_ended": er, "tie": choice in ("t", "tie"), "labeler": "human"}) + "\n")
            f.flush()
            saved += 1
            if saved == goal:  # before the next pair: it may cost a batch of sampling
                break
    finally:
        if f is not None:
            f.close()
    return saved, False


def read_comparisons(path):
    """Comparisons from JSONL, one {"prompt", "chosen", "rejected"} object per line (optional booleans "tie",
    "chosen_ended", "rejected_ended"; other keys are kept). A bad line raises ValueError naming FILE:LINE."""
    records = []
    for n, row in common.read_jsonl(path, f"no comparisons file at {path}"):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected an object with \"prompt\", \"chosen\" and \"rejected\"")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{path}:{n}: \"{key}\" must be a string")
        if not row["prompt"].strip():
            raise ValueError(f"{path}:{n}: empty \"prompt\"")
        for key in ("tie", "chosen_ended", "rejected_ended"):
            if key in row and not isinstance(row[key], bool):
                raise ValueError(f"{path}:{n}: \"{key}\" must be true or false")
        records.append({"tie": False, "chosen_ended": True, "rejected_ended": True, **row, "line": n})
    if not records:
        raise ValueError(f"{path} holds no comparisons")
    return records


def write_comparisons(path, records):
    with common.atomic_open(path, encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({k: v for k, v in r.items() if k != "line"}) + "\n")


def is_heldout(prompt, fraction):
    """A fixed split by prompt (a hash, so it holds for any source): no held-out prompt is trained on."""
    return int(hashlib.md5(prompt.encode()).hexdigest()[:8], 16) / 16**8 < fraction


# ----------------------------------------------------------------------------------------------------------
# 2. the reward model

def reward_model_from(policy, likelihood=0.0):
    """The SFT transformer plus a scalar head (model.py's reward_head), every other weight copied; its score
    adds `likelihood` times the mean log-probability of the answer under its own LM head (see --rm-likelihood)."""
    rm = Transformer(ModelArgs.from_dict({**asdict(policy.args), "reward_head": True,
                                          "reward_likelihood": likelihood}))
    missing, unexpected = rm.load_state_dict(policy.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("reward.") for k in missing), (missing, unexpected)
    return rm.to(policy.tok_embeddings.weight.device)


def bradley_terry_loss(r_chosen, r_rejected, tie=None, weight=None):
    """-log sigmoid(r_chosen - r_rejected): the negative log-likelihood of the labels under the Bradley-Terry
    model P(chosen > rejected) = sigmoid(r_chosen - r_rejected). A tie is a target of 1/2. Averaged over the
    pairs, or with `weight` a weighted average."""
    d = r_chosen - r_rejected
    target = torch.ones_like(d) if tie is None else torch.where(tie, 0.5, 1.0)
    nll = -(target * F.logsigmoid(d) + (1 - target) * F.logsigmoid(-d))
    return nll.mean() if weight is None else (nll * weight).sum() / weight.sum()


def pairwise_accuracy(r_chosen, r_rejected):
    """Fraction of pairs the RM orders like the label (an exact tie of the scores counts half)."""
    d = r_chosen - r_rejected
    return ((d > 0).float() + 0.5 * (d == 0).float()).mean().item()


PAIR_KINDS = {1: "one right, one wrong", 0: "both wrong", 2: "both right"}


def accuracy_by_kind(records, r_chosen, r_rejected):
    """Held-out accuracy split by what tells the two answers apart, each beside the labeler's ceiling on the
    same pairs: correctness (one right, one wrong: the labeler all but always takes the right one) or style
    alone (both right or both wrong: politeness, filler, repetition, length). Reads the simulated labeler's
    records (their "correct_*" and "agreement" keys)."""
    rows = {}
    for r, a, b in zip(records, r_chosen.tolist(), r_rejected.tolist()):
        kind = PAIR_KINDS[r["correct_chosen"] + r["correct_rejected"]]
        n, ok, ceiling = rows.get(kind, (0, 0.0, 0.0))
        rows[kind] = (n + 1, ok + (a > b) + 0.5 * (a == b), ceiling + r["agreement"])
    return {k: {"pairs": n, "accuracy": round(ok / n, 4), "labeler_ceiling": round(c / n, 4)}
            for k in PAIR_KINDS.values() if k in rows for n, ok, c in [rows[k]]}


def encode_pairs(tok, records, max_len, path):
    """records -> [(prompt ids, chosen ids, rejected ids, tie)]; a pair longer than the context is an error
    naming PATH:LINE."""
    out = []
    for r in records:
        p = prompt_ids(tok, r["prompt"])
        c, j = answer_ids(tok, r["chosen"], r["chosen_ended"]), answer_ids(tok, r["rejected"], r["rejected_ended"])
        if len(p) + max(len(c), len(j)) > max_len:
            raise ValueError(f"{path}:{r.get('line', '?')}: prompt + answer are longer than the model's {max_len}-token context")
        out.append((p, c, j, r.get("tie", False)))
    return out


def score_answers(model, prompts, answers, batch_size=128, likelihood=False):
    """Scores (no grad) of a list of (prompt ids, answer ids): the RM's scalar, or with likelihood=True a language
    model's mean log-probability per answer token, its own belief in the answer, which needs no comparisons."""
    device = model.tok_embeddings.weight.device
    scores = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            x, y, lengths = pad_batch(prompts[s:s + batch_size], answers[s:s + batch_size], device)
            if likelihood:
                scores.append(mean_logprob(model(x), y))
            else:
                scores.append(model.score(x, lengths, y))
    return torch.cat(scores) if scores else torch.zeros(0)


def reward_normalisation(rm, tok, records):
    """(mean, std) of the RM's scores over every answer of the comparisons (training and held-out), each once, in
    the order the records first give them: rollout_batch centres and scales the RM's scores by them. Not a set's
    order: that follows the strings' hashes, which Python seeds anew in every process, and batches padded
    differently round the floats differently, so the same command would train a different policy each time."""
    answers = dict.fromkeys((r["prompt"], r[k], r[f"{k}_ended"]) for r in records for k in ("chosen", "rejected"))
    scores = score_answers(rm, [prompt_ids(tok, q) for q, _, _ in answers],
                           [answer_ids(tok, a, e) for _, a, e in answers])
    return scores.mean().item(), scores.std().item() + 1e-6


def pair_scores(model, pairs, likelihood=False):
    """(r_chosen, r_rejected), no grad, for a list of encoded pairs (see score_answers)."""
    prompts = [p for p, _, _, _ in pairs] * 2
    r = score_answers(model, prompts, [c for _, c, _, _ in pairs] + [j for _, _, j, _ in pairs],
                      likelihood=likelihood)
    return r[:len(pairs)], r[len(pairs):]


def group_by_prompt(pairs):
    """Encoded pairs -> one group per prompt: (prompt ids, [answer ids, each once], [(i_chosen, i_rejected, tie)]).

    InstructGPT (Ouyang et al. 2022, section 3.5) makes all the comparisons of one prompt a single batch element:
    each answer is scored once per step, not once per pair it is in (K forward passes instead of 2 x C(K, 2)), and
    an answer no longer gets K-1 separate updates per epoch, which they found to overfit."""
    groups = {}
    for p, c, j, tie in pairs:
        _, answers, index, comparisons = groups.setdefault(tuple(p), (p, [], {}, []))
        for a in (c, j):
            if tuple(a) not in index:
                index[tuple(a)] = len(answers)
                answers.append(a)
        comparisons.append((index[tuple(c)], index[tuple(j)], tie))
    return [(p, answers, comparisons) for p, answers, _, comparisons in groups.values()]


def group_loss(rm, groups):
    """The Bradley-Terry loss of a batch of groups: the mean over prompts of the mean over each prompt's pairs
    (InstructGPT's 1 / C(K, 2) weighting, so a prompt with many comparisons does not outweigh the others)."""
    device = rm.tok_embeddings.weight.device
    flat_prompts = [p for p, answers, _ in groups for _ in answers]
    flat_answers = [a for _, answers, _ in groups for a in answers]
    x, y, lengths = pad_batch(flat_prompts, flat_answers, device)
    r = rm.score(x, lengths, y)  # every answer once
    chosen, rejected, tie, weight, offset = [], [], [], [], 0
    for _, answers, comparisons in groups:
        for ic, ij, t in comparisons:
            chosen.append(offset + ic)
            rejected.append(offset + ij)
            tie.append(t)
            weight.append(1 / len(comparisons))
        offset += len(answers)
    return bradley_terry_loss(r[chosen], r[rejected], torch.tensor(tie, device=device),
                              torch.tensor(weight, device=device))


def train_reward_model(rm, train_pairs, args, log):
    """Bradley-Terry on the training pairs, --rm-batch-size prompts (with all their comparisons) per step, for
    --rm-epochs epochs (AdamW, warmup then linear decay)."""
    device = rm.tok_embeddings.weight.device
    groups = group_by_prompt(train_pairs)
    opt = configure_optimizer(rm, args.rm_lr, 0.0, (0.9, 0.95), device.type)
    steps_per_epoch = -(-len(groups) // args.rm_batch_size)
    max_steps = max(1, int(args.rm_epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(args.seed)
    rm.train()
    t_last, order, logged = common.Timer(), [], 0
    for step in range(max_steps):
        if not order:
            order = torch.randperm(len(groups), generator=gen).tolist()
        batch = [groups[i] for i in order[:args.rm_batch_size]]
        del order[:args.rm_batch_size]
        lr = common.linear_lr(step, max_steps, args.rm_lr, warmup=10)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = group_loss(rm, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = common.stop_if_diverged(loss.detach(), rm, f"{step + 1} of the reward model", None)
        every = max(1, max_steps // 4)  # about four log lines (the held-out accuracy, a pass over many pairs,
        # comes after)
        if (step + 1) % every == 0 or step + 1 == max_steps:
            dt, logged = t_last() / (step + 1 - logged), step + 1
            tokens = sum(len(p) * len(answers) + sum(map(len, answers)) for p, answers, _ in batch)
            log(common.step_line(step + 1, max_steps, loss_value, lr, dt, tokens), flush=True)
            t_last = common.Timer()
    rm.eval()
    return max_steps


# ----------------------------------------------------------------------------------------------------------
# 3. policy optimisation

def rollout_batch(policy, ref, rm, tok, items, k, max_new_tokens, generator, reward_norm):
    """K answers per prompt from the policy, as one padded batch with everything the update needs."""
    device = policy.tok_embeddings.weight.device
    answers = sample_answers(policy, tok, items, k, max_new_tokens, generator)
    prompts = [prompt_ids(tok, it["question"]) for it in items for _ in range(k)]
    ids = [a for a, _, _ in answers]
    x, y, _ = pad_batch(prompts, ids, device)
    # the RM reads the answer as text (as it read the comparisons), so re-encode it, cut to the context (see fits)
    proxy = score_answers(rm, prompts, [answer_ids(tok, t, e)[:rm.args.max_seq_len - len(p)]
                                        for p, (_, t, e) in zip(prompts, answers)])
    proxy = (proxy - reward_norm[0]) / reward_norm[1]
    with torch.no_grad():
        ref_logits = ref(x)  # (B, T, V)
    gold = [world_lib.gold_score(it, t, e) for it, (_, t, e) in zip([it for it in items for _ in range(k)], answers)]
    return dict(x=x, y=y, answers=answers, proxy=proxy, gold=torch.tensor(gold), ref_logits=ref_logits,
                ref_logp=token_logprobs(ref_logits, y))


def prompt_buckets(tok, items, size):
    """The prompts grouped by token length, keeping the groups of at least `size` (all prompts in one group if
    none is that big). model.generate takes equal-length prompts (no attention mask, so no padding): a step
    whose prompts share a length samples all its answers in one batch instead of one batch per length."""
    groups = {}
    for it in items:
        groups.setdefault(len(prompt_ids(tok, it["question"])), []).append(it)
    big = [g for g in groups.values() if len(g) >= size]
    return big or [items]


def step_prompts(buckets, n, rng):
    """n prompts of one length group, the group drawn in proportion to its size: over many steps every
    prompt is equally likely. The prompts of a step depend only on rng, so a resumed run sees the same."""
    group = rng.choices(buckets, weights=[len(g) for g in buckets])[0]
    return rng.sample(group, min(n, len(group)))


def kl_exact(logits, ref_logits, mask):
    """KL(policy || reference) summed over the answer positions, exact over the vocabulary: (B,)."""
    logp, ref_logp = torch.log_softmax(logits.float(), -1), torch.log_softmax(ref_logits.float(), -1)
    return ((logp.exp() * (logp - ref_logp)).sum(-1) * mask).sum(1)


def entropy_per_token(logits, mask):
    logp = torch.log_softmax(logits.float(), -1)
    return ((-(logp.exp() * logp).sum(-1) * mask).sum() / mask.sum()).item()


def leave_one_out(rewards, k):
    """Advantage of each answer = its reward minus the mean reward of the other k-1 answers to the same prompt.
    The baseline does not depend on the answer it is subtracted from, so the gradient stays unbiased."""
    r = rewards.view(-1, k)  # (prompts, k)
    baseline = (r.sum(1, keepdim=True) - r) / (k - 1)
    return (r - baseline).view(-1)


def policy_loss(logp, old_logp, advantages, mask, clip):
    """The policy-gradient surrogate (seed 004). We want to climb J(theta) = E_{s ~ p_theta}[R(s)]:

        grad J = sum_s R(s) grad p_theta(s)                        (R does not depend on theta)
               = sum_s R(s) p_theta(s) grad log p_theta(s)         (log-derivative trick: grad p = p grad log p)
               = E_{s ~ p_theta}[R(s) grad log p_theta(s)]         (an expectation: estimate it with samples)

    and log p_theta(s) = sum_t log p_theta(a_t | prompt, a_<t), so each sampled answer pushes up the
    log-probability of its tokens in proportion to its reward. Subtracting a baseline b that does not depend
    on s leaves the expectation unchanged (E[grad log p] = grad sum_s p = grad 1 = 0) and cuts the variance:
    R(s) becomes the advantage A(s) = R(s) - b (leave_one_out).

    Written as PPO's clipped surrogate sum_t min(ratio_t A, clip(ratio_t, 1-eps, 1+eps) A) with
    ratio_t = p_theta(a_t) / p_old(a_t): on the first update theta = old, the ratio is 1 with gradient
    grad log p_theta(a_t), so the gradient is exactly A * grad log p_theta(s) above (REINFORCE); on later
    updates of the same batch (--ppo-epochs > 1) the clip stops a token's ratio from moving beyond 1 +- eps."""
    ratio = torch.exp(logp - old_logp)  # (B, T), 1 on the first update
    A = advantages[:, None]
    surrogate = torch.minimum(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A) * mask
    return -surrogate.sum(1).mean()  # minus: optimizers descend


# ----------------------------------------------------------------------------------------------------------
# measuring answers: the exam, the spot check, what the policy learned

def answer_stats(answers):
    """Per-answer means of what world.gold_score rewards or punishes, from (ids, text, ended) triples."""
    polite = {p.lower() for p in world_lib.POLITE}
    fillers = {s.lower() for s in world_lib.FILLERS}
    n = max(1, len(answers))
    rows = []
    for ids, text, ended in answers:
        sents = [s.strip().lower() for s in world_lib.sentences(text)]
        rows.append((len(ids), len(text), sum(s in polite for s in sents), len(sents) - len(set(sents)),
                     sum(s in fillers for s in sents), ended))
    stats = {key: round(sum(r[i] for r in rows) / n, 3)
             for i, key in enumerate(("tokens", "chars", "polite", "repeats", "fillers", "ended"))}
    stats["distinct"] = round(len({text for _, text, _ in answers}) / n, 3)  # 1: all different; low: collapse
    return stats


def win_rate(a_scores, b_scores):
    """Fraction of prompts where a beats b, ties counting half."""
    return sum((x > y) + 0.5 * (x == y) for x, y in zip(a_scores, b_scores)) / max(1, len(a_scores))


def spot_check(policy, tok, items, sft_answers, max_new_tokens, seed):
    """The labeler compares the policy's answer with the SFT answer on each held-out prompt: the win-rate by
    fresh (noisy) labels, one per prompt."""
    answers = common.chat_answers(policy, tok, [it["question"] for it in items], max_new_tokens, temperature=1.0,
                                  generator=sampling_generator(policy, seed))
    rng = random.Random(f"spot-{seed}")
    wins = [world_lib.label(it, t, s_t, rng, e, s_e) == 0
            for it, (_, t, e), (_, s_t, s_e) in zip(items, answers, sft_answers)]
    return sum(wins) / len(wins)


def qa_accuracy(model, tok, items):
    answers = common.chat_answers(model, tok, [it["question"] for it in items])  # greedy
    return sum(world_lib.grade(it, t) for it, (_, t, _) in zip(items, answers)) / max(1, len(items))


def gold_drop(peak, end):
    """How far the gold reward fell from its peak, as a fraction of the peak (the hacking target's measure).
    The peak counts as at least 1 (a plain right answer scores 2.5): near 0, any wobble would be a large fraction."""
    return (peak - end) / max(abs(peak), 1.0)


def smooth(values, w):
    out = []
    for i in range(len(values)):
        window = values[max(0, i - w + 1):i + 1]
        out.append(sum(window) / len(window))
    return out


def over_optimisation(rows):
    """The peak of the (smoothed) gold reward against the end of the run, from the per-step rows of the curve:
    row means around the start, the gold peak and the end; the gold's fall from its peak; what the policy
    changed from the peak to the end, in gold-score units (world.GOLD_WEIGHTS, biggest first among those that
    cost gold: `exploited`); and whether that is reward hacking (gold fell while the proxy went on rising)."""
    w = max(1, len(rows) // 15)
    gold_s, proxy_s = smooth([r["gold"] for r in rows], w), smooth([r["proxy"] for r in rows], w)
    peak = max(range(len(rows)), key=lambda i: gold_s[i])
    keys = ("gold", "proxy", "kl", "correct", "polite", "repeats", "fillers", "chars", "tokens", "ended", "distinct")

    def at(i):  # the mean of each key over the w rows ending at row i
        window = rows[max(0, i - w + 1):i + 1]
        return {k: sum(r.get(k, 0.0) for r in window) / len(window) for k in keys}

    start, top, end = at(0), at(peak), at(len(rows) - 1)
    drop = gold_drop(top["gold"], end["gold"])
    W = world_lib.GOLD_WEIGHTS
    costs = {"polite phrases per answer": W["extra_polite"] * (end["polite"] - top["polite"]),
             "repeated sentences per answer": W["repeat"] * (end["repeats"] - top["repeats"]),
             "filler sentences per answer": W["filler"] * (end["fillers"] - top["fillers"]),
             "answer length (characters)": W["per_100_chars"] * (max(0, end["chars"] - W["free_chars"])
                                                                - max(0, top["chars"] - W["free_chars"])) / 100,
             "answers not ended": W["not_ended"] * (top["ended"] - end["ended"]),
             "wrong answers": (W["correct"] - W["wrong"]) * (top["correct"] - end["correct"])}
    return {"peak": peak, "start": start, "top": top, "end": end, "drop": drop, "costs": costs,
            "exploited": sorted((k for k in costs if costs[k] > 0.05), key=lambda k: -costs[k]),
            "hacked": drop >= 0.15 and end["proxy"] - top["proxy"] >= 0.1,  # beyond the noise of a smoothed step mean
            "proxy_rising": proxy_s[-1] > proxy_s[max(0, len(rows) - 1 - 2 * w)]}


def curve_svg(rows, best_step, title):
    """Proxy (RM) and gold reward against KL to SFT, as a hand-written SVG (no plotting dependency). Two y
    axes: gold on the left, proxy on the right; moving averages over a few steps; the kept checkpoint marked."""
    W, H, L, R, T, B = 680, 400, 70, 70, 40, 50
    w = max(1, len(rows) // 15)
    kl, gold, proxy = (smooth([r[k] for r in rows], w) for k in ("kl", "gold", "proxy"))
    def scale(v, lo, hi, a, b):
        return a + (v - lo) / ((hi - lo) or 1.0) * (b - a)
    x_lo, x_hi = min(kl), max(kl)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
           f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#888"/>']
    for i in range(5):  # x ticks
        v = x_lo + (x_hi - x_lo) * i / 4
        x = scale(v, x_lo, x_hi, L, W - R)
        out.append(f'<text x="{x:.1f}" y="{H - B + 16}" text-anchor="middle">{v:.2f}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">KL(policy || SFT), nats per answer</text>')
    for series, color, side, name in ((gold, "#d62728", "left", "gold reward (labeler, measured only)"),
                                      (proxy, "#1f77b4", "right", "proxy reward (reward model, optimised)")):
        lo, hi = min(series), max(series)
        lo, hi = lo - 0.05 * ((hi - lo) or 1), hi + 0.05 * ((hi - lo) or 1)
        pts = " ".join(f"{scale(a, x_lo, x_hi, L, W - R):.1f},{scale(b, lo, hi, H - B, T):.1f}" for a, b in zip(kl, series))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        for i in range(5):
            v = lo + (hi - lo) * i / 4
            y = scale(v, lo, hi, H - B, T)
            x, anchor = (L - 6, "end") if side == "left" else (W - R + 6, "start")
            out.append(f'<text x="{x}" y="{y + 4:.1f}" text-anchor="{anchor}" fill="{color}">{v:.2f}</text>')
        y_leg = T + 16 if side == "left" else T + 32
        out.append(f'<text x="{L + 10}" y="{y_leg}" fill="{color}">{name} ({side} axis)</text>')
    best = [i for i, r in enumerate(rows) if r["step"] == best_step]
    if best:
        x = scale(kl[best[0]], x_lo, x_hi, L, W - R)
        out.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{H - B}" stroke="#2ca02c" stroke-dasharray="4,3"/>')
        out.append(f'<text x="{x + 4:.1f}" y="{H - B - 6}" fill="#2ca02c">kept (step {best_step})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------

def run_name(tag):
    """The RL run's name, in its file names and report section: rlhf, or rlhf_TAG."""
    return f"rlhf_{tag}" if tag else "rlhf"


def get_args(argv=None):
    p = argparse.ArgumentParser(description="RLHF: comparisons -> reward model -> policy optimisation with a "
                                "KL leash to the SFT model.", formatter_class=common.HelpFormatter)
    # I/O
    p.add_argument("--out-dir", default="out", help="where sft.pt and tok.model are, and everything is written")
    p.add_argument("--init", default=None, help="the SFT checkpoint: the policy's start and the frozen reference "
                   "(default: OUT_DIR/sft.pt)")
    p.add_argument("--tag", default="", help="name this RL run: writes rlhf_TAG.pt, rlhf_TAG_last.pt, rl_curve_TAG.* and "
                   "report section rlhf_TAG (comparisons.jsonl and rm.pt are shared unless rm.pt is missing or was "
                   "trained otherwise: then the run keeps its own rm_TAG.pt and comparisons_TAG.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the RL run from OUT_DIR/rlhf[_TAG]_last.pt, "
                   "with its flags unless given again (e.g. a larger --steps)")
    # comparisons
    p.add_argument("--comparisons", default=None, help="JSONL of {\"prompt\", \"chosen\", \"rejected\"} to train "
                   "the RM on (default: the simulated labeler)")
    p.add_argument("--label", action="store_true", help="you are the labeler: compare answers at the terminal, "
                   "appended to OUT_DIR/comparisons.jsonl as you go (the simulated labeler's rows there, and copies "
                   "of a --comparisons file, are removed); q quits, a later --label run continues")
    p.add_argument("--n-comparisons", type=int, default=8000, help="labelling budget (simulated or --label)")
    p.add_argument("--answers-per-prompt", type=int, default=4, help="answers sampled per prompt for the simulated "
                   "labeler to compare, every pair (--label shows 2; a --comparisons file has its own)")
    p.add_argument("--retrain-rm", action="store_true", help="collect comparisons and train the RM even if "
                   "OUT_DIR/rm.pt matches")
    # reward model
    p.add_argument("--rm-epochs", type=float, default=2.0, help="passes over the training comparisons")
    p.add_argument("--rm-batch-size", type=int, default=8, help="prompts per RM step, each with all its "
                   "comparisons")
    p.add_argument("--rm-lr", type=float, default=3e-4, help="RM peak learning rate")
    p.add_argument("--rm-likelihood", type=float, default=1.0, help="the RM's score adds this times the mean "
                   "log-probability of the answer under its own LM head (0: the scalar head alone, InstructGPT's)")
    p.add_argument("--rm-heldout", type=float, default=0.15, help="fraction of prompts held out for RM accuracy")
    # policy optimisation
    p.add_argument("--steps", type=int, default=80, help="RL steps (one batch of rollouts each)")
    p.add_argument("--prompts-per-step", type=int, default=16, help="prompts per RL step")
    p.add_argument("--samples", type=int, default=4, help="answers per prompt (K of the leave-one-out baseline)")
    p.add_argument("--lr", type=float, default=1e-4, help="policy learning rate (constant after warmup)")
    p.add_argument("--kl-coef", type=float, default=0.05, help="beta: reward = RM score - beta * KL(policy||SFT)")
    p.add_argument("--ppo-epochs", type=int, default=1, help="updates per batch (1: REINFORCE; more: PPO clipping)")
    p.add_argument("--clip", type=float, default=0.2, help="PPO ratio clip epsilon (acts with --ppo-epochs > 1)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="longest answer sampled")
    # evaluation, logging
    p.add_argument("--eval-interval", type=int, default=10, help="steps between spot checks + checkpoints")
    p.add_argument("--spot-prompts", type=int, default=64, help="held-out prompts per spot check (labels each)")
    p.add_argument("--eval-prompts", type=int, default=300, help="held-out prompts for the final gold win-rate")
    p.add_argument("--exam-items", type=int, default=150, help="QA questions per set, before and after (0: skip)")
    p.add_argument("--log-interval", type=int, default=5, help="steps between log lines")
    p.add_argument("--sample-interval", type=int, default=50, help="steps between printed sample answers")
    # system
    common.add_system_args(p, dtype=False)
    p.add_argument("--seed", type=common.SEED, default=1337, help="seed for sampling, labels and prompt order")
    args = p.parse_args(argv)
    if args.resume:  # the stopped run's flags unless given again, as train.py does (its RM, its leash, ...)
        last = os.path.join(args.out_dir, f"{run_name(args.tag)}_last.pt")
        args = common.resumed_args(p, sys.argv[1:] if argv is None else argv, args, last,
                                   ("resume", "out_dir", "tag", "device", "threads", "log_interval", "retrain_rm"))
    common.check_ranges(p, args, at_least_1=("n_comparisons", "answers_per_prompt", "rm_batch_size", "steps",
                                             "prompts_per_step", "ppo_epochs", "max_new_tokens", "eval_interval",
                                             "spot_prompts", "eval_prompts", "log_interval", "sample_interval"),
                        at_least_0=("rm_likelihood", "kl_coef", "exam_items", "threads"),
                        positive=("rm_epochs", "rm_lr", "lr", "clip"))
    if args.samples < 2 or args.answers_per_prompt < 2:
        p.error("--samples and --answers-per-prompt must be at least 2 (a baseline / a pair needs two)")
    if not 0 < args.rm_heldout < 1:
        p.error("--rm-heldout must be in (0, 1)")
    if args.label and args.comparisons:
        p.error("--label and --comparisons exclude each other")
    if args.label and sys.stdin is None:  # started with <&-: input() had nothing to read from
        p.error("--label reads your answers from stdin, which is closed")
    if args.resume and args.retrain_rm:
        p.error("--retrain-rm starts a new reward model: a resumed run keeps the one its curve was made with")
    if args.tag and not re.fullmatch(r"[A-Za-z0-9_-]+", args.tag):
        p.error("--tag may contain only letters, digits, _ and -")
    # paths as absolute: a checkpoint records them, and --resume may run from another directory
    args.init, args.comparisons = (x and os.path.abspath(x) for x in (args.init, args.comparisons))
    return args


def main(argv=None):
    args = get_args(argv)
    if common.torchrun_env()[0] > 1:  # N copies would write the same files
        common.fail("rlhf.py runs as one process: start it with python, not torchrun (--device cuda for a GPU)")
    command = common.command_line("rlhf.py", argv)
    device, _ = common.start(args)
    timer = common.Timer()
    log = print
    init = args.init or os.path.join(args.out_dir, "sft.pt")
    suffix = f"_{args.tag}" if args.tag else ""
    stage = run_name(args.tag)
    cmp_path = os.path.join(args.out_dir, "comparisons.jsonl")
    # a tagged run uses rm.pt when it matches its settings, else keeps its own RM beside it: an experiment with
    # another RM (e.g. --rm-likelihood 0 --tag hack) leaves the main run's rm.pt and report section as they were
    rm_paths = [os.path.join(args.out_dir, name) for name in ["rm.pt"] + ([f"rm{suffix}.pt"] if args.tag else [])]
    best_path, last_path = os.path.join(args.out_dir, f"{stage}.pt"), os.path.join(args.out_dir, f"{stage}_last.pt")
    curve_path, svg_path = (os.path.join(args.out_dir, f"rl_curve{suffix}.{ext}") for ext in ("jsonl", "svg"))
    torch.manual_seed(args.seed)
    try:
        tok = Tokenizer(os.path.join(args.out_dir, "tok.model"))
        common.check_writable(args.out_dir)
        sft, sft_ckpt = load_checkpoint(init, device, stages=("sft", "rlhf"), tokenizer=tok.fingerprint)
        base_args = sft_ckpt["args"].get("base_args", {})
        world = world_lib.make_world(base_args.get("world_people", 100), base_args.get("world_seed", 1337))
        file_records = read_comparisons(args.comparisons) if args.comparisons else None
        resumed, ckpt = load_checkpoint(last_path, device, stages=("rlhf",)) if args.resume else (None, None)
    except (CheckpointError, ValueError) as e:
        common.fail(e)
    if sft.args.vocab_size != tok.vocab_size:
        common.fail(f"{init} has vocab {sft.args.vocab_size} but {args.out_dir}/tok.model has {tok.vocab_size}")
    sft.eval()
    sft_sha = file_sha(init)
    if ckpt is not None and ckpt.get("sft_sha", sft_sha) != sft_sha:  # its RM, KL reference and spot checks
        common.fail(f"cannot resume: {init} is not the SFT model this run started from (it changed since); "
                    "start over without --resume")
    train_items, heldout_items = world_lib.rl_prompts(world, "train"), world_lib.rl_prompts(world, "heldout")
    spot_items = heldout_items[:args.spot_prompts]
    eval_items = heldout_items[args.spot_prompts:args.spot_prompts + args.eval_prompts]
    if not eval_items:
        common.fail(f"the world has only {len(heldout_items)} held-out prompts: lower --spot-prompts")
    log(f"policy: {sft.num_params() / 1e6:.2f}M parameters from {init} | world of {len(world.people)} people: "
        f"{len(train_items)} train / {len(heldout_items)} held-out prompts | {device} in float32")
    judged = base_args.get("data") is None  # the simulated labeler knows the built-in world, not your text
    if not judged:
        log(f"note: {init} was not pretrained on the built-in world, whose labeler makes the spot checks and the "
            f"exam: they cannot judge it, so {os.path.basename(best_path)} keeps the latest step (no early stopping)")

    # ------------------------------------------------------------------------------------------------------
    # 1 + 2: comparisons and the reward model, reused when rm.pt was made from the same SFT model and data
    if args.label:  # the person labels first (a resumed run trains on what they saved); that decides the rest
        records = []
        if os.path.exists(cmp_path) and os.path.getsize(cmp_path) > 0:  # (empty: left by an older version)
            try:
                records = read_comparisons(cmp_path)
            except ValueError as e:
                common.fail(f"{e} (move the file away to start over)")
        made = sum(r.get("labeler") in REMADE for r in records)
        if made and not args.resume:
            records = [r for r in records if r.get("labeler") not in REMADE]
            if records:
                write_comparisons(cmp_path, records)
            else:
                os.remove(cmp_path)
            log(f"note: {cmp_path} held {made} comparisons by the simulated labeler or copied from a --comparisons "
                "file: removed (a run without --label makes them again); the file is yours from now on")
        todo = 0 if args.resume else args.n_comparisons - len(records)
        if todo > 0:
            rng = random.Random(f"label-{args.seed}-{len(records)}")  # new pairs after each saved session
            items = rng.sample(train_items, len(train_items))
            gen = sampling_generator(sft, args.seed + len(records))
            pairs = terminal_pairs(sft, tok, items, args.max_new_tokens, gen)
            log(f"labelling: {len(records)} comparisons saved so far, {todo} to go (one pair per prompt, at most "
                f"{len(items)} in a session). Which answer is better?")
            saved, quit_ = label_at_terminal(pairs, cmp_path, todo)
            if quit_ or not len(records) + saved:
                train_now = f"python rlhf.py --out-dir {args.out_dir} --comparisons {cmp_path}" + (
                    f" --init {args.init}" if args.init else "")  # (the same flags: other dirs mean other models)
                log(f"\nsaved {len(records) + saved} comparisons in {cmp_path}; run `{command}` again to continue"
                    + (f", or train on them now: `{train_now}`" if len(records) + saved else ""))
                return
        if not os.path.exists(cmp_path):  # (a resumed run whose comparisons were moved away)
            common.fail(f"no comparisons at {cmp_path}: label some with --label (without --resume)")
        source = f"human:{file_sha(cmp_path)}"
    elif file_records is not None:
        source = f"file:{file_sha(args.comparisons)}"
    else:
        source = f"simulated:{args.n_comparisons}x{args.answers_per_prompt}:{args.max_new_tokens}:{args.seed}"
    rm_key = {"sft": sft_sha, "source": source, "rm_epochs": args.rm_epochs, "rm_lr": args.rm_lr,
              "rm_likelihood": args.rm_likelihood, "rm_batch_size": args.rm_batch_size, "rm_heldout": args.rm_heldout}
    if ckpt is not None and ckpt.get("rm_key", rm_key) != rm_key:  # the curve so far was made against that RM
        changed = ", ".join(k for k in rm_key if ckpt["rm_key"].get(k) != rm_key[k])
        common.fail(f"cannot resume: the comparisons or reward-model settings changed since this run started "
                    f"({changed}); start over without --resume")
    rm, rm_path = None, rm_paths[-1]  # where a new RM is saved
    for path in [] if args.retrain_rm else [p for p in rm_paths if os.path.exists(p)]:
        try:
            candidate, candidate_ckpt = load_checkpoint(path, device, stages=("rm",))  # stale: retrained, by key
        except CheckpointError as e:
            common.fail(f"{e} (use --retrain-rm to replace it)")
        if candidate_ckpt.get("rm_key") == rm_key:
            rm, rm_ckpt, rm_path = candidate, candidate_ckpt, path
            log(f"reward model: reusing {path} (same SFT model, comparisons and settings; --retrain-rm to redo)")
            break
    if rm is None:
        t_rm = common.Timer()
        # a tagged run's own RM gets its own file, so comparisons.jsonl stays the one rm.pt was trained on
        cmp_out = cmp_path if rm_path == rm_paths[0] else os.path.join(args.out_dir, f"comparisons{suffix}.jsonl")
        # OUT_DIR/comparisons.jsonl is overwritten only when every row in it can be made again (REMADE); a
        # person's, or a file put there, is kept
        their_file = False
        if os.path.exists(cmp_path) and cmp_out == cmp_path and not args.label:
            try:
                their_file = any(r.get("labeler") not in REMADE for r in read_comparisons(cmp_path))
            except ValueError:  # a file with a typo is still someone's (an empty one is nobody's)
                their_file = os.path.getsize(cmp_path) > 0
        if args.label:
            records = read_comparisons(cmp_path)
        elif file_records is not None:
            records = [{**r, "labeler": r.get("labeler", "file")} for r in file_records
                       if (r["chosen"], r["chosen_ended"]) != (r["rejected"], r["rejected_ended"])]
            if len(records) < len(file_records):
                log(f"note: {len(file_records) - len(records)} comparisons of {args.comparisons} hold the same answer "
                    "twice: left out (they teach nothing)")
        else:
            if their_file:
                common.fail(f"{cmp_path} holds comparisons the simulated labeler did not make: train on them with "
                            f"--comparisons {cmp_path}, or move the file away for the simulated labeler")
            log(f"comparisons: the simulated labeler compares {args.answers_per_prompt} SFT answers per prompt ...")
            try:
                records = simulated_comparisons(sft, tok, train_items, args.n_comparisons, args.answers_per_prompt,
                                                args.max_new_tokens, args.seed, log)
            except KeyboardInterrupt:
                log("\nstopped while collecting comparisons: nothing written")
                sys.exit(130)
        try:
            pairs = encode_pairs(tok, records, sft.args.max_seq_len, args.comparisons or cmp_path)
        except ValueError as e:
            common.fail(e)
        held = [is_heldout(r["prompt"], args.rm_heldout) for r in records]
        train_pairs = [p for p, h in zip(pairs, held) if not h]
        val_pairs = [p for p, h, r in zip(pairs, held, records) if h and not r.get("tie")]
        val_records = [r for h, r in zip(held, records) if h and not r.get("tie")]
        if len(train_pairs) < 2 or not val_pairs:
            common.fail(f"{len(records)} comparisons of {len({r['prompt'] for r in records})} prompts are too few to "
                        f"train and test a reward model ({len(train_pairs)} train, {len(val_pairs)} held-out: "
                        f"--rm-heldout splits by prompt)")
        if not args.label and os.path.abspath(args.comparisons or "") != os.path.abspath(cmp_out):
            if their_file:
                common.fail(f"{cmp_path} holds comparisons the simulated labeler did not make: move it away to "
                            f"train on {args.comparisons}")
            write_comparisons(cmp_out, records)  # after every check: a failed run leaves the old file as it was
        torch.manual_seed(args.seed)  # the head's initial weights, whatever checkpoints were built before
        rm = reward_model_from(sft, args.rm_likelihood)
        log(f"reward model: Bradley-Terry on {len(train_pairs)} comparisons, {len(val_pairs)} held out; "
            f"before training the held-out accuracy is {pairwise_accuracy(*pair_scores(rm, val_pairs)):.1%}")
        try:
            rm_steps = train_reward_model(rm, train_pairs, args, log)
        except KeyboardInterrupt:
            log(f"\nstopped while training the reward model: {rm_path} not written "
                f"({cmp_path if args.label else args.comparisons or cmp_out} is kept)")
            sys.exit(130)
        rc, rr = pair_scores(rm, val_pairs)
        accuracy = pairwise_accuracy(rc, rr)
        ceiling = (sum(r["agreement"] for r in val_records) / len(val_records)
                   if all("agreement" in r for r in val_records) else None)
        gold_acc, by_kind = None, None
        if all("gold_chosen" in r for r in val_records):  # the RM against the truth, not the noisy labels
            ok = [(a > b) == (r["gold_chosen"] > r["gold_rejected"]) for a, b, r in zip(rc.tolist(), rr.tolist(), val_records)
                  if r["gold_chosen"] != r["gold_rejected"]]
            gold_acc = sum(ok) / max(1, len(ok))
        # the baseline the RM must beat: the SFT model's own likelihood of each answer, no comparisons used
        lik_c, lik_r = pair_scores(sft, val_pairs, likelihood=True)
        likelihood_acc = pairwise_accuracy(lik_c, lik_r)
        if all("correct_chosen" in r and "agreement" in r for r in val_records):
            by_kind = accuracy_by_kind(val_records, rc, rr)
            for kind, v in accuracy_by_kind(val_records, lik_c, lik_r).items():
                by_kind[kind]["sft_likelihood"] = v["accuracy"]
        reward_norm = reward_normalisation(rm, tok, records)
        rm_metrics = {"accuracy": round(accuracy, 4), "labeler_ceiling": round(ceiling, 4) if ceiling is not None else None,
                      "accuracy_vs_gold": round(gold_acc, 4) if gold_acc is not None else None,
                      "sft_likelihood_accuracy": round(likelihood_acc, 4),
                      "comparisons": len(records), "train_pairs": len(train_pairs), "heldout_pairs": len(val_pairs),
                      "steps": rm_steps, "source": source.split(":")[0], "wall_s": round(t_rm(), 1),
                      "by_kind": by_kind}
        save_checkpoint(rm_path, rm, "rm", step=rm_steps, tokenizer=tok.fingerprint,
                        args={**vars(args), "base_args": base_args, "init": init},
                        rm_key=rm_key, reward_norm=list(reward_norm), metrics=rm_metrics)
        ceiling_text = (f"the noisy labeler itself agrees with the better answer on **{ceiling:.1%}** of these pairs "
                        f"(its ceiling: no model can predict its coin flips)" if ceiling is not None
                        else "the labeler's own ceiling is unknown for this source")
        rm_stage = "rm" + (suffix if rm_path != rm_paths[0] else "")
        origin = {"simulated": f"(simulated labeler) of SFT answers, {args.answers_per_prompt} per prompt",
                  "human": "(a person, --label) of SFT answers, 2 per prompt",
                  "file": f"from {args.comparisons}"}[source.split(":")[0]]
        lines = [f"## Reward model `{os.path.basename(rm_path)}` (`{command}`)", "",
                 f"{len(records)} comparisons {origin}; Bradley-Terry loss, {rm_steps} steps from the SFT weights; "
                 f"score = head at the last token + {args.rm_likelihood:g} x the answer's mean log-probability.",
                 f"Wall time {rm_metrics['wall_s']:.0f} s.", "",
                 f"- held-out pairwise accuracy (against the labels, {len(val_pairs)} pairs on unseen prompts): "
                 f"**{accuracy:.1%}**; {ceiling_text}"]
        if gold_acc is not None:
            lines.append(f"- against the true (gold) ordering instead of the noisy labels: {gold_acc:.1%}")
        lines.append(f"- with no comparisons at all, the SFT model's own mean log-probability per answer token picks "
                     f"the labeler's choice on {likelihood_acc:.1%} of the same pairs")
        if by_kind:
            lines += ["", "Where the held-out accuracy is lost, by what tells the two answers apart:", "",
                      common.md_table(["pair", "n", "reward model", "SFT likelihood (untrained)", "labeler ceiling"],
                                      [[k, v["pairs"], f"{v['accuracy']:.1%}", f"{v['sft_likelihood']:.1%}",
                                        f"{v['labeler_ceiling']:.1%}"] for k, v in by_kind.items()])]
        common.update_report(args.out_dir, rm_stage, rm_metrics, "\n".join(lines))
        log(f"reward model: held-out accuracy {accuracy:.1%}" + (f" | labeler ceiling {ceiling:.1%}" if ceiling else "")
            + (f" | vs gold order {gold_acc:.1%}" if gold_acc is not None else "")
            + f" | SFT likelihood, untrained, {likelihood_acc:.1%} | saved {rm_path}")
        for kind, v in (by_kind or {}).items():
            log(f"  {kind}: {v['accuracy']:.1%} of {v['pairs']} pairs (SFT likelihood {v['sft_likelihood']:.1%}, "
                f"labeler ceiling {v['labeler_ceiling']:.1%})")
    else:
        reward_norm = tuple(rm_ckpt["reward_norm"])
    rm.eval()
    for p in list(rm.parameters()) + list(sft.parameters()):
        p.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------------
    # 3: the policy starts as a copy of the SFT model; the SFT model stays frozen as the reference
    policy = copy.deepcopy(sft)
    for p in policy.parameters():
        p.requires_grad_(True)
    # dropout off (TRL's disable_dropout does the same): the update's log-probabilities and KL must be those of
    # the policy that sampled the answers (generate samples in eval mode), or KL(policy || SFT) is not 0 at the start
    policy.eval()
    optimizer = configure_optimizer(policy, args.lr, 0.0, (0.9, 0.95), device.split(":")[0])
    run_args = {**vars(args), "base_args": base_args}  # init as given: None is OUT_DIR/sft.pt, wherever that moves
    sft_spot = common.chat_answers(sft, tok, [it["question"] for it in spot_items], args.max_new_tokens,
                                   temperature=1.0, generator=sampling_generator(sft, args.seed + 1))
    step, rows, best, last_answers = 0, [], {"step": 0, "spot": -1.0}, []
    if ckpt is not None:
        policy.load_state_dict(resumed.state_dict())
        del resumed
        load_optimizer_state(optimizer, ckpt["optimizer"])
        step, best = ckpt["step"], ckpt["best"]
        try:
            with open(curve_path) as f:
                rows = [r for r in map(json.loads, f) if r["step"] <= step]
            kept_ckpt = peek_checkpoint(best_path)
            kept_step = kept_ckpt["step"]
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            common.fail(f"cannot resume: {curve_path} or {best_path} is missing or damaged ({type(e).__name__}); "
                        "start over without --resume")
        if [r["step"] for r in rows] != list(range(1, step + 1)):
            common.fail(f"cannot resume: {curve_path} does not hold the curve of steps 1-{step}; start over "
                        "without --resume")
        # rlhf.pt ahead of rlhf_last.pt: the stopped run saved it and was killed before rlhf_last.pt; the resumed
        # run makes the same step again, if it is the same run (the same flags) and goes that far
        ahead = step < kept_step <= args.steps and kept_ckpt.get("args") == ckpt["args"]
        if kept_step != best["step"] and not ahead:
            common.fail(f"cannot resume: {best_path} holds step {kept_step}, not step {best['step']}, the policy this "
                        "run kept (another run saved over it); start over without --resume")
        log(f"resuming at step {step} (best spot check so far {best['spot']:.1%} at step {best['step']})")

    def checkpoint(spot):
        """The spot check decides what rlhf.pt holds (the latest step where it cannot judge); rlhf_last.pt always
        has the latest (to resume). Written in this order so a kill between two files leaves a run that resumes:
        the curve may run ahead of rlhf_last.pt (resume drops the extra rows), and so may rlhf.pt (the resumed
        run makes the same step again)."""
        with common.atomic_open(curve_path) as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        if not judged or (spot is not None and spot > best["spot"]):
            best.update(step=step, spot=best["spot"] if spot is None else spot)
            save_checkpoint(best_path, policy, "rlhf", step=step, args=run_args, spot_winrate=best["spot"],
                            tokenizer=tok.fingerprint)
        save_checkpoint(last_path, policy, "rlhf", step=step, optimizer=optimizer, args=run_args, best=best,
                        tokenizer=tok.fingerprint, sft_sha=sft_sha, rm_key=rm_key)

    if not args.resume:
        common.note_fresh_run([best_path, last_path], log)
    buckets = prompt_buckets(tok, train_items, args.prompts_per_step)
    if args.prompts_per_step > max(map(len, buckets)):
        log(f"note: at most {max(map(len, buckets))} prompts share a length, so a step takes at most that many "
            f"(--prompts-per-step {args.prompts_per_step})")
    log(f"RL: {args.steps} steps x {args.prompts_per_step} prompts x {args.samples} answers | kl-coef {args.kl_coef} "
        f"| lr {args.lr} | {'REINFORCE' if args.ppo_epochs == 1 else f'PPO-clip, {args.ppo_epochs} epochs'}")
    if step == 0:
        spot = spot_check(policy, tok, spot_items, sft_spot, args.max_new_tokens, args.seed)
        log(f"step 0: spot check, SFT against itself: {spot:.1%} (noise level of the check)")
        checkpoint(spot)  # rlhf.pt and rlhf_last.pt together: never a new rlhf.pt beside an older run's last
    t_rl, t_last, logged = common.Timer(), common.Timer(), step
    with common.GracefulStop() as stop:
        while step < args.steps and not stop.requested:
            lr = args.lr * min(1.0, (step + 1) / 10)
            for g in optimizer.param_groups:
                g["lr"] = lr
            items = step_prompts(buckets, args.prompts_per_step, random.Random(f"rl-{args.seed}-{step}"))
            batch = rollout_batch(policy, sft, rm, tok, items, args.samples, args.max_new_tokens,
                                  sampling_generator(policy, args.seed * 100_003 + step), reward_norm)
            x, y = batch["x"], batch["y"]
            mask = (y != -1).float()
            for epoch in range(args.ppo_epochs):
                logits = policy(x)  # (B, T, V)
                logp = token_logprobs(logits, y)  # (B, T), 0 off the answer
                if epoch == 0:
                    old_logp = logp.detach()
                    kl_sampled = (old_logp - batch["ref_logp"]).sum(1)  # (B,) sum_t log pi/pi_ref at the samples
                    kl = kl_exact(logits.detach(), batch["ref_logits"], mask)
                    entropy = entropy_per_token(logits.detach(), mask)
                    reward = batch["proxy"] - args.kl_coef * kl_sampled  # InstructGPT's r - beta * log(pi / pi_ref)
                    advantages = leave_one_out(reward, args.samples)
                loss = policy_loss(logp, old_logp, advantages, mask, args.clip)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss_value = common.stop_if_diverged(loss.detach(), policy, step + 1, last_path)
            step += 1
            stats, last_answers = answer_stats(batch["answers"]), batch["answers"]
            correct = sum(world_lib.grade(it, t) for it, (_, t, _) in
                          zip([it for it in items for _ in range(args.samples)], batch["answers"])) / len(batch["answers"])
            row = {"step": step, "proxy": round(batch["proxy"].mean().item(), 4), "gold": round(batch["gold"].mean().item(), 4),
                   "kl": round(kl.mean().item(), 4), "kl_sampled": round(kl_sampled.mean().item(), 4),
                   "entropy": round(entropy, 4), "correct": round(correct, 4), **stats}
            if step % args.eval_interval == 0 or step == args.steps:
                row["spot"] = spot_check(policy, tok, spot_items, sft_spot, args.max_new_tokens, args.seed)
            rows.append(row)
            if step % args.log_interval == 0 or step == args.steps or step == 1:
                dt, logged = t_last() / (step - logged), step
                log(common.step_line(step, args.steps, loss_value, lr, dt, x.numel(),
                                     f" | proxy {row['proxy']:+.2f} | gold {row['gold']:+.2f} | kl {row['kl']:.2f} "
                                     f"(sampled {row['kl_sampled']:.2f}) | len {row['tokens']:.0f} | entropy {entropy:.2f}"),
                    flush=True)
                t_last = common.Timer()
            if "spot" in row:
                checkpoint(row["spot"])
                log(f"step {step}: spot check win-rate vs SFT {row['spot']:.1%} (best {best['spot']:.1%} at step "
                    f"{best['step']})", flush=True)
            if step % args.sample_interval == 0:
                for it, (_, t, e) in list(zip([it for it in items for _ in range(args.samples)], batch["answers"]))[:4:2]:
                    log(f"  sample | {it['question']} -> {t!r}{'' if e else ' [not ended]'}")
    stop.exit_if_stopped(step, step >= args.steps, lambda: checkpoint(None), last_path, log,
                         resume="--resume" + (f" --tag {args.tag}" if args.tag else ""))
    rl_s = t_rl()  # (a resume of a finished run trains nothing and takes the exam again, as train.py's does)

    # ------------------------------------------------------------------------------------------------------
    # 4 + 5: the exam, on the kept checkpoint; the curve; what changed between the gold peak and the end
    log("exam: gold win-rate against SFT on held-out prompts, KL, QA before and after ...", flush=True)
    last_stats = {k: rows[-1][k] for k in ("proxy", "gold", "kl")}
    try:
        kept, kept_ckpt = load_checkpoint(best_path, device, stages=("rlhf",))
    except CheckpointError as e:
        common.fail(e)
    if kept_ckpt["step"] != best["step"]:  # (what the resume checks cannot see: never an exam of another policy)
        common.fail(f"{best_path} holds step {kept_ckpt['step']}, not step {best['step']}, the policy this run kept; "
                    f"{last_path} has the run's latest step")
    kept.eval()
    gen = sampling_generator(kept, args.seed + 2)
    questions = [it["question"] for it in eval_items]
    rl_ans = common.chat_answers(kept, tok, questions, args.max_new_tokens, temperature=1.0, generator=gen)
    sft_ans = common.chat_answers(sft, tok, questions, args.max_new_tokens, temperature=1.0, generator=gen)
    rl_gold = [world_lib.gold_score(it, t, e) for it, (_, t, e) in zip(eval_items, rl_ans)]
    sft_gold = [world_lib.gold_score(it, t, e) for it, (_, t, e) in zip(eval_items, sft_ans)]
    winrate = win_rate(rl_gold, sft_gold)
    x, y, _ = pad_batch([prompt_ids(tok, q) for q in questions], [a for a, _, _ in rl_ans], device)
    with torch.no_grad():  # 64 answers at a time: two (B, T, V) logits of all 300 take GBs at a 32k vocab (same floats)
        eval_kl = torch.cat([kl_exact(kept(x[s:s + 64]), sft(x[s:s + 64]), (y[s:s + 64] != -1).float())
                             for s in range(0, len(x), 64)]).mean().item()
    metrics = {"gold_winrate_vs_sft": round(winrate, 4), "kl": round(eval_kl, 4),
               "gold_rlhf": round(sum(rl_gold) / len(rl_gold), 4), "gold_sft": round(sum(sft_gold) / len(sft_gold), 4),
               "kept_step": best["step"], "spot_winrate": round(best["spot"], 4), "steps": step,
               "kl_coef": args.kl_coef, "final": last_stats, "qa_after": None, "qa_before": None}
    qa_lines = []
    if args.exam_items > 0:
        sets = {"seen": world_lib.qa_items(world, world.sft_people, "exam")[:args.exam_items],
                "unseen": world_lib.qa_items(world, world.pretrain_only_people, "exam")[:args.exam_items]}
        acc = {(name, who): qa_accuracy(m, tok, items) for name, items in sets.items() for who, m in (("sft", sft), ("rl", kept))}
        n_all = sum(len(v) for v in sets.values())
        for who, key in (("sft", "qa_before"), ("rl", "qa_after")):
            metrics[key] = round(sum(acc[(n, who)] * len(sets[n]) for n in sets) / n_all, 4)
        for n in sets:
            metrics[f"qa_{n}_before"], metrics[f"qa_{n}_after"] = round(acc[(n, "sft")], 4), round(acc[(n, "rl")], 4)
        qa_lines = [common.md_table(["exam questions (greedy)", "SFT", "RLHF"],
                                    [[f"people {n} in SFT", f"{acc[(n, 'sft')]:.1%}", f"{acc[(n, 'rl')]:.1%}"] for n in sets]
                                    + [["all", f"{metrics['qa_before']:.1%}", f"{metrics['qa_after']:.1%}"]])]
    with common.atomic_open(svg_path) as f:
        f.write(curve_svg(rows, best["step"], f"RLHF, kl-coef {args.kl_coef}: proxy and gold reward vs KL"))

    o = over_optimisation(rows)
    peak, start, top, end, drop = o["peak"], o["start"], o["top"], o["end"], o["drop"]
    costs, exploited, hacked = o["costs"], o["exploited"], o["hacked"]
    metrics.update(gold_peak=round(top["gold"], 4), gold_peak_step=rows[peak]["step"], gold_end=round(end["gold"], 4),
                   gold_drop_from_peak=round(drop, 4), proxy_end_minus_peak=round(end["proxy"] - top["proxy"], 4),
                   proxy_rising_at_end=o["proxy_rising"], exploited=exploited if hacked else [], hacked=hacked)
    metrics["wall_s"] = round(timer(), 1)
    title = f"## RLHF{f' run `{args.tag}`' if args.tag else ''} (`{command}`)"
    lines = [title, "",
             f"REINFORCE with a leave-one-out baseline ({args.samples} answers per prompt), reward = RM score - "
             f"{args.kl_coef} x KL(policy || SFT){'' if args.ppo_epochs == 1 else f', PPO clip {args.clip} over {args.ppo_epochs} epochs'}; "
             f"{step} steps x {args.prompts_per_step} prompts, lr {args.lr}. Wall time {metrics['wall_s']:.0f} s (RL {rl_s:.0f} s).", "",
             f"- gold win-rate of the kept policy against SFT on {len(eval_items)} held-out prompts (both sampled at "
             f"temperature 1, ties half): **{winrate:.1%}**; mean gold score {metrics['gold_rlhf']:+.2f} vs SFT "
             f"{metrics['gold_sft']:+.2f}",
             f"- KL(policy || SFT) on those answers: **{eval_kl:.2f}** nats per answer",
             f"- kept checkpoint `{os.path.basename(best_path)}`: step {best['step']} of {step}, chosen by the spot check "
             f"(labeler win-rate vs SFT on {len(spot_items)} other held-out prompts: {best['spot']:.1%}); the last "
             f"policy is `{os.path.basename(last_path)}`" if judged else
             f"- kept checkpoint `{os.path.basename(best_path)}`: the latest step, {best['step']} of {step}. The SFT "
             "model was not pretrained on the built-in world: its labeler, the prompts and every gold number here "
             "cannot judge it", ""]
    lines += qa_lines + ["", f"![proxy and gold reward vs KL]({os.path.basename(svg_path)})", "",
                         f"Per-step numbers in `{os.path.basename(curve_path)}`.", "",
                         "### Over-optimisation: the gold peak against the end of the run", "",
                         common.md_table(["", "step", "proxy (RM)", "gold", "KL", "correct", "polite/answer",
                                          "repeated sent.", "fillers", "chars", "ended", "distinct answers"],
                                         [[name, rows[i]["step"], f"{s['proxy']:+.2f}", f"{s['gold']:+.2f}", f"{s['kl']:.2f}",
                                           f"{s['correct']:.0%}", f"{s['polite']:.2f}", f"{s['repeats']:.2f}",
                                           f"{s['fillers']:.2f}", f"{s['chars']:.0f}", f"{s['ended']:.0%}",
                                           f"{s['distinct']:.0%}"]
                                          for name, i, s in (("start", 0, start), ("gold peak", peak, top),
                                                             ("end", len(rows) - 1, end))]), ""]
    if hacked:
        common_text, count = collections.Counter(t for _, t, _ in last_answers).most_common(1)[0] if last_answers else ("", 0)
        lines.append(f"The proxy reward went on rising ({top['proxy']:+.2f} -> {end['proxy']:+.2f}) while the gold reward "
                     f"fell from {top['gold']:+.2f} to {end['gold']:+.2f} (a fall of {drop:.0%} of its peak value): "
                     "reward hacking. " + ("What changed from the gold peak to the end, in gold-score cost per answer: "
                                           + "; ".join(f"{k} ({costs[k]:.2f})" for k in exploited) + ". "
                                           if exploited else "No single feature of world.gold_score explains the fall. ")
                     + f"The most common answer of the last step, to any question: {common_text!r} ({count} of "
                     f"{len(last_answers)} answers).")
    else:
        lines.append(f"No clear over-optimisation in this run: gold at the end is {end['gold']:+.2f} against its peak "
                     f"{top['gold']:+.2f} ({drop:.0%} below), proxy {top['proxy']:+.2f} -> {end['proxy']:+.2f}. "
                     "(Over-optimisation is called when gold falls at least 15% below its peak while the proxy "
                     "gains at least 0.1 more; try --kl-coef 0, more --steps, or --rm-likelihood 0: the head alone, "
                     "InstructGPT's RM, is easier to hack.)")
    lines += ["", "Sample answers of the kept policy and of SFT (held-out prompts, temperature 1):", "",
              common.md_table(["question", "SFT", "gold", "RLHF", "gold"],
                              [[it["question"], s_t, f"{sg:+.1f}", r_t, f"{rg:+.1f}"] for it, (_, s_t, _), (_, r_t, _), sg, rg
                               in list(zip(eval_items, sft_ans, rl_ans, sft_gold, rl_gold))[:6]])]
    if best["step"] != step:  # the end of the run too: where hacking shows
        last = load_checkpoint(last_path, device, stages=("rlhf",))[0].eval()
        end_ans = common.chat_answers(last, tok, questions[:4], args.max_new_tokens, temperature=1.0,
                                      generator=sampling_generator(last, args.seed + 3))
        lines += ["", f"Answers of the last policy (step {step}):", "",
                  common.md_table(["question", "answer", "gold"],
                                  [[it["question"], t, f"{world_lib.gold_score(it, t, e):+.1f}"]
                                   for it, (_, t, e) in zip(eval_items, end_ans)])]
    reported = common.update_report(args.out_dir, stage, metrics, "\n".join(lines))
    qa_change = f"{metrics['qa_before']:.1%} -> {metrics['qa_after']:.1%}" if args.exam_items > 0 else "not asked"
    log(f"exam: gold win-rate vs SFT {winrate:.1%} | KL {eval_kl:.2f} | gold {metrics['gold_rlhf']:+.2f} vs SFT "
        f"{metrics['gold_sft']:+.2f} | QA {qa_change} | gold peak {top['gold']:+.2f} "
        f"(step {rows[peak]['step']}) -> end {end['gold']:+.2f}, proxy {top['proxy']:+.2f} -> {end['proxy']:+.2f}")
    log(f"done in {metrics['wall_s']:.0f} s: {best_path} (step {best['step']}), {last_path}, {svg_path}"
        + (f", report in {args.out_dir}/report.md" if reported else ""))


if __name__ == "__main__":
    common.run_main(main)
