"""The whole life of a model on a tiny world, end to end: pretrain -> SFT -> RLHF -> export -> run.py ->
arena. Checks that every stage wrote its exam section, that re-running a stage replaces its section
instead of duplicating it, and that run.py (NumPy only) answers a question from the final blob."""
import json
import os
import subprocess
import sys

import pytest

import arena
import export
import rlhf
import sft
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--world-people", "12", "--world-seed", "7", "--dim", "48", "--n-layers", "2", "--n-heads", "4",
         "--vocab-size", "600", "--seq-len", "96", "--batch-size", "8", "--warmup", "5", "--lr", "3e-3",
         "--max-steps", "120", "--eval-interval", "120", "--log-interval", "40", "--exam-items", "20"]
SFT = ["--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--exam-items", "10", "--log-interval", "20",
       "--pretrain-mix", "4", "--pretrain-mix-len", "64"]
RLHF = ["--n-comparisons", "120", "--rm-heldout", "0.5", "--rm-epochs", "1", "--steps", "4", "--prompts-per-step", "4",
        "--eval-interval", "2", "--spot-prompts", "8", "--eval-prompts", "16", "--exam-items", "10",
        "--max-new-tokens", "24"]


def test_pipeline_end_to_end(tmp_path):
    out = str(tmp_path / "out")
    train.main(["--out-dir", out, *TRAIN])
    sft.main(["--out-dir", out, *SFT])
    rlhf.main(["--out-dir", out, *RLHF])
    export.main(["--ckpt", os.path.join(out, "rlhf.pt"), "--out", os.path.join(out, "model.bin")])
    arena.main(["--out-dir", out, "--questions", "10"])
    report = json.load(open(os.path.join(out, "report.json")))
    for stage, keys in {"pretrain": ["val_loss", "fact_recall", "qa_framed", "wall_s"],
                        "sft": ["qa_seen", "qa_unseen", "reversal", "stop_rate", "wall_s"],
                        "rm": ["accuracy", "labeler_ceiling", "wall_s"],
                        "rlhf": ["gold_winrate_vs_sft", "kl", "qa_after", "wall_s"],
                        "runtime": ["parity_max_abs_logit_diff", "tok_per_s"],
                        "arena": ["elo"]}.items():
        assert set(keys) <= set(report[stage]), (stage, report[stage].keys())
    assert report["runtime"]["parity_max_abs_logit_diff"] < 1e-2
    by_kind = report["rm"]["by_kind"]  # the simulated labeler's pairs, split by correctness, add up to all of them
    assert sum(v["pairs"] for v in by_kind.values()) == report["rm"]["heldout_pairs"]
    assert sum(v["accuracy"] * v["pairs"] for v in by_kind.values()) == pytest.approx(
        report["rm"]["accuracy"] * report["rm"]["heldout_pairs"], abs=0.01)
    assert sum(v["sft_likelihood"] * v["pairs"] for v in by_kind.values()) == pytest.approx(
        report["rm"]["sft_likelihood_accuracy"] * report["rm"]["heldout_pairs"], abs=0.01)
    md = open(os.path.join(out, "report.md")).read()
    headers = ["## Pretraining", "## SFT", "## Arena"]
    assert all(md.count(h) == 1 for h in headers)

    # re-running a stage replaces its section: same headers, once each, and the other stages untouched
    sft.main(["--out-dir", out, *SFT])
    md2 = open(os.path.join(out, "report.md")).read()
    assert all(md2.count(h) == 1 for h in headers)
    assert md2.split("## SFT")[0] == md.split("## SFT")[0]
    assert json.load(open(os.path.join(out, "report.json")))["pretrain"] == report["pretrain"]

    # the second file: run.py alone answers from the blob, in a chat, and stops at <|end|>
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), os.path.join(out, "model.bin"),
                           "--chat", "--temperature", "0", "--max-new-tokens", "30"],
                          input="Where does somebody live?\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and "tok/s" in proc.stderr


@pytest.mark.parametrize("script", [train, sft, rlhf, arena, export])
def test_help_shows_defaults_but_never_an_empty_one(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: " in text and "(default: None)" not in text and "(default: )" not in text


@pytest.mark.parametrize("script", ["tokenizer.py", "run.py", "world.py"])
def test_every_script_answers_help(script):  # tokenizer.py said its usage line and exited 1
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ") and "--help" in proc.stdout


def test_pipeline_sh_puts_a_relative_out_dir_where_it_was_called_from(tmp_path):
    # a stand-in python prints each stage's command instead of running it; it reads its stdin as run.py --chat
    # does (echo alone exits before the questions are piped in: printf's SIGPIPE then failed the script)
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\ncat >/dev/null\necho "$@"\n')
    fake.chmod(0o755)
    result = subprocess.run(["bash", os.path.join(ROOT, "pipeline.sh"), "myrun"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHON": str(fake)}, check=True)
    assert f"train.py --out-dir {tmp_path / 'myrun'}\n" in result.stdout
    assert f"The report card: {tmp_path / 'myrun'}/report.md" in result.stdout
