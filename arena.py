"""
The arena: a leaderboard like the ones of seeds 002 and 003 (LMArena): models answer the same held-out
questions, a judge compares the answers of two models at a time, and Elo-style ratings come out of the
wins and losses. Our judge is the world's simulated labeler (noisy, like people), so the ratings measure
what the labeler prefers, not the gold score directly.

Contestants are checkpoints or exported blobs. A base model answers with the "Q: ... A:" framing of seed 001
(a document generator has no chat format); SFT and RLHF models answer as chats.
Ratings are a Bradley-Terry fit to all battles (as LMArena computes them, rather than the order-dependent
online Elo update), on the Elo scale (400 points = 10:1 odds), mean 1000, with 95% intervals from
resampling the questions.

Reads the contestants (by default those of OUT_DIR present), writes the `arena` section of OUT_DIR/report.md
and report.json (--out-dir, default out/, even when the contestants are elsewhere).

    python arena.py                         # out/base.pt, sft.pt, rlhf.pt and the two demo runs (those present)
    python arena.py out/sft.pt out/model.bin other/rlhf.pt --questions 200
"""
import argparse
import itertools
import os
import random

import numpy as np
import torch

import common
import run as runtime
import world as world_lib
from model import CheckpointError, generate_many, load_checkpoint, require_checkpoint
from tokenizer import Tokenizer

# the unleashed runs' last policies (rlhf.py --kl-coef 0 --tag nokl, and the hacking demo --tag hack), not their
# early-stopped best: the arena should show what optimising the reward model without a leash ends in
DEFAULT_CONTESTANTS = ["base.pt", "sft.pt", "rlhf.pt", "rlhf_nokl_last.pt", "rlhf_hack_last.pt"]


# ----------------------------------------------------------------------------------------------------------
# contestants: anything that answers a list of questions with (text, ended) pairs

def qa_answer(text, ended):
    """A base model's answer in the Q/A framing: its first line (the next line would be its own next "Q:")."""
    return text.split("\n")[0].strip(), "\n" in text or ended


def checkpoint_player(path, temperature, max_new_tokens, seed):
    """Answers from a checkpoint: chat for sft/rlhf, the Q/A framing for a base model. Returns the answering
    function, the pretraining run's args (its world_people and world_seed rebuild the world it learnt), and
    whether it answers in the Q/A framing."""
    require_checkpoint(path)
    tok = Tokenizer(os.path.join(os.path.dirname(os.path.abspath(path)), "tok.model"))  # the one beside it
    model, ckpt = load_checkpoint(path, stages=("base", "sft", "rlhf"), tokenizer=tok.fingerprint)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    base_args = ckpt["args"] if ckpt["stage"] == "base" else ckpt["args"].get("base_args", {})

    def answer(questions):
        if ckpt["stage"] != "base":
            return [(text, ended) for _, text, ended in common.chat_answers(
                model, tok, questions, max_new_tokens, temperature=temperature, generator=gen)]
        prompts = [[tok.bos_id] + tok.encode(world_lib.qa_framed(q)) for q in questions]
        outs = generate_many(model, prompts, max_new_tokens, temperature=temperature, stop_id=tok.eos_id,
                             generator=gen)
        return [qa_answer(tok.decode([t for t in o if t != tok.eos_id]), bool(o) and o[-1] == tok.eos_id)
                for o in outs]
    return answer, base_args, ckpt["stage"] == "base"


def blob_player(path, temperature, max_new_tokens, seed):
    """Answers from an exported blob, computed by run.py (NumPy), exactly as a user would get them; as
    checkpoint_player, a base model's in the Q/A framing. Blobs do not record the world."""
    header, weights, release = runtime.load_blob(path)
    model = runtime.Transformer(header["model_args"], weights, release)
    tok = runtime.Tokenizer(header["tokenizer"], header["chat"])
    rng = random.Random(seed)
    base = header.get("stage") == "base"

    def answer(questions):
        out = []
        for q in questions:
            if base:
                ids, stop = [tok.bos_id] + tok.encode(world_lib.qa_framed(q)), tok.eos_id
            else:
                ids = runtime.render_chat(tok, [{"role": "user", "content": q}], add_generation_prompt=True)
                stop = tok.end_id
            new = list(runtime.generate(model, ids, 0, max_new_tokens,
                                        lambda logits: runtime.sample_next(logits, temperature, 0, 1.0, rng),
                                        stop_id=stop))
            ended = bool(new) and new[-1] == stop
            text = tok.decode([t for t in new if t != stop])
            out.append(qa_answer(text, ended) if base else (text.strip(), ended))
        return out
    return answer, {}, base


# ----------------------------------------------------------------------------------------------------------
# battles and ratings

def unique_names(paths, qa_framing):
    """A contestant's name is its file's stem ("rlhf"), with its directory when two stems are the same
    ("run1/rlhf", "run2/rlhf"), and a number when even that is not enough: the report is keyed by name.
    A base model's says it answered in the Q/A framing."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names = [s if stems.count(s) == 1 else f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}/{s}"
             for p, s in zip(paths, stems)]
    names = [n if names.count(n) == 1 else f"{n} #{names[:i].count(n) + 1}" for i, n in enumerate(names)]
    return [n + (" (Q/A framing)" if framed else "") for n, framed in zip(names, qa_framing)]


def battles(items, answers, seed):
    """Every pair of contestants on every question, judged by the noisy labeler: (question, i, j, winner)."""
    rng = random.Random(seed)
    out = []
    for q, item in enumerate(items):
        for i, j in itertools.combinations(range(len(answers)), 2):
            (a, ended_a), (b, ended_b) = answers[i][q], answers[j][q]
            pick = world_lib.label(item, a, b, rng, ended_a, ended_b)
            out.append((q, i, j, i if pick == 0 else j))
    return out


def bradley_terry(results, n, iters=200):
    """Ratings on the Elo scale from (i, j, winner) triples: the maximum-likelihood Bradley-Terry strengths
    (Hunter's 2004 MM iteration), with a tiny prior of one draw against each other player, so a model
    that won or lost everything still gets a finite rating. Mean rating 1000."""
    wins = np.full((n, n), 0.0)
    for i, j, w in results:
        wins[w, j if w == i else i] += 1.0
    games = wins + wins.T + 1.0  # the +1 (half a win each way) is the prior
    wins = wins + 0.5
    np.fill_diagonal(games, 0.0)
    np.fill_diagonal(wins, 0.0)
    p = np.ones(n)
    for _ in range(iters):
        p = wins.sum(1) / (games / (p[:, None] + p[None, :])).sum(1)
        p /= np.exp(np.log(p).mean())
    r = 400.0 * np.log10(p)
    return r - r.mean() + 1000.0


def ratings_with_intervals(fights, n, n_questions, rounds=200, seed=0):
    """Point ratings, and 95% intervals from refitting on questions resampled with replacement."""
    by_q = {}
    for q, i, j, w in fights:
        by_q.setdefault(q, []).append((i, j, w))
    point = bradley_terry([f for fs in by_q.values() for f in fs], n)
    rng = random.Random(seed)
    samples = []
    for _ in range(rounds):
        qs = [rng.randrange(n_questions) for _ in range(n_questions)]
        samples.append(bradley_terry([f for q in qs for f in by_q.get(q, [])], n))
    lo, hi = np.percentile(np.array(samples), [2.5, 97.5], axis=0)
    return point, lo, hi


# ----------------------------------------------------------------------------------------------------------

def get_args(argv=None):
    p = argparse.ArgumentParser(description="Rate models by pairwise battles judged by the simulated labeler.",
                                formatter_class=common.HelpFormatter)
    p.add_argument("contestants", nargs="*", help="checkpoints (.pt) or blobs (.bin); default: "
                   f"{', '.join(DEFAULT_CONTESTANTS)} in OUT_DIR, those that exist")
    p.add_argument("--out-dir", default="out", help="where the default contestants are and the report goes")
    p.add_argument("--questions", type=int, default=150, help="held-out questions every contestant answers")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of every contestant")
    p.add_argument("--max-new-tokens", type=int, default=48, help="longest answer")
    p.add_argument("--world-people", type=int, default=None, help="world size (default: from the first checkpoint)")
    p.add_argument("--world-seed", type=int, default=None, help="world seed (default: from the first checkpoint)")
    p.add_argument("--seed", type=common.SEED, default=1337, help="seed for sampling and the labeler's noise")
    args = p.parse_args(argv)
    common.check_ranges(p, args, at_least_1=("questions", "max_new_tokens"), at_least_0=("temperature",),
                        people=("world_people",))
    return args


def main(argv=None):
    args = get_args(argv)
    timer = common.Timer()
    paths = args.contestants or [os.path.join(args.out_dir, f) for f in DEFAULT_CONTESTANTS
                                 if os.path.exists(os.path.join(args.out_dir, f))]
    if len(paths) < 2:
        common.fail("the arena needs at least two contestants (" + (f"given {len(paths)}" if args.contestants else
                    f"found {len(paths)} of {', '.join(DEFAULT_CONTESTANTS)} in {args.out_dir}") + ")")
    players, world_args, qa_framing = [], {}, []
    for path in paths:
        try:
            player = checkpoint_player if path.endswith(".pt") else blob_player
            answer, base_args, framed = player(path, args.temperature, args.max_new_tokens, args.seed)
        except (CheckpointError, runtime.BlobError, ValueError) as e:
            common.fail(e)
        world_args = world_args or base_args
        players.append(answer)
        qa_framing.append(framed)
    names = unique_names(paths, qa_framing)
    if not world_args and args.world_people is None and args.world_seed is None:  # blobs do not record the world
        print("note: no checkpoint among the contestants to read the world from: the default world (100 people, "
              "seed 1337); --world-people and --world-seed choose another")
    world = world_lib.make_world(args.world_people or world_args.get("world_people", 100),
                                 args.world_seed if args.world_seed is not None else world_args.get("world_seed", 1337))
    items = world_lib.rl_prompts(world, "heldout")[:args.questions]
    print(f"arena: {len(names)} contestants x {len(items)} held-out questions: {', '.join(names)}", flush=True)
    answers = []
    for name, answer in zip(names, players):
        answers.append(answer([it["question"] for it in items]))
        print(f"  {name}: answered", flush=True)
    fights = battles(items, answers, args.seed)
    point, lo, hi = ratings_with_intervals(fights, len(names), len(items), seed=args.seed)
    wins = [sum(w == i for _, a, b, w in fights if i in (a, b)) / max(1, sum(i in (a, b) for _, a, b, _ in fights))
            for i in range(len(names))]
    gold = [sum(world_lib.gold_score(it, t, e) for it, (t, e) in zip(items, ans)) / len(items) for ans in answers]
    correct = [sum(world_lib.grade(it, t) for it, (t, _) in zip(items, ans)) / len(items) for ans in answers]
    order = sorted(range(len(names)), key=lambda i: -point[i])
    rows = [[k + 1, names[i], f"{point[i]:.0f}", f"{lo[i]:.0f} to {hi[i]:.0f}", f"{wins[i]:.1%}",
             f"{correct[i]:.1%}", f"{gold[i]:.2f}"] for k, i in enumerate(order)]
    table = common.md_table(["rank", "model", "rating", "95% interval", "battles won", "correct", "mean gold"], rows)
    print(table)
    examples = [[items[0]["question"]] + [answers[i][0][0] for i in order]]
    metrics = {"elo": {names[i]: round(float(point[i]), 1) for i in order},
               "elo_ci": {names[i]: [round(float(lo[i]), 1), round(float(hi[i]), 1)] for i in order},
               "battles": len(fights), "questions": len(items), "wall_s": round(timer(), 1)}
    md = "\n".join([f"## Arena (`{common.command_line('arena.py', argv)}`)", "",
                    f"{len(names)} models answered the same {len(items)} held-out questions (sampled at temperature "
                    f"{args.temperature}); the simulated labeler judged every pair on every question ({len(fights)} "
                    "battles). Ratings: Bradley-Terry fit on the Elo scale, 95% intervals from resampling questions. "
                    "\"correct\" and \"mean gold\" are the hidden gold measures, shown beside what the noisy judge saw.",
                    "", table, "", "One question, every model's answer:", "",
                    common.md_table(["question"] + [names[i] for i in order], examples),
                    "", f"Wall time {metrics['wall_s']:.0f} s, seed {args.seed}."])
    reported = common.update_report(args.out_dir, "arena", metrics, md)
    print(f"done in {metrics['wall_s']:.0f} s" + (f": report in {args.out_dir}/report.md" if reported else ""))


if __name__ == "__main__":
    common.run_main(main)
