"""Behaviour a second mutation-testing pass found unchecked: each test kills a plausible bug (a mutant) that the
rest of the suite let through, named in its docstring as FILE: the change. Grouped by the script it checks; some
helpers come from test_export_run.py and test_rlhf.py, the `tok` and `tiny_world` fixtures from conftest.py."""
import collections
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arena  # noqa: E402
import common  # noqa: E402
import export  # noqa: E402
import model  # noqa: E402
import rlhf  # noqa: E402
import run  # noqa: E402
import sft  # noqa: E402
import tokenizer  # noqa: E402
import train  # noqa: E402
import world  # noqa: E402
from test_export_run import Recording, argparse_defaults, call_main, edit, rewrite, tiny_model  # noqa: E402
from test_rlhf import job_pairs, out_dir  # noqa: E402,F401  (out_dir is a fixture)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def blob(tmp_path_factory, tok):
    """(torch model, blob path, run.Transformer, run.Tokenizer) of a tiny sft-stage model."""
    net = tiny_model(tok.vocab_size)
    path = tmp_path_factory.mktemp("blob") / "model.bin"
    export.write_blob(str(path), net, "sft", 0, tok)
    header, weights, _ = run.load_blob(str(path))
    return net, path, run.Transformer(header["model_args"], weights), run.Tokenizer(header["tokenizer"], header["chat"])


# -- export.py ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(rope_theta=5e5), dict(norm_eps=1e-6)])
def test_llama2c_export_refuses_what_run_c_hard_codes(kw, tok, tmp_path):
    """export.py: the rope_theta / norm_eps check of write_llama2c removed (run.c would silently run another model)."""
    model.save_checkpoint(str(tmp_path / "base.pt"), tiny_model(tok.vocab_size, **kw), stage="base")
    shutil.copy(tok.model_file, tmp_path / "tok.model")
    with pytest.raises(SystemExit) as e:
        call_main(export, ["--ckpt", str(tmp_path / "base.pt"), "--format", "llama2c", "--out", str(tmp_path / "l.bin")])
    assert "run.c hard-codes rope_theta 10000 and norm_eps 1e-5" in str(e.value.code)
    assert not (tmp_path / "l.bin").exists() and not (tmp_path / "tokenizer.bin").exists()


def test_export_never_writes_over_report_json(tok, tmp_path):
    """export.py: check_out_path refuses report.md but no longer report.json."""
    model.save_checkpoint(str(tmp_path / "base.pt"), tiny_model(tok.vocab_size), stage="base")
    shutil.copy(tok.model_file, tmp_path / "tok.model")
    common.update_report(str(tmp_path), "pretrain", {"val_loss": 1.0}, "## Pretraining")
    before = (tmp_path / "report.json").read_bytes()
    with pytest.raises(SystemExit) as e:
        call_main(export, ["--ckpt", str(tmp_path / "base.pt"), "--out", str(tmp_path / "report.json")])
    assert "would overwrite" in str(e.value.code) and (tmp_path / "report.json").read_bytes() == before


def test_the_default_checkpoint_is_the_latest_stage(tmp_path):
    """export.py: STAGES reordered (sft before rlhf): `python export.py` exported the SFT model after RLHF."""
    for name in ("base.pt", "sft.pt", "rlhf.pt"):
        (tmp_path / name).write_bytes(b"")
    assert export.default_checkpoint(str(tmp_path)) == str(tmp_path / "rlhf.pt")
    os.remove(tmp_path / "rlhf.pt")
    assert export.default_checkpoint(str(tmp_path)) == str(tmp_path / "sft.pt")


# -- run.py ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [["tokenizer", "bos_id"], ["tokenizer", "eos_id"], ["chat", "end_id"]])
def test_a_special_id_just_past_the_vocabulary_is_refused(key, blob, tok, tmp_path):
    """run.py: check_header's `i < V` became `i <= V` (an id of V passed, then indexed past the embedding)."""
    bad = tmp_path / "bad.bin"
    bad.write_bytes(rewrite(blob[1].read_bytes(), edit(key, tok.vocab_size)))
    with pytest.raises(run.BlobError, match="out of range"):
        run.load_blob(str(bad))


def test_control_and_unknown_ids_decode_as_sentencepiece_decodes_them(blob, tok):
    """run.py: piece_bytes' CONTROL branch removed (<s> and </s> printed as text)."""
    rtok = blob[3]
    word = tok.encode(" Anna")
    for ids in ([tok.bos_id], [tok.eos_id], [tok.bos_id, *word, tok.eos_id], [tok.unk_id], [*word, tok.unk_id]):
        assert rtok.decode(ids) == tok.decode(ids), ids


@pytest.mark.parametrize("data, shown", [("é 中 😀".encode(), "é 中 😀"),
                                         ("a中".encode()[:-1], "a\ufffd\ufffd")])  # the last character cut short
def test_printer_shows_a_character_split_over_byte_tokens_once_whole(data, shown, capsys):
    """run.py: Printer decodes each write on its own instead of incrementally ("é" over two tokens: two U+FFFD);
    its decoder never told the output is final (found by the fifth pass: the bytes of an unfinished character at
    the end of an answer were never shown, where sentencepiece decodes each to U+FFFD)."""

    class Bytes:  # id i is the i-th byte
        def piece_bytes(self, i):
            return data[i:i + 1]

        def is_control(self, i):
            return False
    out = run.Printer(Bytes())
    for i in range(len(data)):
        out.write([i])
    out.write([], final=True)
    assert capsys.readouterr().out == shown


def test_bench_prints_tokens_per_second(blob, monkeypatch, capsys):
    """run.py: bench printed seconds per token as tokens/s."""
    clock = iter([10.0, 12.0])  # start and end of the timed generation: 2 s
    monkeypatch.setattr(run, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    _, _, rt, rtok = blob
    run.bench(rt, rtok, None)
    n = rt.a["max_seq_len"] - 1
    assert f"bench: {n} tokens in 2.00 s: {n / 2:.1f} tokens/s" in capsys.readouterr().out


def test_the_same_seed_gives_the_same_text(blob, capsys):
    """run.py: --seed ignored (the generator seeded from the OS)."""
    path = str(blob[1])
    outs = []
    for seed in ("3", "3", "4"):
        call_main(run, [path, "Anna lives in", "--temperature", "5", "--top-p", "1", "--max-new-tokens", "24",
                        "--seed", seed])
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] != outs[2]


def test_chat_feeds_the_end_of_turn_of_an_answer_before_the_next_turn(blob, tok, monkeypatch):
    """run.py: chat's cache bookkeeping `cached = ids + reply` (the <|end|> that ended an answer was never fed
    through the model, yet counted as cached: the next turn attended to a stale key/value there)."""
    _, path, _, rtok = blob
    header, weights, _ = run.load_blob(str(path))
    rec = Recording(header["model_args"], weights)
    answer = tok.encode(" In Dunmore.") + [tok.end_id]  # re-encodes to itself, as the history holds it
    script = iter(answer + answer)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Where does Anna live?\nAnd Ben?\n"))
    messages = run.chat(rec, rtok, argparse_defaults(max_new_tokens=12), lambda logits: next(script), run.Stats())
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ["In Dunmore."] * 2
    second = tokenizer.render_chat(tok, messages[:3], add_generation_prompt=True)[0]  # turn two's prompt
    assert rec.seq[:len(second)] == second  # every token of the conversation went through the model, <|end|> too


# -- tokenizer.py ---------------------------------------------------------------------------------------------

def test_the_fingerprint_covers_scores_and_types(tok):
    """tokenizer.py: fingerprint hashed the piece strings only (a vocabulary with other merge scores, which
    encodes text differently, passed as the same)."""
    fp = tokenizer.Tokenizer.fingerprint.func
    pieces = tok.pieces()
    of = lambda ps: fp(types.SimpleNamespace(pieces=lambda: ps))  # noqa: E731
    assert of(pieces) == tok.fingerprint
    i = next(i for i, (_, _, k) in enumerate(pieces) if k == tokenizer.NORMAL and i > 300)
    assert of([(p, s - 1.0 if j == i else s, k) for j, (p, s, k) in enumerate(pieces)]) != tok.fingerprint
    assert of([(p, s, tokenizer.CONTROL if j == i else k) for j, (p, s, k) in enumerate(pieces)]) != tok.fingerprint


def test_a_sentencepiece_model_without_the_chat_tokens_is_refused(tmp_path, tiny_world):
    """tokenizer.py: Tokenizer's check for the chat markers removed (their ids silently became <unk>, 0)."""
    import sentencepiece as spm
    docs, _ = world.pretrain_docs(tiny_world)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(docs[:200]), model_prefix=str(tmp_path / "plain"),
                                   model_type="bpe", vocab_size=300, minloglevel=2)
    with pytest.raises(ValueError, match="lacks the chat tokens"):
        tokenizer.Tokenizer(str(tmp_path / "plain.model"))


# -- world.py -------------------------------------------------------------------------------------------------

def test_a_mother_answer_is_graded_against_every_mother(tiny_world):
    """world.py: candidates(world, "mother") from sft_people only (another pretraining-only person's mother
    was graded correct)."""
    assert set(world.candidates(tiny_world, "mother")) == {p.mother for p in tiny_world.people}
    item = next(it for it in world.qa_items(tiny_world, tiny_world.pretrain_only_people) if it["attribute"] == "mother")
    other = next(p.mother for p in tiny_world.pretrain_only_people if p.mother != item["answer"])
    assert not world.grade(item, f"{item['subject']}'s mother is {other}.")


def test_the_labeler_picks_the_better_of_a_one_point_gap_98_percent_of_the_time(tiny_world):
    """world.py: LABEL_TEMPERATURE 0.25 -> 0.5 (the label noise the docstrings and README measure against)."""
    item = world.qa_items(tiny_world, tiny_world.people, "sft")[0]
    right = world.CANONICAL[item["attribute"]].format(name=item["subject"], value=item["answer"])
    assert world.gold_score(item, right) - world.gold_score(item, right, ended=False) == 1.0
    assert world.labeler_agreement(item, right, right, True, False) == pytest.approx(0.982, abs=1e-3)


def test_the_rl_split_is_the_same_in_every_process(tiny_world):
    """world.py: _fair_order seeded with hash(tag) + seed (a str hash differs per process: rlhf.py and arena.py
    then disagree on which prompts are held out)."""
    code = ("import world; w = world.make_world(12, 7); "
            "print(world.rl_prompts(w, 'heldout')[0]['question'], world.recall_items(w)[0]['prompt'])")
    want = f"{world.rl_prompts(tiny_world, 'heldout')[0]['question']} {world.recall_items(tiny_world)[0]['prompt']}"
    for seed in ("1", "2"):
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed})
        assert r.stdout.strip() == want


# -- train.py -------------------------------------------------------------------------------------------------

def prepared(tmp_path, text, *flags):
    args = train.get_args(["--out-dir", str(tmp_path / "out"), "--data", str(text), "--vocab-size", "300", *flags])
    os.makedirs(args.out_dir, exist_ok=True)
    logs = []
    meta = train.prepare_data(args, logs.append)
    return meta, " ".join(logs)


def stories(tmp_path):
    docs = [f"Story {i}: a cat named Tom{i} found a red ball." for i in range(200)]
    path = tmp_path / "a.txt"
    path.write_text("<|endoftext|>".join(docs))
    return docs, path


def test_prepared_data_is_redone_when_a_file_is_edited_in_place(tmp_path):
    """train.py: data_files_stamp without the mtime (an edit that keeps the size reused the old tokens)."""
    docs, path = stories(tmp_path)
    prepared(tmp_path, path)
    edited = "<|endoftext|>".join(d.replace("red", "tan") for d in docs)
    assert len(edited) == path.stat().st_size
    path.write_text(edited)
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    _, log = prepared(tmp_path, path)
    assert "reusing" not in log


def test_a_directory_of_jsonl_shards_with_story_or_text_rows(tmp_path):
    """train.py: data_files without .jsonl; the jsonl reader without the "story" field."""
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"story": f"Tom{i} found a ball."}) + "\n" for i in range(3)))
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "Ann saw a kite."}) + "\n")
    assert train.read_documents(str(tmp_path)) == [f"Tom{i} found a ball." for i in range(3)] + ["Ann saw a kite."]


def test_the_bare_recall_exam_completes_the_sentence_alone(tiny_world, monkeypatch):
    """train.py: pretrain_exam's bare recall asked the bio-page prompt again (fact_recall_bare = fact_recall)."""
    asked = []
    monkeypatch.setattr(train, "complete", lambda m, t, prompts, n: asked.append(prompts) or [""] * len(prompts))
    train.pretrain_exam(None, None, tiny_world, 5)
    recall = world.recall_items(tiny_world)[:5]
    assert asked[0] == [it["prompt"] for it in recall] and asked[1] == [it["bare_prompt"] for it in recall]
    assert not any("People of the valley" in p for p in asked[1])


# -- sft.py ---------------------------------------------------------------------------------------------------

def test_a_long_last_exchange_goes_as_a_whole(tok):
    """sft.py: encode_conversation dropped one message at a time (a short last question stayed without its
    answer, and the cut was not at an exchange boundary)."""
    msgs = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Here."},
            {"role": "user", "content": "And?"}, {"role": "assistant", "content": "ok " * 100}]
    x, y = sft.encode_conversation(tok, msgs, 40)
    ids = tokenizer.render_chat(tok, msgs[:2])[0]
    assert x.tolist() == ids[:-1] and y[-1] == tok.end_id


def test_the_reversal_probe_asks_only_what_sft_never_taught(tok, tiny_world, monkeypatch):
    """sft.py: sft_exam's reversal set without the `not it["sft"]` filter (answers SFT itself taught counted)."""
    asked = []
    monkeypatch.setattr(sft.common, "chat_answers",
                        lambda m, t, qs, *a, **k: asked.append(qs) or [([], "", True) for _ in qs])
    monkeypatch.setattr(sft.common, "generate_many", lambda m, prompts, *a, **k: [[] for _ in prompts])
    sft.sft_exam(None, None, tok, tiny_world, 100)
    taught = {it["question"] for it in world.reversal_items(tiny_world) if it["sft"]}
    assert len(asked[2]) == len(tiny_world.pretrain_only_people) and not taught & set(asked[2])


# -- rlhf.py --------------------------------------------------------------------------------------------------

def rl_model(vocab):
    torch.manual_seed(0)
    return model.Transformer(model.ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=vocab, max_seq_len=96))


def test_the_rl_reward_is_the_normalised_rm_score(tok, tiny_world):
    """rlhf.py: rollout_batch subtracted the RM's mean but did not divide by its std (the KL coefficient then
    weighs against an RM of arbitrary scale)."""
    items = world.rl_prompts(tiny_world, "train")[:2]
    policy = rl_model(tok.vocab_size)
    rm = rlhf.reward_model_from(policy, 1.0)
    proxy = [rlhf.rollout_batch(policy, policy, rm, tok, items, 2, 6, rlhf.sampling_generator(policy, 0), norm)["proxy"]
             for norm in ((0.0, 1.0), (2.0, 4.0))]
    assert torch.allclose(proxy[1], (proxy[0] - 2.0) / 4.0, atol=1e-5)


def test_the_reward_model_is_retrained_when_its_learning_rate_changes(out_dir, capsys):
    """rlhf.py: rm_key without rm_lr (a run with another --rm-lr reused the old rm.pt)."""
    rlhf.main(job_pairs(out_dir) + ["--steps", "1"])
    capsys.readouterr()
    rlhf.main(job_pairs(out_dir) + ["--steps", "1", "--rm-lr", "1e-3"])
    assert "reusing" not in capsys.readouterr().out


def test_prompt_buckets_keep_a_group_of_exactly_the_step_size_and_fall_back_to_all(tok, tiny_world):
    """rlhf.py: prompt_buckets with `len(g) > size`, or without the fall-back to all prompts."""
    items = world.rl_prompts(tiny_world, "train")
    sizes = collections.Counter(len(rlhf.prompt_ids(tok, it["question"])) for it in items)
    k = max(sizes.values())
    assert k in [len(b) for b in rlhf.prompt_buckets(tok, items, k)]
    assert rlhf.prompt_buckets(tok, items, k + 1) == [items]


def test_step_prompts_make_every_prompt_equally_likely():
    """rlhf.py: step_prompts drew the length group uniformly (a prompt of a small group was drawn far more often)."""
    buckets = [list(range(9)), [9]]
    rng = random.Random(0)
    drawn = collections.Counter(rlhf.step_prompts(buckets, 1, rng)[0] for _ in range(4000))
    assert 0.07 < drawn[9] / 4000 < 0.13


def test_answer_stats_count_polite_repeated_and_filler_sentences():
    """rlhf.py: answer_stats compared lowercased sentences with the polite phrases as written (never a match)."""
    text = f"Sure! Anna lives in Dunmore. Anna lives in Dunmore. {world.FILLERS[0]} I hope this helps!"
    stats = rlhf.answer_stats([([1, 2, 3], text, True), ([4], "Dunmore.", False)])
    assert stats["polite"] == 1.0 and stats["repeats"] == 0.5 and stats["fillers"] == 0.5
    assert stats["tokens"] == 2.0 and stats["ended"] == 0.5 and stats["distinct"] == 1.0


def test_win_rate_counts_ties_half():
    """rlhf.py: win_rate without the ties' half."""
    assert rlhf.win_rate([1.0, 2.0, 0.0, 3.0], [1.0, 1.0, 1.0, 3.0]) == 0.5


def test_rlhf_pt_keeps_the_first_best_spot_check(out_dir, monkeypatch):
    """rlhf.py: checkpoint() with `spot >= best` (an equal later spot check replaced the kept, earlier and
    closer-to-SFT policy)."""
    spots = iter([0.5, 0.4, 0.5, 0.45])  # steps 0, 2, 4, 6
    monkeypatch.setattr(rlhf, "spot_check", lambda *a, **k: next(spots))
    flags = job_pairs(out_dir)
    flags[flags.index("--eval-interval") + 1] = "2"
    rlhf.main(flags + ["--steps", "6"])
    assert json.load(open(out_dir / "report.json"))["rlhf"]["kept_step"] == 0
    assert torch.load(out_dir / "rlhf.pt", weights_only=True)["step"] == 0


def test_the_hacking_report_names_answers_no_longer_ended(out_dir, monkeypatch):
    """rlhf.py: the 'answers not ended' cost with its sign flipped (a policy that stopped ending its answers
    was never named in `exploited`)."""
    real, calls = rlhf.rollout_batch, []

    def rollout(*a, **k):  # gold peaks at once and falls, proxy rises, answers stop ending from step 6 on
        b = real(*a, **k)
        s, n = len(calls), len(b["answers"])
        calls.append(s)
        b["proxy"] = torch.full((n,), 0.1 * s)
        b["gold"] = torch.full((n,), 2.0 - 0.2 * max(0, s - 5))
        b["answers"] = [(ids, text, s < 6) for ids, text, _ in b["answers"]]
        return b
    monkeypatch.setattr(rlhf, "rollout_batch", rollout)
    rlhf.main(job_pairs(out_dir) + ["--steps", "15"])
    m = json.load(open(out_dir / "report.json"))["rlhf"]
    assert m["hacked"] and "answers not ended" in m["exploited"]


def test_the_curve_draws_a_higher_reward_higher_up():
    """rlhf.py: curve_svg's y axis upside down (in SVG y grows downwards)."""
    rows = [{"step": s, "kl": 0.1 * s, "gold": float(s), "proxy": 2.0 * s} for s in range(1, 6)]
    svg = rlhf.curve_svg(rows, 3, "t")
    lines = re.findall(r'<polyline points="([^"]+)"', svg)
    assert len(lines) == 2 and "kept (step 3)" in svg
    for points in lines:
        xs, ys = zip(*(map(float, p.split(",")) for p in points.split()))
        assert list(xs) == sorted(xs) and list(ys) == sorted(ys, reverse=True)


# -- arena.py -------------------------------------------------------------------------------------------------

def test_the_judge_sees_which_answer_ended(tiny_world):
    """arena.py: battles passed ended_a and ended_b swapped to the labeler."""
    items = world.rl_prompts(tiny_world, "heldout")[:40]
    text = [f"{it['subject']} has the answer {it['answer']}." for it in items]
    fights = arena.battles(items, [[(t, False) for t in text], [(t, True) for t in text]], seed=0)
    assert sum(w == 1 for _, _, _, w in fights) >= 0.9 * len(fights)


def test_a_blob_contestant_ends_its_answer_at_end_of_turn(blob, tok, monkeypatch):
    """arena.py: blob_player stopped at </s> instead of <|end|> (its answers ran on past the end of the turn)."""
    word = tok.encode(" Dunmore")
    script = iter(word + [tok.end_id] + word * 20)
    monkeypatch.setattr(arena.runtime, "sample_next", lambda *a: next(script))
    answer, _, framed = arena.blob_player(str(blob[1]), 1.0, 10, seed=0)
    assert not framed
    assert answer(["Where does Anna live?"]) == [(tok.decode(word).strip(), True)]
