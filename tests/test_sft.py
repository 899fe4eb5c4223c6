"""sft.py: the supervised targets are exactly the assistant's tokens, bad chat files stop the run with a
line number before any training, long conversations are cut only at turn boundaries, and a short
finetune on the tiny world turns the base model into something that answers and stops."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import sft
import train
import world as world_lib
from model import ModelArgs, Transformer, save_checkpoint
from tokenizer import render_chat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_BASE = ["--world-people", "12", "--world-seed", "7", "--dim", "64", "--n-layers", "2", "--n-heads", "4",
             "--vocab-size", "600", "--seq-len", "96", "--batch-size", "8", "--warmup", "5", "--lr", "3e-3",
             "--max-steps", "300", "--eval-interval", "300", "--log-interval", "50", "--exam-items", "0"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    train.main(["--out-dir", str(d), *TINY_BASE])
    return d


def test_targets_are_the_assistant_tokens_and_end(tok):
    msgs = [{"role": "user", "content": "Where does Anna live?"}, {"role": "assistant", "content": "In Dunmore."},
            {"role": "user", "content": "And her pet?"}, {"role": "assistant", "content": "A cat."}]
    x, y = sft.encode_conversation(tok, msgs, 256)
    ids, _ = render_chat(tok, msgs)
    assert x.tolist() == ids[:-1] and len(y) == len(x)
    assert [t for t in y if t != -1] == tok.encode(" In Dunmore.") + [tok.end_id] + tok.encode(" A cat.") + [tok.end_id]
    # each supervised target is the token that follows its input position
    assert all(t == ids[i + 1] for i, t in enumerate(y) if t != -1)


def test_each_epoch_visits_the_conversations_in_a_new_order(tmp_path, base_dir, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    seen, real = [], sft.collate
    monkeypatch.setattr(sft, "collate", lambda batch, device: seen.append([tuple(x) for x, _ in batch]) or real(batch, device))
    sft.main(["--out-dir", str(out), "--conversations", "40", "--epochs", "2", "--batch-size", "8", "--val-fraction",
              "0.1", "--exam-items", "0", "--pretrain-mix", "0", "--log-interval", "100", "--eval-interval", "100"])
    first, second = seen[:5], seen[5:10]  # 36 train conversations, 8 a step: 5 steps an epoch
    assert sorted(sum(first, [])) == sorted(sum(second, [])) and first != second


def test_the_val_loss_is_a_mean_over_answer_tokens_whatever_the_batch_size():
    torch.manual_seed(0)
    net = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=50, max_seq_len=32))
    examples = [([1, 2, 3, 4, 5, 6], [-1, -1, 3, 4, 5, 6]), ([7, 8, 9], [-1, 9, 10])]
    assert sft.eval_loss(net, examples, 1, "cpu") == pytest.approx(sft.eval_loss(net, examples, 2, "cpu"), abs=1e-5)


def test_the_exam_asks_each_set_its_people_and_counts_every_answers_stop(tok, tiny_world, monkeypatch):
    seen = {it["question"] for it in world_lib.qa_items(tiny_world, tiny_world.sft_people, "exam")}
    asked, by_prompt = [], {}
    monkeypatch.setattr(sft.common, "chat_answers",  # only the answers about SFT people end
                        lambda m, t, qs, *a, **k: asked.append(qs) or [([], "", q in seen) for q in qs])
    for it in world_lib.qa_items(tiny_world, tiny_world.people, "exam") + world_lib.reversal_items(tiny_world):
        other = next(c for c in it["candidates"] if c != it["answer"])  # the base model goes on with its own "Q:"
        prompt = tuple([tok.bos_id] + tok.encode(world_lib.qa_framed(it["question"])))
        by_prompt[prompt] = tok.encode(f" {it['answer']}.\nQ: And {other}?")
    monkeypatch.setattr(sft.common, "generate_many", lambda m, prompts, *a, **k: [by_prompt[tuple(p)] for p in prompts])
    metrics, _, _ = sft.sft_exam(None, None, tok, tiny_world, 10)
    assert asked[0] == [it["question"] for it in world_lib.qa_items(tiny_world, tiny_world.sft_people, "exam")[:10]]
    assert asked[1] == [it["question"] for it in world_lib.qa_items(tiny_world, tiny_world.pretrain_only_people,
                                                                     "exam")[:10]]
    ended = sum(q in seen for qs in asked for q in qs)
    assert metrics["stop_rate"] == round(ended / sum(map(len, asked)), 4) and 0 < ended < sum(map(len, asked))
    assert metrics["base_qa_seen"] == metrics["base_qa_unseen"] == 1.0  # its first line is its answer


def test_the_conversations_hash_is_the_hash_of_their_json_without_the_json_string(tiny_world):
    """sft.pt records it, and a resume compares: fed a conversation at a time, it must stay the digest of the whole
    list's json.dumps that checkpoints from before recorded."""
    for convs in ([], world_lib.sft_conversations(tiny_world, 30), [[{"role": "user", "content": "é \u2028 \"x\""}]]):
        whole = hashlib.sha256(json.dumps(convs, sort_keys=True).encode()).hexdigest()[:16]
        assert sft.conversations_sha(convs) == whole


def test_collate_pads_inputs_with_0_and_targets_with_minus_1():
    for kind in (list, lambda t: np.array(t, dtype=np.int32)):  # encode_conversation's int32 arrays, or lists
        xs, ys = sft.collate([(kind([1, 2, 3]), kind([-1, 5, 6])), (kind([7]), kind([8]))], "cpu")
        assert xs.tolist() == [[1, 2, 3], [7, 0, 0]] and ys.tolist() == [[-1, 5, 6], [8, -1, -1]]
        assert xs.dtype == ys.dtype == torch.long


def test_long_conversations_lose_whole_turns(tok):
    msgs = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Here."},
            {"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok " * 100}]
    x, y = sft.encode_conversation(tok, msgs, 40)
    assert [t for t in y if t != -1] == tok.encode(" Here.") + [tok.end_id]
    assert sft.encode_conversation(tok, msgs[2:], 40) is None
    n = len(render_chat(tok, msgs[:2])[0])  # n ids: n - 1 inputs, n - 1 targets
    assert len(sft.encode_conversation(tok, msgs[:2], n - 1)[0]) == n - 1  # fills the context exactly
    assert sft.encode_conversation(tok, msgs[:2], n - 2) is None  # one token more than the model can see


@pytest.mark.parametrize("line, why", [
    ('{"messages": [', "bad JSON"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "unknown role"),
    ('{"messages": []}', "non-empty"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}', "alternate"),
    ('{"text": "no messages"}', "\"messages\" list"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant message"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}', "message 1 (assistant) is empty"),
    ('{"messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "a"}]}', "message 1 is 'assistant'"),
])
def test_malformed_jsonl_is_reported_by_line_before_training(tmp_path, base_dir, line, why):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    path = tmp_path / "chats.jsonl"
    path.write_text(good + "\n" + good + "\n" + line + "\n")
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    with pytest.raises(SystemExit) as e:
        sft.main(["--out-dir", str(out), "--data", str(path)])
    assert "chats.jsonl:3: " in str(e.value) and why in str(e.value)
    assert not os.path.exists(out / "sft.pt")


def test_a_message_with_a_unicode_line_separator_is_one_line(tmp_path):
    msgs = [{"role": "user", "content": "a\u2028b"}, {"role": "assistant", "content": "c\x85d"}]
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": msgs}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert sft.read_chat_jsonl(str(path)) == [msgs]


def test_a_byte_order_mark_is_not_text(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    (tmp_path / "chats.jsonl").write_text("\ufeff" + json.dumps({"messages": msgs}) + "\n", encoding="utf-8")
    assert sft.read_chat_jsonl(str(tmp_path / "chats.jsonl")) == [msgs]
    good = json.dumps({"messages": msgs}).encode()
    (tmp_path / "chats.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\n\xff")  # a bad byte is named by its line
    with pytest.raises(ValueError, match="chats.jsonl:2: not UTF-8"):
        sft.read_chat_jsonl(str(tmp_path / "chats.jsonl"))


def test_resume_refuses_conversations_that_changed(tmp_path, base_dir):
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    chats = [{"messages": [{"role": "user", "content": f"Who is {n}?"}, {"role": "assistant", "content": f"{n}."}]}
             for n in ("Anna", "Tom", "Lena", "Paul", "Maria", "Jack")]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))
    sft.main(["--out-dir", str(out), "--data", str(path), "--epochs", "1", "--batch-size", "2", "--exam-items", "0"])
    before = (out / "sft.pt").read_bytes()
    path.write_text("".join(json.dumps(c) + "\n" for c in chats[:4]))
    with pytest.raises(SystemExit) as e:
        sft.main(["--out-dir", str(out), "--resume", "--epochs", "2"])
    assert "the conversations" in str(e.value.code) and "changed since this run started" in str(e.value.code)
    assert (out / "sft.pt").read_bytes() == before


def test_resume_and_init_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sft.main(["--out-dir", str(tmp_path), "--resume", "--init", str(tmp_path / "base.pt")])
    assert "--resume and --init exclude each other" in capsys.readouterr().err


def test_a_run_started_with_init_can_be_resumed(tmp_path, base_dir):
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    shutil.copy(base_dir / "base.pt", tmp_path / "other_base.pt")
    flags = ["--out-dir", str(out), "--init", str(tmp_path / "other_base.pt"), "--epochs", "0.1", "--exam-items", "0"]
    sft.main(flags)
    args = sft.get_args(["--out-dir", str(out), "--resume"])  # it exited: --init came back from sft.pt
    assert args.init == str(tmp_path / "other_base.pt") and args.epochs == 0.1


def test_no_warmup_starts_at_the_full_learning_rate(tmp_path, base_dir, capsys):
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    sft.main(["--out-dir", str(out), "--epochs", "0.01", "--warmup", "0", "--lr", "2e-3", "--exam-items", "0"])
    assert "| lr 2.0e-03 |" in capsys.readouterr().out and os.path.exists(out / "sft.pt")


def test_a_diverged_finetune_stops_before_writing_nan_weights(tmp_path, base_dir):
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    sft.main(["--out-dir", str(out), "--epochs", "0.01", "--exam-items", "0"])
    before = (out / "sft.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        sft.main(["--out-dir", str(out), "--epochs", "0.3", "--batch-size", "8", "--eval-interval", "2",
                  "--exam-items", "0", "--lr", "1e30", "--warmup", "0", "--grad-clip", "0"])
    assert "training diverged" in str(e.value.code)
    assert (out / "sft.pt").read_bytes() == before  # the good checkpoint is kept, not nan weights


@pytest.mark.parametrize("data", ["world", "17 train"])
def test_two_gloo_processes_match_one(tmp_path, base_dir, data):
    flags = ["--epochs", "0.2", "--batch-size", "8", "--pretrain-mix", "4", "--pretrain-mix-len", "32",
             "--exam-items", "0", "--device", "cpu"]
    if data == "17 train":  # an epoch's last batch holds 1 conversation: the second process gets none
        flags += ["--data", str(chats(tmp_path, 18)), "--val-fraction", "0.1", "--epochs", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(base_dir, one)
    shutil.copytree(base_dir, two)
    sft.main(["--out-dir", str(one), *flags])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "sft.py"), "--out-dir", str(two), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es)" in proc.stdout
    a = torch.load(one / "sft.pt", weights_only=True)["model"]
    b = torch.load(two / "sft.pt", weights_only=True)["model"]
    differ = [k for k in a if not torch.allclose(a[k], b[k], atol=1e-5)]
    assert not differ, f"{differ[:3]} differ, by up to {max((a[k] - b[k]).abs().max().item() for k in differ):.2e}"


def test_sft_teaches_answering_and_stopping(tmp_path, base_dir):
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    sft.main(["--out-dir", str(out), "--epochs", "0.01", "--exam-items", "40"])  # 1 step: the exam before SFT
    before = json.load(open(out / "report.json"))["sft"]
    sft.main(["--out-dir", str(out), "--epochs", "6", "--batch-size", "16", "--lr", "3e-3", "--exam-items", "40",
              "--pretrain-mix", "8", "--pretrain-mix-len", "64"])
    after = json.load(open(out / "report.json"))["sft"]
    assert after["stop_rate"] > before["stop_rate"] + 0.5
    assert after["qa_seen"] > before["qa_seen"]
    assert {"qa_seen", "qa_unseen", "reversal", "stop_rate", "wall_s"} <= set(after)
    report = open(out / "report.md").read()
    assert report.count("## SFT") == 1 and "--pretrain-mix-len 64`)" in report  # the flags it ran with
    assert f"## SFT: instruction finetuning (`python sft.py --out-dir {out} --epochs 6 " in report  # sft.py's


@pytest.mark.parametrize("dropout", [0.0, 0.2])  # with dropout, the masks after the resume must be the same too
def test_ctrl_c_then_resume_alone_equals_an_uninterrupted_run(tmp_path, base_dir, monkeypatch, dropout):
    flags = ["--epochs", "0.3", "--batch-size", "6", "--lr", "2e-3", "--exam-items", "0", "--eval-interval", "2",
             "--pretrain-mix", "2", "--pretrain-mix-len", "32"]  # a few steps, none of them defaults
    if dropout:
        base_dir = tmp_path / "base"
        train.main(["--out-dir", str(base_dir), *TINY_BASE, "--max-steps", "2", "--dropout", str(dropout)])
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    shutil.copytree(base_dir, full)
    shutil.copytree(base_dir, stopped)
    sft.main(["--out-dir", str(full), *flags])
    real_collate, calls = sft.collate, []

    def interrupted(*a, **k):  # Ctrl-C while step 2's batch is built (call 1 is the val loss's): step 2 finishes
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_collate(*a, **k)

    monkeypatch.setattr(sft, "collate", interrupted)
    with pytest.raises(SystemExit) as e:
        sft.main(["--out-dir", str(stopped), *flags])
    assert e.value.code == 130 and torch.load(stopped / "sft.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(sft, "collate", real_collate)
    sft.main(["--out-dir", str(stopped), "--resume"])  # the stopped run's flags come from its checkpoint
    a = torch.load(full / "sft.pt", weights_only=True)
    b = torch.load(stopped / "sft.pt", weights_only=True)
    assert a["step"] == b["step"] > 2 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_your_own_conversations_get_the_val_loss_not_the_worlds_exam(tmp_path, base_dir):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    path = tmp_path / "chats.jsonl"
    path.write_text((good + "\n") * 40)
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    sft.main(["--out-dir", str(out), "--data", str(path), "--epochs", "1", "--exam-items", "5"])
    report = json.load(open(out / "report.json"))["sft"]
    assert report["val_loss"] > 0 and "qa_seen" not in report


def test_a_chat_file_with_bad_bytes_or_a_directory_is_named_clearly(tmp_path):
    path = tmp_path / "chats.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]})
    path.write_bytes(good.encode() + b'\n{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')  # Latin-1
    with pytest.raises(ValueError, match=r"chats.jsonl:2: not UTF-8 text"):
        sft.read_chat_jsonl(str(path))
    path.write_bytes(b'{"messages": []}\n\xff\n')  # read a line at a time: the first problem in the file is named
    with pytest.raises(ValueError, match=r"chats.jsonl:1: messages must be a non-empty list"):
        sft.read_chat_jsonl(str(path))
    with pytest.raises(ValueError, match="is a directory"):
        sft.read_chat_jsonl(str(tmp_path))


def chats(tmp_path, n=40):
    rows = [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(n)]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_validation_conversations_are_never_trained_on(tmp_path, base_dir, monkeypatch):
    seen, in_eval = {"train": set(), "val": set()}, [False]
    real_collate, real_eval = sft.collate, sft.eval_loss

    def collate(examples, device):
        seen["val" if in_eval[0] else "train"].update(tuple(x) for x, _ in examples)
        return real_collate(examples, device)

    def eval_loss(*a, **k):
        in_eval[0] = True
        try:
            return real_eval(*a, **k)
        finally:
            in_eval[0] = False
    monkeypatch.setattr(sft, "collate", collate)
    monkeypatch.setattr(sft, "eval_loss", eval_loss)
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    sft.main(["--out-dir", str(out), "--data", str(chats(tmp_path)), "--val-fraction", "0.25", "--epochs", "1",
              "--pretrain-mix", "0", "--exam-items", "0"])
    assert len(seen["val"]) == 10 and len(seen["train"]) == 30 and not seen["val"] & seen["train"]


def test_the_pretraining_mix_draws_new_windows_each_step(tmp_path, base_dir, monkeypatch):
    drawn, real = [], sft.common.get_batch
    monkeypatch.setattr(sft.common, "get_batch", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    sft.main(["--out-dir", str(out), "--data", str(chats(tmp_path)), "--epochs", "1", "--batch-size", "8",
              "--pretrain-mix", "2", "--exam-items", "0"])
    assert len(drawn) >= 3 and not any(torch.equal(drawn[0][0], x) for x, _ in drawn[1:])


def test_a_missing_base_model_for_the_exam_is_named_before_training(tmp_path, base_dir):
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    sft.main(["--out-dir", str(out), "--epochs", "0.1", "--exam-items", "0"])
    os.remove(out / "base.pt")
    before = (out / "sft.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        sft.main(["--out-dir", str(out), "--resume", "--epochs", "0.2", "--exam-items", "2"])
    assert "base.pt, which is gone" in str(e.value.code) and (out / "sft.pt").read_bytes() == before


def test_a_finetune_with_dropout_is_the_same_twice(tmp_path):
    base = tmp_path / "base"
    train.main(["--out-dir", str(base), *TINY_BASE, "--max-steps", "2", "--dropout", "0.2"])
    runs = []
    for name in ("a", "b"):
        shutil.copytree(base, tmp_path / name)
        sft.main(["--out-dir", str(tmp_path / name), "--epochs", "0.1", "--exam-items", "0"])
        runs.append(torch.load(tmp_path / name / "sft.pt", weights_only=True)["model"])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_the_step_log_splits_the_loss_into_chat_and_pretraining_text(tmp_path, base_dir, capsys):
    out = tmp_path / "out"
    shutil.copytree(base_dir, out)
    sft.main(["--out-dir", str(out), "--epochs", "0.05", "--log-interval", "1", "--exam-items", "0"])
    m = re.search(r"\| loss ([0-9.]+) \|.*\| loss = chat ([0-9.]+) \+ pretraining text ([0-9.]+) \|",
                  capsys.readouterr().out)
    assert m and abs(float(m[1]) - float(m[2]) - float(m[3])) < 2e-3 and float(m[3]) > 0


def test_a_context_too_short_for_the_worlds_questions(tmp_path, capsys):
    """A model trained with --seq-len 16 cannot be asked the world's questions (longer than that): train.py and
    sft.py write their reports without that exam and say why; rlhf.py and arena.py stop with one line. All four
    ended in a traceback from model.generate."""
    import arena
    import common
    import rlhf
    out = str(tmp_path)
    train.main(["--out-dir", out, *TINY_BASE[:12], "--seq-len", "16", "--batch-size", "4", "--max-steps", "2",
                "--exam-items", "4"])
    sft.main(["--out-dir", out, "--conversations", "40", "--epochs", "1", "--exam-items", "4"])
    log = capsys.readouterr().out
    assert "note: no recall or Q/A exam: a prompt of" in log and "note: no exam: a prompt of" in log
    assert "leaves no room in the model's context of 16" in log
    assert {"pretrain", "sft"} <= set(json.loads((tmp_path / "report.json").read_text()))
    for main in (lambda: rlhf.main(["--out-dir", out, "--n-comparisons", "6", "--max-new-tokens", "4"]),
                 lambda: arena.main([f"{out}/sft.pt", f"{out}/base.pt", "--out-dir", out, "--questions", "3"])):
        with pytest.raises(SystemExit) as e:
            common.run_main(main)
        assert str(e.value.code).startswith("error: a prompt of") and "context of 16" in str(e.value.code)


# -- found unchecked by a sixth mutation-testing pass (each test names the mutant it kills) ---------------------

def untrained_base(tmp_path, tok):
    """An out dir with the tiny world's tokenizer and an untrained base.pt of context 96: no pretraining to wait for."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(tok.model_file, out / "tok.model")
    torch.manual_seed(0)
    net = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=tok.vocab_size, max_seq_len=96))
    save_checkpoint(str(out / "base.pt"), net, "base", args={"world_people": 12, "world_seed": 7})
    return out


def test_the_report_counts_the_conversations_cut_at_a_turn_and_dropped(tmp_path, tok):
    """sft.py: `truncated` counted with `<=` (every conversation), `dropped` not counted, or one conversation held
    out at --val-fraction 0."""
    out = untrained_base(tmp_path, tok)
    short = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [short] * 6 + [short + long, long]))
    sft.main(["--out-dir", str(out), "--data", str(path), "--epochs", "1", "--val-fraction", "0", "--pretrain-mix", "0",
              "--exam-items", "0"])
    m = json.load(open(out / "report.json"))["sft"]
    assert (m["truncated"], m["dropped"], m["conversations"]) == (1, 1, 7)


def test_a_pretraining_mix_of_one_window_needs_train_bin(tmp_path, tok):
    """sft.py: `--pretrain-mix > 1` (a mix of 1 was off), or the check for train.bin dropped (np.memmap's traceback)."""
    out = untrained_base(tmp_path, tok)
    with pytest.raises(SystemExit) as e:
        sft.main(["--out-dir", str(out), "--data", str(chats(tmp_path)), "--pretrain-mix", "1", "--exam-items", "0"])
    assert "--pretrain-mix needs the pretraining tokens" in str(e.value.code)


def test_the_seed_chooses_the_validation_conversations(tmp_path, tok, monkeypatch):
    """sft.py: the conversations shuffled with a fixed seed, not --seed (every seed held out the same ones)."""
    out, held = untrained_base(tmp_path, tok), []
    real = sft.eval_loss
    monkeypatch.setattr(sft, "eval_loss", lambda m, examples, *a: held.append({tuple(x) for x, _ in examples})
                        or real(m, examples, *a))
    for seed in ("1", "2"):
        sft.main(["--out-dir", str(out), "--data", str(chats(tmp_path)), "--val-fraction", "0.25", "--epochs", "0.1",
                  "--pretrain-mix", "0", "--exam-items", "0", "--seed", seed])
    assert held[0] != held[-1]
