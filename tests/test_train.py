"""train.py on a tiny world: the loss falls, a stopped run resumes bit-exactly, two gloo processes equal
one process, bad input is one clear line and never destroys a checkpoint."""
import argparse
import contextlib
import io
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

import common
import model as model_lib
import tokenizer as tokenizer_lib
import train
import world as world_lib
from model import ModelArgs, Transformer
from tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--world-people", "12", "--world-seed", "7", "--dim", "32", "--n-layers", "2", "--n-heads", "4",
        "--n-kv-heads", "2", "--vocab-size", "600", "--seq-len", "64", "--batch-size", "4", "--warmup", "2",
        "--eval-batches", "2", "--log-interval", "1", "--exam-items", "8"]


def run(out_dir, *extra):
    train.main(["--out-dir", str(out_dir), *TINY, *extra])


def losses(text):
    return [float(x) for x in re.findall(r"\| loss ([0-9.]+) \|", text)]


def test_loss_falls_and_report_is_written(tmp_path, capsys, monkeypatch):
    shapes, real = [], common.get_batch
    monkeypatch.setattr(common, "get_batch", lambda *a: shapes.append(a[1:3]) or real(*a))
    run(tmp_path, "--max-steps", "30", "--lr", "3e-3", "--eval-interval", "30")
    assert shapes[0] == (4, 64)  # --batch-size windows of --seq-len tokens: the model's whole context is trained
    ls = losses(capsys.readouterr().out)
    assert len(ls) == 30 and ls[-1] < ls[0] - 1.0
    report = json.load(open(tmp_path / "report.json"))["pretrain"]
    assert {"val_loss", "fact_recall", "qa_framed", "wall_s"} <= set(report)
    assert 0 <= report["fact_recall"] <= 1 and report["val_loss"] < 6.4
    assert f"## Pretraining (`python train.py --out-dir {tmp_path} " in open(tmp_path / "report.md").read()
    assert "--max-steps 30 --lr 3e-3 --eval-interval 30`)" in open(tmp_path / "report.md").read()  # (was bare)


def test_batches_cover_every_window_and_the_last_token():
    data = np.arange(10, dtype=np.uint16)
    x, y = common.get_batch(data, 400, 3, torch.Generator().manual_seed(0))
    assert (y == x + 1).all()  # targets are the inputs shifted by one
    assert sorted(set(x[:, 0].tolist())) == list(range(7))  # every start 0..6, so token 9 is a target too
    x, y = common.get_batch(data[:4], 2, 3, torch.Generator().manual_seed(0))  # exactly one window
    assert x.tolist() == [[0, 1, 2]] * 2 and y.tolist() == [[1, 2, 3]] * 2


# Ctrl-C during the val loss after step 3, or while drawing step 5's batch; SIGTERM (kill, Slurm, torchrun) too
@pytest.mark.parametrize("at_call, sig", [(4, signal.SIGINT), (7, signal.SIGINT), (7, signal.SIGTERM)],
                         ids=["sigint-in-eval", "sigint-in-step", "sigterm-in-step"])
def test_resume_after_ctrl_c_is_exact(tmp_path, monkeypatch, at_call, sig):
    flags = ["--max-steps", "6", "--eval-interval", "3", "--exam-items", "0", "--dropout", "0.1"]  # dropout: RNG too
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    run(full, *flags)
    os.makedirs(stopped)
    for f in ("data.json", "tok.model", "train.bin", "val.bin"):  # same prepared data for both runs
        shutil.copy(full / f, stopped / f)
    real_get_batch, calls = common.get_batch, []

    def interrupted(*a, **k):  # calls 1-3 are steps 1-3, 4-5 the val loss at step 3, 6 is step 4, 7 is step 5
        calls.append(1)
        if len(calls) == at_call:
            os.kill(os.getpid(), sig)  # a real Ctrl-C, as the terminal sends it
        return real_get_batch(*a, **k)

    monkeypatch.setattr(common, "get_batch", interrupted)
    handler = signal.getsignal(sig)  # Python's own, or SIG_IGN when pytest runs as a background job
    with pytest.raises(SystemExit) as e:
        run(stopped, *flags)
    assert e.value.code == 130  # the step under way is finished, then saved
    assert torch.load(stopped / "base.pt", weights_only=True)["step"] == {4: 3, 7: 5}[at_call]
    assert signal.getsignal(sig) is handler  # the handler is given back
    monkeypatch.setattr(common, "get_batch", real_get_batch)
    run(stopped, *flags, "--resume")
    a = torch.load(full / "base.pt", weights_only=True)["model"]
    b = torch.load(stopped / "base.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_quits_at_once_and_saves_nothing(tmp_path, monkeypatch, capsys):
    real_get_batch, calls = common.get_batch, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # twice in step 2: the second one does not wait for the step's end
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_get_batch(*a, **k)

    monkeypatch.setattr(common, "get_batch", interrupted)
    # Python's Ctrl-C, even when pytest runs as a background job of a script (which starts with SIGINT ignored,
    # so the second Ctrl-C, given back to that, would be ignored too)
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as e:
            run(tmp_path, "--max-steps", "6", "--eval-interval", "100", "--exam-items", "0")
    finally:
        signal.signal(signal.SIGINT, outside)
    assert e.value.code == 130 and not (tmp_path / "base.pt").exists()
    assert "stopped without saving" in capsys.readouterr().out


def test_a_diverged_run_stops_before_writing_nan_weights(tmp_path, capsys):
    run(tmp_path, "--max-steps", "2", "--eval-interval", "2", "--exam-items", "0")
    before = (tmp_path / "base.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "--max-steps", "8", "--eval-interval", "2", "--exam-items", "0", "--lr", "1e30",
            "--warmup", "0", "--grad-clip", "0")
    assert "training diverged" in str(e.value.code)
    assert (tmp_path / "base.pt").read_bytes() == before  # the good checkpoint is kept, not nan weights


def test_two_gloo_processes_match_one(tmp_path, capsys):
    args = [*TINY, "--max-steps", "3", "--grad-accum", "2", "--eval-interval", "3", "--exam-items", "0",
            "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    run(one, *args[len(TINY):])
    logged = losses(capsys.readouterr().out)
    os.makedirs(two)
    for f in ("data.json", "tok.model", "train.bin", "val.bin"):
        shutil.copy(one / f, two / f)
    # PYTHONFAULTHANDLER: a rank that dies of a signal prints where its threads stood (that is how the abort at
    # exit, ~1 full test run in 12 until common.run_main left with os._exit, was traced to gloo's teardown)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "train.py"), "--out-dir", str(two), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    # on failure: the processes' own last words (a gloo "terminate called ..." is in the middle of stderr) and the end
    said = [line for line in proc.stderr.splitlines()
            if re.search(r"terminate|what\(\)|Error|Exception|Fatal Python|Thread 0x|Current thread|File \"", line)]
    assert proc.returncode == 0, "\n".join(said[:60]) + "\n...\n" + proc.stderr[-1000:]
    assert "2 process(es)" in proc.stdout
    assert losses(proc.stdout) == pytest.approx(logged, abs=2e-3)  # the mean over the processes, not their sum
    a = torch.load(one / "base.pt", weights_only=True)["model"]
    b = torch.load(two / "base.pt", weights_only=True)["model"]
    differ = [k for k in a if not torch.allclose(a[k], b[k], atol=1e-5)]
    assert not differ, f"{differ[:3]} differ, by up to {max((a[k] - b[k]).abs().max().item() for k in differ):.2e}"


def test_bad_data_under_torchrun_is_the_masters_one_line(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "train.py"), "--out-dir", str(tmp_path), "--data", str(tmp_path / "missing.txt"),
           "--grad-accum", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode != 0 and "missing.txt does not exist" in proc.stderr
    assert "[rank1]" not in proc.stderr  # the waiting process ends quietly: no gloo traceback from it


@pytest.mark.parametrize("data, why", [
    ("missing.txt", "does not exist"), ("empty.txt", "holds no text"), ("bad.json", "expected a JSON list"),
    ("emptydir", "no .txt, .json or .jsonl files"), ("bad.jsonl", "bad.jsonl:2: expected a JSON object"),
    ("latin1.txt", "cannot read"), ("cut.jsonl", "cut.jsonl:3: bad JSON"),
    ("latin1.jsonl", "latin1.jsonl:2: not UTF-8"),
])
def test_bad_data_is_one_clear_line(tmp_path, capsys, data, why):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n[1, 2]\n')
    (tmp_path / "latin1.txt").write_bytes(b"fine text\n" * 5000 + b"caf\xe9\n")  # found while reading, not opening
    (tmp_path / "cut.jsonl").write_text('{"text": "fine"}\n\n{"text": "cut sh')
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    os.makedirs(tmp_path / "emptydir")
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "out", "--data", str(tmp_path / data))
    assert str(e.value).startswith("error: ") and why in str(e.value) and "\n" not in str(e.value)


def test_bad_vocab_and_corrupt_resume_keep_the_checkpoint(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("hello world, a small text\n" * 50)
    with pytest.raises(SystemExit, match="a 40-token vocabulary on this text: .* need at least 277: raise --vocab-size"):
        run(tmp_path / "out", "--data", str(tmp_path / "t.txt"), "--vocab-size", "40")
    out = tmp_path / "w"
    run(out, "--max-steps", "2", "--eval-interval", "2", "--exam-items", "0")
    good = (out / "base.pt").read_bytes()
    (out / "sft.pt").write_bytes(b"garbage")
    shape_flags = ("--dim", "--n-layers", "--n-heads", "--n-kv-heads")
    no_shape = [word for flag, value in zip(TINY[::2], TINY[1::2]) if flag not in shape_flags for word in (flag, value)]
    with pytest.raises(SystemExit, match="not a readable twofiles checkpoint"):
        train.main(["--out-dir", str(out), *no_shape, "--max-steps", "4", "--init", str(out / "sft.pt")])
    assert (out / "base.pt").read_bytes() == good
    tok = (out / "tok.model").read_bytes()
    for argv, why in (([*TINY, "--init", str(out / "base.pt")], "--init trains the checkpoint's own shape"),
                      ([*no_shape, "--vocab-size", "500", "--init", str(out / "none.pt")], "no checkpoint at"),
                      ([*TINY, "--dim", "30", "--vocab-size", "500"], "bad shape: dim 30"),
                      ([*TINY, "--dim", "30", "--bench", "1"], "bad shape: dim 30")):  # was a traceback
        with pytest.raises(SystemExit) as e:  # before the data prep, which would replace tok.model
            train.main(["--out-dir", str(out), *argv])
        assert why in str(e.value.code) + capsys.readouterr().err
    assert (out / "tok.model").read_bytes() == tok and (out / "base.pt").read_bytes() == good


def test_a_swapped_tok_model_is_not_trusted_with_the_old_token_files(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run(a, "--max-steps", "1", "--exam-items", "0")
    run(b, "--max-steps", "1", "--exam-items", "0", "--world-seed", "8")  # same vocab size, other pieces
    shutil.copy(b / "tok.model", a / "tok.model")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(a, "--max-steps", "2", "--resume")
    assert "different data, vocab or tok.model" in str(e.value.code)
    run(a, "--max-steps", "1", "--exam-items", "0")  # a fresh run prepares the data again
    assert "training the tokenizer" in capsys.readouterr().out
    for damaged in ("{oops", "[]"):  # was json's own message, naming no file (or a traceback)
        (a / "data.json").write_text(damaged)
        with pytest.raises(SystemExit) as e:
            run(a, "--max-steps", "1", "--exam-items", "0")
        assert f"{a / 'data.json'} is damaged" in str(e.value.code)


def test_resume_from_another_directory_finds_the_same_data(tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text("".join(f"Story {i}: a cat named Tom{i} found a red ball.\n" for i in range(200)))
    monkeypatch.chdir(tmp_path)
    run("out", "--data", "t.txt", "--max-steps", "2", "--eval-interval", "2", "--vocab-size", "300")
    monkeypatch.chdir(tmp_path.parent)  # the checkpoint's --data must not mean another file from here
    train.main(["--out-dir", str(tmp_path / "out"), "--resume", "--max-steps", "3"])
    assert torch.load(tmp_path / "out" / "base.pt", weights_only=True)["step"] == 3


def test_reads_tinystories_json_shards_and_txt(tmp_path):
    stories = [f"Once upon a time a cat named Tom{i} found a red ball. The end." for i in range(40)]
    shards = tmp_path / "shards"
    os.makedirs(shards)
    (shards / "data00.json").write_text(json.dumps([{"story": s} for s in stories[:20]]))
    (shards / "data01.json").write_text(json.dumps([{"story": s} for s in stories[20:]]))
    assert train.read_documents(str(shards)) == stories
    # TinyStories' txt: "\n<|endoftext|>\n" between stories, each read without the line breaks around it
    (tmp_path / "stories.txt").write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n")
    assert train.read_documents(str(tmp_path / "stories.txt")) == stories
    run(tmp_path / "out", "--data", str(shards), "--max-steps", "2", "--eval-interval", "2", "--vocab-size", "300",
        "--seq-len", "32")
    report = json.load(open(tmp_path / "out" / "report.json"))["pretrain"]
    assert report["fact_recall"] is None and report["val_loss"] > 0  # no world exam on your own text
    lines = [json.dumps({"text": s + " \u2028 x \x85 y"}, ensure_ascii=False) for s in stories[:3]]
    (tmp_path / "odd.jsonl").write_text("\n".join(lines), encoding="utf-8")  # line separators inside strings
    assert train.read_documents(str(tmp_path / "odd.jsonl")) == [s + " \u2028 x \x85 y" for s in stories[:3]]
    (tmp_path / "odd.json").write_text(json.dumps({"story": stories[0]}))  # an object, not a list of them
    with pytest.raises(ValueError, match="expected a JSON list"):
        train.read_documents(str(tmp_path / "odd.json"))


def test_text_files_are_split_into_documents_line_by_line_as_the_whole_text_would_be():
    """train.py's txt_documents gathers documents line by line (a 2 GB TinyStories txt is never held whole), and
    must cut exactly where splitting the whole text at <|endoftext|> does: at a line's start or end, twice on one
    line, or not at all."""
    rng = np.random.default_rng(0)
    pieces = ["a", "b c", "\n", "<|endoftext|>", " ", "\n\n"]
    for _ in range(300):
        text = "".join(rng.choice(pieces, size=rng.integers(0, 30)))
        assert list(train.txt_documents(io.StringIO(text))) == text.split("<|endoftext|>")


def test_a_corpus_of_100_documents_or_more_is_read_again_from_its_files_not_held(tmp_path):
    """train.py's split_data: from 100 documents on, train and val are read from the files on every pass (a
    corpus of GBs is not held in memory), giving the documents split_documents gives for the list of them."""
    data = tmp_path / "data"
    os.makedirs(data)
    stories = [f"Story {i}: a cat found a ball." for i in range(250)]
    (data / "a.txt").write_text("\n<|endoftext|>\n".join(stories[:120]))
    (data / "b.jsonl").write_text("\n".join(json.dumps({"text": s}) for s in stories[120:200]))
    (data / "c.json").write_text(json.dumps([{"story": s} for s in stories[200:]]))
    train_docs, val_docs, n_chars = train.split_data(str(data))
    assert (list(train_docs), list(val_docs)) == train.split_documents(stories) == (stories[:-2], stories[-2:])
    assert (len(train_docs), len(val_docs), n_chars) == (248, 2, sum(map(len, stories[:-2])))
    (data / "c.json").write_text(json.dumps([{"story": s.upper()} for s in stories[200:]]))
    assert list(val_docs) == [s.upper() for s in stories[-2:]]  # read again, not kept
    few = tmp_path / "few.txt"
    few.write_text("<|endoftext|>".join(stories[:99]))
    train_docs, val_docs, n_chars = train.split_data(str(few))  # under 100: the last 1% of the text
    assert (train_docs, val_docs) == train.split_documents(stories[:99]) and n_chars == sum(map(len, train_docs))


def test_the_tokenizer_learns_from_a_sample_of_a_large_corpus(tmp_path, tok, fake_trainer, monkeypatch):
    """train.py: above TOKENIZER_CHARS characters the tokenizer is trained on every k-th document (sentencepiece
    holds its input in memory); the token files still hold every document."""
    data = tmp_path / "data.jsonl"
    stories = [f"Story {i}: a cat found a ball." for i in range(300)]
    data.write_text("\n".join(json.dumps({"text": s}) for s in stories))
    seen = []
    monkeypatch.setattr(train, "train_tokenizer", fake_trainer(seen))
    monkeypatch.setattr(train, "TOKENIZER_CHARS", sum(map(len, stories[:-3])) / 4.5)  # k = 5
    logs = []
    os.makedirs(tmp_path / "out")
    meta = train.prepare_data(train.get_args(["--out-dir", str(tmp_path / "out"), "--data", str(data)]), logs.append)
    assert seen == stories[:-3:5] and "training the tokenizer on one document in 5 ..." in logs[0]
    assert meta["val_tokens"] == sum(len(tok.encode(s)) + 2 for s in stories[-3:])
    assert meta["train_tokens"] == sum(len(tok.encode(s)) + 2 for s in stories[:-3])


def test_prepared_data_is_redone_when_the_files_change_or_a_prep_was_interrupted(tmp_path, monkeypatch, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    os.makedirs(data)
    (data / "a.txt").write_text("<|endoftext|>".join(f"Tom{i} found a red ball." for i in range(60)))
    flags = ["--data", str(data), "--max-steps", "1", "--vocab-size", "300", "--seq-len", "32"]
    run(out, *flags)
    run(out, *flags)
    assert "data: reusing" in capsys.readouterr().out
    (data / "b.txt").write_text("<|endoftext|>".join(f"Ann{i} saw a blue kite." for i in range(60)))
    real = train.tokenize_to_file
    monkeypatch.setattr(train, "tokenize_to_file", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after the new tokenizer was written, before the token files
        run(out, *flags)
    assert not (out / "data.json").exists()  # so nothing vouches for the mix of new tokenizer and old tokens
    monkeypatch.setattr(train, "tokenize_to_file", real)
    capsys.readouterr()
    run(out, *flags)
    assert "data: reusing" not in capsys.readouterr().out
    assert json.load(open(out / "data.json"))["train_tokens"] > 2 * 60 * 5  # both files, a.txt and b.txt


def test_threads_flag_sets_torch_threads_for_the_run(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        run(tmp_path, "--bench", "1", "--threads", str(before + 1))
        assert f"{before + 1} threads" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("script, argv, message", [
    ("train", ["--lr", "-1"], "--lr must be positive (got -1.0)"),
    ("train", ["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
    ("train", ["--dropout", "1"], "--dropout must be in [0, 1) (got 1.0)"),
    ("sft", ["--val-fraction", "1"], "--val-fraction must be in [0, 1) (got 1.0)"),
    ("sft", ["--epochs", "nan"], "--epochs must be positive (got nan)"),
    ("rlhf", ["--kl-coef", "-0.1"], "--kl-coef must be at least 0 (got -0.1)"),
    ("rlhf", ["--steps", "0"], "--steps must be at least 1 (got 0)"),
    ("arena", ["--temperature", "-1"], "--temperature must be at least 0 (got -1.0)"),
    ("train", ["--min-lr-ratio", "2"], "--min-lr-ratio must be in [0, 1] (got 2.0)"),
    ("sft", ["--epochs", "inf"], "--epochs must be positive (got inf)"),
    ("rlhf", ["--kl-coef", "inf"], "--kl-coef must be at least 0 (got inf)"),
    ("train", ["--world-people", "500"], "--world-people must be in 2..219 (got 500)"),
    ("train", ["--multiple-of", "0"], "--multiple-of must be at least 1 (got 0)"),  # (a ZeroDivisionError)
    ("arena", ["--world-people", "1"], "--world-people must be in 2..219 (got 1)"),
    ("train", ["--lr", "1e38"], "--lr 1e+38 is beyond 1e30 (float32 weights end at 3.4e38)"),
    ("sft", ["--lr", "1e38"], "--lr 1e+38 is beyond 1e30 (float32 weights end at 3.4e38)"),
])  # (1e38 overflowed inside AdamW, a traceback)
def test_numbers_out_of_range_are_one_usage_line_before_any_work(script, argv, message, capsys):
    import arena
    import rlhf
    import sft
    with pytest.raises(SystemExit) as e:
        {"train": train, "sft": sft, "rlhf": rlhf, "arena": arena}[script].get_args(argv)
    assert e.value.code == 2  # argparse's usage error, raised while parsing: nothing has been read or written
    assert capsys.readouterr().err.strip().endswith(f": error: {message}")


def test_defaults_and_presets_pass_the_range_checks():
    import arena
    import rlhf
    import sft
    for preset in train.PRESETS:
        train.get_args(["--preset", preset])
    for script in (sft, rlhf, arena):
        script.get_args([])


def test_the_exam_asks_exam_phrasings_and_reads_a_completions_first_line(monkeypatch):
    world = world_lib.make_world(12, 7)
    asked = []
    monkeypatch.setattr(train, "complete", lambda m, t, prompts, n: asked.append(prompts) or [""] * len(prompts))
    train.pretrain_exam(None, None, world, 5)
    assert asked[2] == [world_lib.qa_framed(it["question"]) for it in world_lib.qa_items(world, world.people, "exam")[:5]]
    monkeypatch.undo()

    class Tok:  # the model's completion goes on with its own next question: only the first line is its answer
        bos_id, eos_id = 1, 2
        encode = staticmethod(lambda s: [3])
        decode = staticmethod(lambda ids: " Dunmore\nQ: Where does Tom live?\nA: Ashford")
    monkeypatch.setattr(train, "generate_many", lambda *a, **k: [[5, 6, 2]])
    assert train.complete(None, Tok, ["Anna lives in"], 10) == [" Dunmore"]


def test_the_report_names_each_exam_number_as_it_was_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "pretrain_exam", lambda *a: (0.25, 0.75, 0.5, []))  # page recall, bare, Q/A, rows
    run(tmp_path, "--max-steps", "2")
    m = json.load(open(tmp_path / "report.json"))["pretrain"]
    assert (m["fact_recall"], m["fact_recall_bare"], m["qa_framed"]) == (0.25, 0.75, 0.5)


def test_the_val_loss_is_measured_on_the_same_windows_every_time():
    torch.manual_seed(0)
    net = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=50, max_seq_len=16))
    data = (np.arange(5000) * 7919 % 50).astype(np.uint16)
    first = train.estimate_loss(net, data, 2, 16, 2, "cpu", torch.no_grad())
    assert train.estimate_loss(net, data, 2, 16, 2, "cpu", torch.no_grad()) == first


def test_a_bar_or_a_newline_in_a_report_cell_keeps_the_tables_columns():
    assert common.md_table(["q", "a"], [["x", "1 | 2\n3"]]).splitlines()[2] == "| x | 1 \\| 2\\n3 |"


def test_linear_lr_warms_up_then_decays_to_zero_at_the_end():
    lrs = [common.linear_lr(s, 20, 1.0, 4) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0 and lrs[-1] == 1 / 16
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert common.linear_lr(0, 20, 1.0, 0) == 1.0  # no warmup: the full rate from the first step


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "tpu", "nonsense"])
def test_a_device_this_machine_lacks_is_one_line_before_any_work(tmp_path, device):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "--device", device)
    assert str(e.value.code).startswith(f"error: --device {device}") and not os.listdir(tmp_path)


def test_bf16_is_asked_of_the_chosen_gpu_not_the_current_one(monkeypatch):
    """--device cuda:1 on a machine whose cuda:0 is older: torch.cuda.is_bf16_supported answers for the
    current device, so the question must be asked with cuda:1 made current (no GPU here: torch.cuda faked)."""
    current = ["cuda:0"]

    @contextlib.contextmanager
    def on(device):
        current.append(device)
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "device", on)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: current[-1] == "cuda:1")
    assert common.bf16_in_hardware("cuda:1") and not common.bf16_in_hardware("cuda:0") and current == ["cuda:0"]


def test_resume_alone_continues_with_the_stopped_runs_flags(tmp_path, capsys):
    run(tmp_path, "--max-steps", "2", "--eval-interval", "2", "--exam-items", "0", "--batch-size", "3")
    train.main(["--out-dir", str(tmp_path), "--resume", "--max-steps", "3"])  # no shape, no data flags
    out = capsys.readouterr().out
    assert "data: reusing" in out and "resuming at step 2" in out and "dim=32" in out
    saved = torch.load(tmp_path / "base.pt", weights_only=True)
    assert saved["args"]["batch_size"] == 3
    assert saved["tokenizer"] == Tokenizer(str(tmp_path / "tok.model")).fingerprint  # checked by every later load
    with pytest.raises(SystemExit) as e:
        train.main(["--out-dir", str(tmp_path), "--resume", "--max-steps", "4", "--seq-len", "128"])
    assert "longer than the checkpoint's context" in str(e.value.code)


def test_odd_inputs_of_real_text_runs(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "file", "--max-steps", "1")
    assert str(e.value.code).startswith("error: cannot write to")
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "out", "--seq-len", "1")
    assert e.value.code == 2 and "--seq-len must be at least 2" in capsys.readouterr().err
    book = tmp_path / "book.txt"  # one long text with one line break, near its start
    book.write_text("Title\n" + "the cat sat on the mat and " * 2000)
    run(tmp_path / "out", "--data", str(book), "--max-steps", "1", "--vocab-size", "300", "--seq-len", "32")
    meta = json.load(open(tmp_path / "out" / "data.json"))
    assert meta["val_tokens"] < meta["train_tokens"] / 20  # ~1% held out, not everything after "Title"
    with open(tmp_path / "out" / "tok.model", "rb") as f:
        assert f.read()  # a corpus of one 54,000-character line still trains a tokenizer (cut into pieces)


def test_lr_warms_up_from_the_first_step_and_ends_at_min_lr():
    lrs = [train.lr_at(s, 20, 1.0, 4, 0.1) for s in range(21)]
    assert lrs[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[20] == pytest.approx(0.1) == min(lrs)


def test_own_text_holds_out_documents_the_training_tokens_do_not_contain(tmp_path):
    docs = [f"Story {i}: a cat named Tom{i} found {i % 7} red balls." for i in range(300)]
    (tmp_path / "a.txt").write_text("<|endoftext|>".join(docs))
    args = train.get_args(["--out-dir", str(tmp_path / "out"), "--data", str(tmp_path / "a.txt"), "--vocab-size", "300"])
    os.makedirs(args.out_dir)
    meta = train.prepare_data(args, lambda *a, **k: None)
    tok = Tokenizer(os.path.join(args.out_dir, "tok.model"))
    per_doc = [len(tok.encode(d)) + 2 for d in docs]  # each document between BOS and EOS
    assert meta["val_tokens"] == sum(per_doc[-3:]) and meta["train_tokens"] == sum(per_doc[:-3])  # the last 1%


def test_torchrun_on_mps_is_one_line_before_the_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(common.dist, "init_process_group", lambda **kw: pytest.fail("no backend moves MPS tensors"))
    with pytest.raises(SystemExit) as e:
        common.Dist("mps")
    assert "no PyTorch backend moves MPS tensors" in str(e.value.code)


def test_auto_precision_is_bf16_only_on_a_gpu_that_has_it_in_hardware(monkeypatch):
    monkeypatch.setattr(common, "pick_device", lambda name: "cuda")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    precision = []  # float32 matmuls in TF32 on a GPU (recorded: the setting is the whole process's)
    monkeypatch.setattr(torch, "set_float32_matmul_precision", precision.append)
    args = argparse.Namespace(threads=0, device="cuda", dtype="auto")
    for native, want in ((True, "bfloat16"), (False, "float32")):  # a T4 or V100 emulates bf16: slower than fp32
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
        assert common.start(args) == ("cuda", want)
    assert precision == ["high", "high"]
    monkeypatch.setattr(common, "pick_device", lambda name: "cpu")
    assert common.start(args) == ("cpu", "float32") and len(precision) == 2
    # under torchrun each process asks its own GPU (a node of mixed GPUs; GPU 0 answered for every process)
    monkeypatch.setattr(common, "pick_device", lambda name: "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    asked = []
    monkeypatch.setattr(common, "bf16_in_hardware", lambda device: asked.append(device) or device == "cuda:1")
    for rank, want in (("0", "float32"), ("1", "bfloat16")):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert common.start(args) == ("cuda", want)
    assert asked == ["cuda:0", "cuda:1"]


def test_bench_times_one_process(monkeypatch):
    """train.py --bench ran before torchrun's processes were given their GPUs: every one timed itself on cuda:0."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--bench", "1"])
    assert "--bench times one process" in str(e.value.code)


def test_init_keeps_its_tokenizer_on_new_text_and_never_replaces_another(tmp_path, capsys):
    run(tmp_path / "w", "--max-steps", "2")
    start = tmp_path / "w" / "base.pt"
    net = torch.load(start, weights_only=True)
    model_lib.save_checkpoint(str(tmp_path / "w" / "rm.pt"), Transformer(ModelArgs(**{**net["model_args"],
                              "reward_head": True})), "rm")
    with pytest.raises(SystemExit) as e:  # a reward head DDP would find unused, carried into base.pt and SFT
        train.main(["--out-dir", str(tmp_path / "w"), "--init", str(tmp_path / "w" / "rm.pt")])
    assert "is a 'rm' checkpoint; expected base or sft or rlhf" in str(e.value.code)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for bad, why in ((tmp_path / "junk.pt", "not a readable twofiles checkpoint"), (tmp_path / "w" / "rm.pt", "'rm'")):
        with pytest.raises(SystemExit) as e:  # refused before the data prep, whose tok.model then blocked the right
            train.main(["--out-dir", str(tmp_path / "fresh"), "--init", str(bad)])  # --init in that OUT_DIR
        assert why in str(e.value.code) and not os.path.exists(tmp_path / "fresh")
    with pytest.raises(SystemExit) as e:
        train.main(["--out-dir", str(tmp_path / "w"), "--init", str(start), "--vocab-size", "500"])
    assert e.value.code == 2 and "leave out --vocab-size" in capsys.readouterr().err
    (tmp_path / "stories.txt").write_text("<|endoftext|>".join(f"Tom{i} found a red ball." for i in range(200)))
    flags = ["--data", str(tmp_path / "stories.txt"), "--max-steps", "2", "--seq-len", "32", "--batch-size", "4",
             "--exam-items", "0"]
    run(tmp_path / "s", *flags, "--vocab-size", "300")  # a run with its own tokenizer
    before = (tmp_path / "s" / "tok.model").read_bytes()
    with pytest.raises(SystemExit) as e:  # (this used to train a new tokenizer, then refuse the checkpoint)
        train.main(["--out-dir", str(tmp_path / "s"), "--init", str(start), *flags])
    assert "is another one" in str(e.value.code) and (tmp_path / "s" / "tok.model").read_bytes() == before
    train.main(["--out-dir", str(tmp_path / "ft"), "--init", str(start), *flags])  # the world model reads stories
    assert (tmp_path / "ft" / "tok.model").read_bytes() == (tmp_path / "w" / "tok.model").read_bytes()
    assert torch.load(tmp_path / "ft" / "base.pt", weights_only=True)["step"] == 2
    train.main(["--out-dir", str(tmp_path / "ctx"), "--init", str(start), *flags[:4], "--batch-size", "4",
                "--exam-items", "0"])  # no --seq-len: the checkpoint's 64, not the preset's 256 (which it refused)
    assert torch.load(tmp_path / "ctx" / "base.pt", weights_only=True)["args"]["seq_len"] == 64
    capsys.readouterr()
    train.main(["--out-dir", str(tmp_path / "ft"), *flags, "--vocab-size", "300"])  # a new model: its own tokenizer
    assert "training the tokenizer" in capsys.readouterr().out
    os.makedirs(tmp_path / "bare")  # a checkpoint copied without its tok.model: trained again from the data flags,
    shutil.copy(start, tmp_path / "bare" / "s.pt")  # which give the same one, as before --init kept tokenizers
    train.main(["--out-dir", str(tmp_path / "w2"), "--init", str(tmp_path / "bare" / "s.pt"), "--world-people", "12",
                "--world-seed", "7", "--vocab-size", "600", "--seq-len", "64", "--batch-size", "4", "--exam-items", "0",
                "--eval-batches", "2", "--max-steps", "1"])
    w, w2 = (Tokenizer(str(tmp_path / d / "tok.model")) for d in ("w", "w2"))
    assert w2.fingerprint == w.fingerprint
    with pytest.raises(SystemExit) as e:  # other data flags train another tokenizer: the checkpoint refuses it
        train.main(["--out-dir", str(tmp_path / "w3"), "--init", str(tmp_path / "bare" / "s.pt"), "--world-people",
                    "12", "--world-seed", "8", "--vocab-size", "600", "--exam-items", "0", "--max-steps", "1"])
    assert "was trained with another tokenizer" in str(e.value.code)
    before = (tmp_path / "s" / "tok.model").read_bytes()
    with pytest.raises(SystemExit) as e:  # ... but never over another tokenizer
        train.main(["--out-dir", str(tmp_path / "s"), "--init", str(tmp_path / "bare" / "s.pt"), *flags])
    assert "no tok.model beside" in str(e.value.code) and (tmp_path / "s" / "tok.model").read_bytes() == before


def test_resume_names_a_missing_checkpoint_and_refuses_another_shape(tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(["--out-dir", str(tmp_path), "--resume"])
    assert "base.pt" in str(e.value.code) and not os.listdir(tmp_path)
    run(tmp_path, "--max-steps", "2")
    with pytest.raises(SystemExit) as e:
        train.main(["--out-dir", str(tmp_path), "--resume", "--max-steps", "3", "--dim", "64"])
    assert "--dim 64 cannot change its shape" in str(e.value.code)
    with pytest.raises(SystemExit) as e:  # was accepted, and recorded, while every value came from the run
        train.main(["--out-dir", str(tmp_path), "--resume", "--max-steps", "3", "--preset", "stories260k"])
    assert "--preset stories260k would change nothing" in str(e.value.code)


def test_presets_are_llama2c_shapes_and_a_run_from_before_multiple_of_resumes(tmp_path):
    for preset, n in (("stories260k", 260_032), ("stories15m", 15_191_712)):  # llama2.c's parameter counts
        args = train.get_args(["--preset", preset])
        assert train.Transformer(train.model_args(args, args.vocab_size)).num_params() == n
    run(tmp_path, "--preset", "stories260k", "--multiple-of", "32", "--max-steps", "1", "--exam-items", "0")
    ckpt = torch.load(tmp_path / "base.pt", weights_only=True)
    del ckpt["args"]["multiple_of"]  # as saved before the flag, when the preset had no value of its own
    torch.save(ckpt, tmp_path / "base.pt")
    with pytest.raises(SystemExit, match="--multiple-of 8 cannot change its shape"):
        train.main(["--out-dir", str(tmp_path), "--resume", "--max-steps", "2", "--multiple-of", "8"])
    train.main(["--out-dir", str(tmp_path), "--resume", "--max-steps", "2"])  # not the preset's 4: the model's 32
    ckpt = torch.load(tmp_path / "base.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["args"]["multiple_of"] == ckpt["model_args"]["multiple_of"] == 32


def test_init_takes_a_typed_dropout_and_otherwise_keeps_the_checkpoints(tmp_path):
    run(tmp_path, "--max-steps", "2")
    shutil.copy(tmp_path / "base.pt", tmp_path / "start.pt")
    flags = ["--out-dir", str(tmp_path), "--world-people", "12", "--world-seed", "7", "--vocab-size", "600",
             "--seq-len", "64", "--batch-size", "4", "--eval-batches", "2", "--exam-items", "0", "--max-steps", "2"]
    train.main(flags + ["--init", str(tmp_path / "start.pt"), "--dropout", "0.1"])  # was silently 0
    ckpt = torch.load(tmp_path / "base.pt", weights_only=True)
    assert ckpt["model_args"]["dropout"] == 0.1
    shutil.copy(tmp_path / "base.pt", tmp_path / "start.pt")
    train.main(flags + ["--init", str(tmp_path / "start.pt")])
    assert torch.load(tmp_path / "base.pt", weights_only=True)["model_args"]["dropout"] == 0.1
    train.main(["--out-dir", str(tmp_path), "--resume", "--max-steps", "3", "--dropout", "0.2"])
    ckpt = torch.load(tmp_path / "base.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["model_args"]["dropout"] == 0.2


def test_a_run_started_with_init_resumes_with_its_own_shape(tmp_path):
    """(--multiple-of 8, from an eighth mutation-testing pass: --init recording SHAPE without multiple_of kept the
    preset's 32 in its args, and the resume refused its own model: "--multiple-of 32 cannot change its shape".)"""
    run(tmp_path, "--max-steps", "2", "--dim", "48", "--n-heads", "4", "--multiple-of", "8")  # not the preset's shape
    shutil.copy(tmp_path / "base.pt", tmp_path / "start.pt")
    common_flags = ["--out-dir", str(tmp_path), "--world-people", "12", "--world-seed", "7", "--vocab-size", "600",
                    "--seq-len", "64", "--batch-size", "4", "--eval-batches", "2", "--exam-items", "0"]
    train.main(common_flags + ["--init", str(tmp_path / "start.pt"), "--max-steps", "2"])
    train.main(["--out-dir", str(tmp_path), "--resume", "--max-steps", "3"])
    assert torch.load(tmp_path / "base.pt", weights_only=True)["step"] == 3


def test_dropout_masks_are_seeded_per_step_and_per_process():
    def mask(step, rank):
        common.seed_dropout(1337, step, rank, world_size=2)
        return torch.nn.functional.dropout(torch.ones(64), 0.5)
    assert torch.equal(mask(3, 1), mask(3, 1))  # what a resumed run draws again
    assert not torch.equal(mask(3, 0), mask(3, 1)) and not torch.equal(mask(3, 1), mask(4, 0))


def test_resume_keeps_the_models_dropout_over_a_rate_its_args_recorded_wrongly(tmp_path):
    """Before 295f36c an --init run recorded the default --dropout 0 while training at its checkpoint's rate;
    resuming such a checkpoint must go on at the model's rate, not switch dropout off."""
    run(tmp_path, "--max-steps", "2", "--dropout", "0.2")
    ckpt = torch.load(tmp_path / "base.pt", weights_only=True)
    ckpt["args"]["dropout"] = 0.0
    torch.save(ckpt, tmp_path / "base.pt")
    train.main(["--out-dir", str(tmp_path), "--resume", "--max-steps", "3"])
    assert torch.load(tmp_path / "base.pt", weights_only=True)["model_args"]["dropout"] == 0.2


def test_a_few_long_texts_give_up_one_percent_to_validation_not_a_whole_text():
    chapters = ["\n".join(f"Chapter {c}, line {i}: the cat sat on the mat." for i in range(200)) for c in range(2)]
    train_docs, val_docs = train.split_documents(chapters)
    total = sum(map(len, chapters))
    assert 0.005 * total < sum(map(len, val_docs)) <= 0.02 * total  # the old split held out the second chapter
    assert "".join(train_docs + val_docs) == "".join(chapters) and val_docs[0].startswith("Chapter 1, line")
    many = [f"story {i}" for i in range(300)]
    assert train.split_documents(many) == (many[:-3], many[-3:])  # 100 documents or more: whole documents


def test_an_out_dir_inside_the_data_directory_is_not_read_as_data(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("\ufeff" + "<|endoftext|>".join(f"Tom{i} found a ball." for i in range(30)))
    monkeypatch.chdir(tmp_path)  # a byte-order mark above: not text (it became a character of the first story)
    flags = ["--data", ".", "--out-dir", "out", "--vocab-size", "300", "--seq-len", "32", "--max-steps", "2",
             "--dim", "32", "--n-layers", "1", "--n-heads", "4", "--n-kv-heads", "4", "--exam-items", "0"]
    train.main(flags)
    assert train.read_documents(".", "out")[0] == "Tom0 found a ball."
    os.symlink(tmp_path / "out", tmp_path / "link")  # the same directory by another name
    assert train.read_documents(".", "link") == train.read_documents(".", "out")
    train.main(flags + ["--resume", "--max-steps", "3"])  # read its own report.json as text before
    assert torch.load(tmp_path / "out" / "base.pt", weights_only=True)["step"] == 3
    for data in (".", "link/.."):
        with pytest.raises(SystemExit) as e:
            train.main(["--data", data, "--out-dir", "."])
        assert "--out-dir is the --data directory" in str(e.value.code)


# -- found unchecked by a fifth mutation-testing pass (each test names the bug it kills) ----------------------

def test_data_directories_are_read_recursively_in_sorted_order_without_out_dir_only(tmp_path):
    """train.py: data_files unsorted (the directory's listing order, which differs between filesystems and
    copies, so the same --data gave another split); out_dir's prefix without its separator (a sibling out2/
    beside out/ was left out as if it were out/ itself)."""
    names = [f"{c}{i}.txt" for i in range(3) for c in "zmab"]  # created in an order that is not sorted
    for name in names:
        (tmp_path / name).write_text(f"story of {name}")
    os.makedirs(tmp_path / "out")
    os.makedirs(tmp_path / "out2" / "deeper")
    (tmp_path / "out" / "report.json").write_text('{"pretrain": {}}')
    names.append(os.path.join("out2", "deeper", "c.txt"))  # in a sibling of out/ whose name starts with "out"
    (tmp_path / names[-1]).write_text(f"story of {names[-1]}")
    docs = train.read_documents(str(tmp_path), str(tmp_path / "out"))
    assert docs == [f"story of {n}" for n in sorted(names)]


def test_json_lists_of_strings_or_text_rows_and_jsonl_with_blank_lines(tmp_path):
    """train.py: the JSON reader without its str rows or its "text" rows (both refused as not a list of
    stories); the JSONL reader's `if line.strip()` as `if line` (a line of spaces, or a CRLF file's blank line,
    was a JSON error); values that are not strings (null, a number) a traceback instead of skipped."""
    (tmp_path / "strings.json").write_text(json.dumps(["First story.", "Second story."]))
    assert train.read_documents(str(tmp_path / "strings.json")) == ["First story.", "Second story."]
    (tmp_path / "texts.json").write_text(json.dumps([{"text": "A text."}, {"story": "A story."}]))
    assert train.read_documents(str(tmp_path / "texts.json")) == ["A text.", "A story."]
    (tmp_path / "crlf.jsonl").write_bytes(b'{"text": "One."}\r\n\r\n   \r\n{"story": "Two."}\r\n{"text": null}\r\n')
    assert train.read_documents(str(tmp_path / "crlf.jsonl")) == ["One.", "Two."]
    (tmp_path / "nulls.json").write_text(json.dumps([{"text": None}, {"story": 3}, "Kept."]))
    assert train.read_documents(str(tmp_path / "nulls.json")) == ["Kept."]


def test_one_hundred_documents_hold_out_the_last_whole_one():
    """train.py: split_documents' `>= 100` as `> 100` (exactly 100 documents were cut inside the last one)."""
    docs = [f"story {i}\nthe end." for i in range(100)]
    assert train.split_documents(docs) == (docs[:-1], docs[-1:])


def test_the_held_out_text_is_cut_at_a_line_break_only_between_98_and_99_percent():
    """train.py: the line-break search from 90% of the text (a paragraph break at 95% held out 5%); its start
    not clamped at 0 (a document starting after the 98% mark: a negative start counts from the string's end); the
    document holding the mark looked for at 90% (held out up to 10%); the documents after it as docs[i + 2:]."""
    text = "A" * 500 + "\n" + "B" * 450 + "\n" + "C" * 49  # breaks at 50% and 95%: none in [98%, 99%)
    train_docs, val_docs = train.split_documents([text])
    assert train_docs == [text[:990]] and val_docs == [text[990:]]  # cut at the 99% mark itself
    train_docs, val_docs = train.split_documents(["x" * 982, "ab\ncdefgh", "y" * 9])  # "\n" at 98.4%
    assert train_docs == ["x" * 982, "ab\n"] and val_docs == ["cdefgh", "y" * 9]


class FakeTok:
    """Just what tokenize_to_file uses: a vocabulary size, BOS and EOS, and a batch encoder (one id per char)."""
    bos_id, eos_id = 1, 2

    def __init__(self, vocab_size=300):
        self.vocab_size, self.batches = vocab_size, []

    def encode_batch(self, texts):
        self.batches.append(len(texts))
        return [[3 + len(t) % 7] * len(t) for t in texts]


def test_token_files_hold_every_document_of_every_batch(tmp_path):
    """train.py: tokenize_to_file's batch slice [s:s + 4095] (one document in every 4096 silently dropped)."""
    docs = [f"d{i}" for i in range(5000)]
    tok = FakeTok()
    n = train.tokenize_to_file(tok, docs, str(tmp_path / "t.bin"))
    assert n == sum(len(d) + 2 for d in docs) == len(np.fromfile(tmp_path / "t.bin", dtype=np.uint16))
    assert tok.batches == [4096, 904]


def test_a_65536_token_vocabulary_fits_uint16_token_files(tmp_path):
    """train.py: the uint16 check `> 2**16` as `>= 2**16` (ids 0..65535 fit; such a vocabulary was refused)."""
    assert train.tokenize_to_file(FakeTok(2**16), ["ab"], str(tmp_path / "t.bin")) == 4
    with pytest.raises(ValueError, match="does not fit uint16"):
        train.tokenize_to_file(FakeTok(2**16 + 1), ["ab"], str(tmp_path / "t.bin"))


def fake_prepared(out_dir, args, tok):
    """out_dir as a data prep left it, without training anything: data.json, a tok.model, token files as small as
    data.json records (one train token, an empty val.bin)."""
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(tok.model_file, out_dir / "tok.model")
    (out_dir / "train.bin").write_bytes(b"\0\0")  # the one token data.json records
    (out_dir / "val.bin").write_bytes(b"")
    (out_dir / "data.json").write_text(json.dumps({"source": train.data_source(args), "train_tokens": 1}))


def test_other_world_flags_or_a_missing_val_bin_prepare_the_data_again(tmp_path, tok):
    """train.py: data_source without world_seed or world_people (another world reused the old world's tokens);
    prepared() not checking val.bin (a deleted val.bin was "reused": a traceback from np.memmap)."""
    args = train.get_args(["--out-dir", str(tmp_path), "--world-people", "12", "--world-seed", "7"])
    fake_prepared(tmp_path, args, tok)
    assert train.prepared(args) is not None
    for flags in (["--world-seed", "8", "--world-people", "12"], ["--world-seed", "7", "--world-people", "13"]):
        assert train.prepared(train.get_args(["--out-dir", str(tmp_path), *flags])) is None, flags
    os.remove(tmp_path / "val.bin")
    assert train.prepared(args) is None


def test_a_data_json_from_before_file_stamps_and_fingerprints_is_still_reused(tmp_path, tok):
    """train.py: prepared() comparing an older data.json's source as it is (no "files" or "tokenizer_from" key:
    never equal, so the data was prepared again with a new tok.model, orphaning the checkpoints), or requiring
    the tokenizer fingerprint that older data.json files lack."""
    (tmp_path / "a.txt").write_text("Tom found a ball.")
    args = train.get_args(["--out-dir", str(tmp_path / "out"), "--data", str(tmp_path / "a.txt")])
    fake_prepared(tmp_path / "out", args, tok)
    meta = json.loads((tmp_path / "out" / "data.json").read_text())
    del meta["source"]["files"], meta["source"]["tokenizer_from"]
    (tmp_path / "out" / "data.json").write_text(json.dumps(meta))
    assert train.prepared(args) == meta


def test_the_refusal_names_only_the_checkpoints_a_new_tokenizer_orphans(tmp_path, tok, fake_trainer, monkeypatch):
    """train.py: the refusal without `f != "base.pt"` (it named base.pt, which this very run writes anew), without
    comparing the tokenizers (the same one orphans nothing) or made under --init, which keeps its tokenizer."""
    monkeypatch.setattr(train, "train_tokenizer", fake_trainer())  # the prep without training a tokenizer
    other = tokenizer_lib.train_tokenizer(["Another small text, another vocabulary."] * 50, str(tmp_path / "x"), 300)
    out = tmp_path / "out"
    os.makedirs(out)
    shutil.copy(other.model_file, out / "tok.model")
    (out / "base.pt").write_bytes(b"")
    args = train.get_args(["--out-dir", str(out), "--world-people", "12", "--world-seed", "7"])
    train.prepare_data(args, print)  # base.pt alone: the run replaces it anyway
    assert Tokenizer(str(out / "tok.model")).fingerprint == tok.fingerprint
    os.remove(out / "data.json")
    shutil.copy(other.model_file, out / "tok.model")
    (out / "sft.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="sft.pt in ") as e:
        train.prepare_data(args, print)
    assert "base.pt" not in str(e.value) and not (out / "tok.new.model").exists()
    shutil.copy(tok.model_file, out / "tok.model")  # the tokenizer these flags train: nothing orphaned
    train.prepare_data(args, print)
    os.remove(out / "data.json")
    shutil.copy(other.model_file, out / "tok.model")
    os.makedirs(tmp_path / "init")
    shutil.copy(tok.model_file, tmp_path / "init" / "tok.model")  # --init keeps its tokenizer: nothing orphaned
    args = train.get_args(["--out-dir", str(out), "--world-people", "12", "--world-seed", "7",
                           "--init", str(tmp_path / "init" / "start.pt")])
    logs = []
    train.prepare_data(args, logs.append)
    assert "tokenizing with" in logs[0] and Tokenizer(str(out / "tok.model")).fingerprint == tok.fingerprint


# -- GracefulStop (common.py) ----------------------------------------------------------------------------------

def test_the_stop_handlers_are_given_back_after_a_loop_that_ran_to_its_end():
    """common.py: GracefulStop.__exit__ without give_back() (after a finished loop Ctrl-C only set a flag no one
    read: the exam and the dreams could not be interrupted)."""
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    with common.GracefulStop() as stop:
        assert signal.getsignal(signal.SIGINT) == stop.request
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before


def test_an_error_inside_the_loop_is_not_taken_for_a_second_ctrl_c():
    """common.py: `aborted = kind is not None` (any exception in the loop, a full disk, a bug, was swallowed and
    reported as "stopped without saving")."""
    with pytest.raises(ValueError, match="a bug"):
        with common.GracefulStop():
            raise ValueError("a bug")


def test_a_handler_set_outside_python_is_given_back_as_the_default(monkeypatch):
    """common.py: give_back passing None on (signal.signal(s, None) is a TypeError; None is what getsignal
    reports for a handler installed by C code)."""
    calls = []
    monkeypatch.setattr(common.signal, "signal", lambda s, h: calls.append((s, h)))  # "previous": None
    with common.GracefulStop():
        pass
    assert calls[2:] == [(signal.SIGINT, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL)]


@pytest.mark.parametrize("sig, name", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_the_first_signal_says_the_run_stops_after_this_step(sig, name, monkeypatch, capsys):
    """common.py: the message's RANK test inverted (a single process said nothing: the user pressed Ctrl-C
    and saw no sign of it until the step ended)."""
    monkeypatch.delenv("RANK", raising=False)
    with common.GracefulStop() as stop:
        os.kill(os.getpid(), sig)
        assert stop.requested
    assert f"{name}: stopping after this step to save it" in capsys.readouterr().err


def test_a_second_ctrl_c_in_the_last_step_still_saves_nothing_and_exits_130():
    """common.py: exit_if_stopped returning whenever `finished` (a run aborted in its last step went on to the
    exam and exited 0 as if it had finished, with nothing saved)."""
    stop, saved, logs = common.GracefulStop(), [], []
    stop.aborted = True
    with pytest.raises(SystemExit) as e:
        stop.exit_if_stopped(10, True, lambda: saved.append(1), "out/base.pt", logs.append)
    assert e.value.code == 130 and not saved and "stopped without saving" in logs[0]


# -- found unchecked by a sixth mutation-testing pass (each test names the mutant it kills) ---------------------

def test_numbers_just_past_1e30_are_refused_and_1e30_is_not():
    """common.py: check_ranges' 1e30 bound moved (`> 1e36`: --lr 1e31 went on to overflow AdamW's float32)."""
    with pytest.raises(SystemExit) as e:
        train.get_args(["--lr", "2e30"])
    assert e.value.code == 2
    assert train.get_args(["--lr", "1e30"]).lr == 1e30


def test_bf16_asked_on_the_cpu_is_float32_with_a_note(capsys):
    """common.py: start() without `elif not cuda: dtype = "float32"` (a CPU run said and recorded bfloat16), or
    its note's condition flipped."""
    args = argparse.Namespace(threads=0, device="cpu", dtype="bfloat16")
    assert common.start(args) == ("cpu", "float32")
    assert "autocasts on CUDA only; on cpu this run trains in float32" in capsys.readouterr().err


def test_init_without_a_tok_model_beside_it_runs_where_its_data_is_prepared(tmp_path):
    """train.py: the refusal of an --init with no tok.model beside it, without `prepared(args) is None` (refused in
    an OUT_DIR whose tok.model the same data flags made, which nothing would replace)."""
    run(tmp_path / "w", "--max-steps", "1", "--exam-items", "0")
    os.makedirs(tmp_path / "bare")
    shutil.copy(tmp_path / "w" / "base.pt", tmp_path / "bare" / "s.pt")
    train.main(["--out-dir", str(tmp_path / "w"), "--init", str(tmp_path / "bare" / "s.pt"), "--world-people", "12",
                "--world-seed", "7", "--vocab-size", "600", "--seq-len", "64", "--batch-size", "4",
                "--eval-batches", "2", "--exam-items", "0", "--max-steps", "2"])
    assert torch.load(tmp_path / "w" / "base.pt", weights_only=True)["step"] == 2


# -- found unchecked by an eighth mutation-testing pass (each test names the mutant it kills) -------------------

def test_the_world_preset_keeps_its_shape_and_help_names_every_presets_value(capsys):
    """train.py: the world preset's multiple_of 32 as 4 (its model, 935,040 parameters, hidden 352, the README's
    0.94M, became another shape); preset_help naming one preset's value (--multiple-of's help hid stories260k's 4)."""
    args = train.get_args([])
    net = train.Transformer(train.model_args(args, args.vocab_size))
    assert (net.args.hidden_dim, net.num_params()) == (352, 935_040)
    with pytest.raises(SystemExit):
        train.get_args(["--help"])
    assert "world 32, stories260k 4, stories15m 32" in " ".join(capsys.readouterr().out.split())


def test_a_jsonl_row_with_both_fields_gives_its_text_as_a_json_row_does(tmp_path):
    """train.py: jsonl_documents preferring "story" to "text" (the same rows read as .json and .jsonl differed)."""
    rows = [{"text": "The text.", "story": "The story."}, {"story": "Only a story."}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert train.read_documents(str(tmp_path / "a.json")) == train.read_documents(str(tmp_path / "b.jsonl")) \
        == ["The text.", "Only a story."]
