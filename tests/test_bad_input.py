"""Bad input found by a fuzzing audit of every script's flags and files, each answered with one line instead of a
traceback, and never with lost work: an out dir that cannot be written is found before any training, a full disk
or a refused checkpoint is one line, a new tokenizer never orphans the checkpoints beside it, JSON nested too
deep, lone surrogates in JSON text, token files cut short, closed stdin and stdout, seeds and thread counts past
what torch takes, and running out of memory."""
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import common
import model as model_lib
import rlhf
import sft
import train
from model import ModelArgs, Transformer, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--world-people", "12", "--world-seed", "7", "--dim", "32", "--n-layers", "1", "--n-heads", "2",
        "--n-kv-heads", "1", "--vocab-size", "400", "--seq-len", "64", "--batch-size", "4", "--max-steps", "2",
        "--eval-interval", "2", "--eval-batches", "1", "--exam-items", "0", "--warmup", "1"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    train.main(["--out-dir", str(d), *TINY])
    return d


def refuse_writes(monkeypatch):
    """An out dir this process may not write (as root, chmod does not stop us: the write itself is refused)."""
    def refused(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(common.tempfile, "TemporaryFile", refused)


def test_an_out_dir_that_cannot_be_written_stops_sft_and_rlhf_before_any_work(tmp_path, base_dir, monkeypatch):
    """Before, sft.py trained to the end and then lost the run in torch.save's traceback."""
    shutil.copytree(base_dir, tmp_path / "o")
    refuse_writes(monkeypatch)
    monkeypatch.setattr(sft, "read_chat_jsonl", lambda *a: pytest.fail("read data"))
    with pytest.raises(SystemExit, match=r"^error: cannot write to .*o: Permission denied$"):
        sft.main(["--out-dir", str(tmp_path / "o"), "--data", "chats.jsonl"])
    save_checkpoint(str(tmp_path / "o" / "sft.pt"), Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2,
                    vocab_size=400, max_seq_len=64)), "sft", args={"base_args": {"world_people": 12, "world_seed": 7}})
    monkeypatch.setattr(rlhf, "load_checkpoint", lambda *a, **k: pytest.fail("loaded the SFT model"))
    with pytest.raises(SystemExit, match=r"^error: cannot write to .*o: Permission denied$"):
        rlhf.main(["--out-dir", str(tmp_path / "o")])


def test_a_checkpoint_torch_cannot_write_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    def full_disk(obj, path):
        open(path, "wb").write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\nmore")
    monkeypatch.setattr(model_lib.torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        common.run_main(lambda: save_checkpoint(str(tmp_path / "base.pt"), Transformer(ModelArgs(
            dim=32, n_layers=1, n_heads=2, vocab_size=300, max_seq_len=16)), "base"))
    assert str(e.value.code).startswith(f"error: cannot write {tmp_path / 'base.pt'}: [enforce fail")
    assert "\n" not in str(e.value.code) and os.listdir(tmp_path) == []


def test_a_report_that_cannot_be_read_or_written_is_a_note_after_the_work(tmp_path, capsys):
    os.makedirs(tmp_path / "report.json")  # a directory where the report goes
    assert common.update_report(str(tmp_path), "sft", {"x": 1}, "## SFT") is False
    assert "note: the report is not updated" in capsys.readouterr().err


def test_new_data_flags_never_orphan_the_checkpoints_made_with_the_old_tokenizer(tmp_path, base_dir, capsys):
    """Before, a fresh train.py with another --vocab-size replaced tok.model (with a note) and sft.pt beside it
    no longer loaded. Now it stops, with tok.model, data.json and sft.pt as they were; base.pt (which the run
    replaces anyway) is not a reason, nor is a tokenizer that comes out the same."""
    out = tmp_path / "o"
    shutil.copytree(base_dir, out)
    before = {f: (out / f).read_bytes() for f in ("tok.model", "data.json", "train.bin")}
    (out / "sft.pt").write_bytes(b"a finetune of the old tokenizer's model")
    with pytest.raises(SystemExit) as e:
        train.main(["--out-dir", str(out), *TINY, "--vocab-size", "450"])
    assert "sft.pt in " in str(e.value.code) and "nothing was changed" in str(e.value.code)
    assert {f: (out / f).read_bytes() for f in before} == before
    assert sorted(os.listdir(out)) == sorted([*before, "base.pt", "sft.pt", "tok.vocab", "report.md", "report.json",
                                              "val.bin"])
    os.remove(out / "data.json")  # an interrupted prep: the same flags train the same tokenizer, which is kept
    train.main(["--out-dir", str(out), *TINY])
    assert (out / "train.bin").read_bytes() == before["train.bin"] and not (out / "tok.new.model").exists()
    os.remove(out / "sft.pt")  # nothing needs the old tokenizer: the new one replaces it
    train.main(["--out-dir", str(out), *TINY, "--vocab-size", "450"])
    assert (out / "tok.model").read_bytes() != before["tok.model"]


def test_a_mistyped_data_path_leaves_the_prepared_data(tmp_path, base_dir):
    out = tmp_path / "o"
    shutil.copytree(base_dir, out)
    with pytest.raises(SystemExit, match="does not exist"):
        train.main(["--out-dir", str(out), *TINY, "--data", str(tmp_path / "typo.txt")])
    assert (out / "data.json").exists()  # it was deleted before --data was read, so the next run prepared again


@pytest.mark.parametrize("name", ["deep.json", "deep.jsonl"])
def test_json_nested_too_deep_is_one_line_in_every_reader(tmp_path, name):
    deep = "[" * 100_000 + "\n"
    path = tmp_path / name
    path.write_text(deep)
    with pytest.raises(ValueError, match=name):
        train.read_documents(str(path))
    with pytest.raises(ValueError, match=":1: bad JSON"):
        sft.read_chat_jsonl(str(path))
    with pytest.raises(ValueError, match=":1: bad JSON"):
        rlhf.read_comparisons(str(path))
    (tmp_path / "report.json").write_text(deep)
    with pytest.raises(ValueError, match="is not JSON"):
        common.read_report(str(tmp_path))
    (tmp_path / "data.json").write_text(deep)
    with pytest.raises(ValueError, match="is damaged"):
        train.prepared(train.get_args(["--out-dir", str(tmp_path)]))


def test_a_lone_surrogate_in_json_text_is_a_replacement_character(tmp_path, tok):
    """JSON may spell half a UTF-16 pair ("\\ud800"), which has no UTF-8: sentencepiece stopped on it."""
    assert tok.encode("caf\ud800 ok") == tok.encode("caf\ufffd ok")
    assert tok.encode_batch(["a\udc80", "b"]) == [tok.encode("a\ufffd"), tok.encode("b")]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": f"Story {i}: \ud800 a cat."}) for i in range(5)))
    train.main(["--out-dir", str(tmp_path / "o"), *TINY, "--data", str(tmp_path / "d.jsonl"), "--vocab-size",
                "300", "--seq-len", "8", "--max-steps", "1"])
    ids = np.fromfile(tmp_path / "o" / "train.bin", dtype=np.uint16)
    assert "\ufffd" in train.Tokenizer(str(tmp_path / "o" / "tok.model")).decode(ids.tolist())


def test_token_files_cut_short_are_one_line(tmp_path, base_dir):
    out = tmp_path / "o"
    shutil.copytree(base_dir, out)
    with open(out / "train.bin", "r+b") as f:
        f.truncate(1001)
    with pytest.raises(SystemExit, match=r"train.bin holds 1,001 bytes where .*delete .*data.json"):
        train.main(["--out-dir", str(out), *TINY, "--resume", "--max-steps", "3"])
    with pytest.raises(SystemExit, match=r"train.bin is damaged or shorter than one window \(1,001 bytes\)"):
        sft.main(["--out-dir", str(out), "--pretrain-mix", "2", "--exam-items", "0"])


@pytest.mark.parametrize("closed, why", [(0, "stdin is closed"), (1, "stdout is closed")])
def test_run_py_with_a_closed_stream_is_one_line(tmp_path, base_dir, closed, why):
    import export
    export.main(["--ckpt", str(base_dir / "base.pt"), "--out", str(tmp_path / "m.bin")])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), str(tmp_path / "m.bin"), "--chat"],
                          stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=lambda: os.close(closed))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == f"error: {why}" + (
        ": give the turn as PROMPT, or pipe the turns in" if closed == 0 else ": nowhere to write")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), str(tmp_path / "m.bin"), "Tom",
                               "--max-new-tokens", "40"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr == "error: [Errno 28] No space left on device\n"


def test_label_with_a_closed_stdin_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(SystemExit) as e:
        rlhf.get_args(["--out-dir", str(tmp_path), "--label"])
    assert e.value.code == 2 and "--label reads your answers from stdin, which is closed" in capsys.readouterr().err


@pytest.mark.parametrize("script", [train, sft, rlhf])
@pytest.mark.parametrize("flag, value", [("--seed", "100000000000000000000"), ("--seed", "-1"),
                                         ("--threads", "10000000000")])
def test_seeds_and_thread_counts_torch_cannot_take_are_usage_errors(script, flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        script.get_args([flag, value])
    assert e.value.code == 2 and f"argument {flag}: must be in 0.." in capsys.readouterr().err
    assert script.get_args([flag, "4"]).__dict__[flag[2:]] == 4


@pytest.mark.parametrize("error, caught", [
    (MemoryError(), True), (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 8 TB"), True),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), True),
    (RuntimeError("a bug"), False)])
def test_running_out_of_memory_is_one_line_with_what_to_lower(error, caught):
    def main():
        raise error
    if not caught:
        with pytest.raises(RuntimeError, match="a bug"):
            common.run_main(main)
        return
    with pytest.raises(SystemExit) as e:
        common.run_main(main)
    assert str(e.value.code).startswith("error: out of memory (") and "lower --batch-size" in str(e.value.code)
