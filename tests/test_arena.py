"""arena.py: the ratings follow the battles, the judge is the world's labeler, and a base model, checkpoint or
blob, answers in the Q/A framing."""
import random
import shutil

import pytest

import arena
import export
import world
from model import CheckpointError, ModelArgs, Transformer, save_checkpoint


def test_bradley_terry_orders_players_by_strength():
    rng = random.Random(0)
    true = [0.0, 1.0, 2.0]  # log-strengths
    results = []
    for _ in range(600):
        i, j = rng.sample(range(3), 2)
        p_i = 1 / (1 + 10 ** (true[j] - true[i]))  # one unit of strength = 10:1 odds
        results.append((i, j, i if rng.random() < p_i else j))
    r = arena.bradley_terry(results, 3)
    assert r[0] < r[1] < r[2] and abs(r.mean() - 1000) < 1e-6
    # one unit of true strength = 10:1 odds = 400 Elo points
    assert 300 < r[2] - r[1] < 500 and 300 < r[1] - r[0] < 500


def test_equal_players_get_equal_ratings_and_intervals_cover_them():
    fights = [(q, 0, 1, q % 2) for q in range(100)]
    point, lo, hi = arena.ratings_with_intervals(fights, 2, 100, rounds=50)
    assert abs(point[0] - point[1]) < 1e-6
    assert all(lo[i] <= point[i] <= hi[i] for i in range(2))


def test_battles_prefer_the_right_answer(tiny_world):
    import world
    items = world.rl_prompts(tiny_world, "heldout")[:40]
    right = [(f"{it['subject']} has the answer {it['answer']}.", True) for it in items]
    wrong = [("I do not know.", True) for _ in items]
    fights = arena.battles(items, [wrong, right], seed=0)
    assert sum(w == 1 for _, _, _, w in fights) >= 0.9 * len(fights)


def test_contestants_get_unique_names_for_the_report():
    names = arena.unique_names(["a/rlhf.pt", "b/rlhf.pt", "out/sft.pt", "out/base.pt", "out/model.bin", "c/model.bin",
                                "out/sft.pt"], [False, False, False, True, False, False, False])
    assert names == ["a/rlhf", "b/rlhf", "out/sft #1", "base (Q/A framing)", "out/model", "c/model", "out/sft #2"]
    assert len(set(names)) == len(names)


def test_a_bare_checkpoint_name_reads_the_tokenizer_beside_it(tmp_path, monkeypatch, tok):
    shutil.copy(tok.model_file, tmp_path / "tok.model")
    net = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=tok.vocab_size, max_seq_len=64))
    save_checkpoint(str(tmp_path / "sft.pt"), net, "sft", tokenizer=tok.fingerprint, args={})
    monkeypatch.chdir(tmp_path)  # no out/ here: `python arena.py sft.pt ...` means ./sft.pt and ./tok.model
    answer, _, framed = arena.checkpoint_player("sft.pt", 1.0, 4, seed=0)
    assert not framed
    assert len(answer(["Where does Anna live?"])) == 1
    with pytest.raises(CheckpointError, match="no checkpoint at none.pt"):
        arena.checkpoint_player("none.pt", 1.0, 4, seed=0)


def test_intervals_come_from_resampling_the_battles():
    rng = random.Random(0)
    fights = [(q, 0, 1, 0 if rng.random() < 0.6 else 1) for q in range(100)]
    point, lo, hi = arena.ratings_with_intervals(fights, 2, 100, rounds=50)
    assert all(hi[i] - lo[i] > 20 and lo[i] < point[i] < hi[i] for i in range(2))
    fights = [(q, 0, 1, 0 if q < 60 else 1) for q in range(100)]  # 60:40: a 95% interval ~70 Elo wide, not 25
    point, lo, hi = arena.ratings_with_intervals(fights, 2, 100, rounds=200)
    assert all(50 < hi[i] - lo[i] < 100 for i in range(2))
    # with replacement: of two questions, one won by each, some resamples draw the first twice
    point, lo, hi = arena.ratings_with_intervals([(0, 0, 1, 0), (1, 0, 1, 1)], 2, 2, rounds=200)
    assert hi[0] == pytest.approx(arena.bradley_terry([(0, 1, 0), (0, 1, 0)], 2)[0])


def right_or_dunno(items, right, ended=True):
    """A player that answers every question right, or "I do not know." (a stand-in for a checkpoint)."""
    return (lambda questions: [(f"{items[q]['subject']} has the answer {items[q]['answer']}." if right
                                else "I do not know.", ended) for q in questions],
            {"world_people": 12, "world_seed": 7}, False)


def test_the_tables_columns_with_three_models_and_answers_cut_off(tmp_path, monkeypatch, tiny_world):
    items = {it["question"]: it for it in world.rl_prompts(tiny_world, "heldout")}
    players = {"good": right_or_dunno(items, True), "bad": right_or_dunno(items, False),
               "worse": right_or_dunno(items, False), "cut": right_or_dunno(items, True, ended=False)}
    monkeypatch.setattr(arena, "checkpoint_player", lambda path, *a: players[path.removesuffix(".pt")])
    arena.main(["good.pt", "bad.pt", "worse.pt", "--out-dir", str(tmp_path), "--questions", "30"])
    first = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| 1 |"))
    assert "good" in first and float(first.split("|")[5].strip().rstrip("%")) > 90  # of its own battles
    arena.main(["cut.pt", "bad.pt", "--out-dir", str(tmp_path), "--questions", "30"])
    cut = next(line for line in (tmp_path / "report.md").read_text().splitlines() if "| cut |" in line)
    assert cut.rstrip(" |").split("|")[-1].strip() == "1.50"  # mean gold: right, but never ended (-1)


def test_the_world_seed_asked_for_is_the_world_asked_about(tmp_path, monkeypatch):
    asked = []
    player = (lambda qs: asked.extend(qs) or [("I do not know.", True) for _ in qs],
              {"world_people": 12, "world_seed": 7}, False)
    monkeypatch.setattr(arena, "checkpoint_player", lambda *a: player)
    arena.main(["a.pt", "b.pt", "--out-dir", str(tmp_path), "--questions", "5", "--world-seed", "0"])
    assert asked[:5] == [it["question"] for it in world.rl_prompts(world.make_world(12, 0), "heldout")[:5]]
    assert arena.qa_answer("Anna lives in Dunmore.\nQ: Where", False) == ("Anna lives in Dunmore.", True)


def test_the_table_ranks_the_better_model_first(tmp_path, monkeypatch, tiny_world):
    items = {it["question"]: it for it in world.rl_prompts(tiny_world, "heldout")}
    monkeypatch.setattr(arena, "checkpoint_player", lambda path, *a: right_or_dunno(items, path.startswith("good")))
    arena.main(["bad.pt", "good.pt", "--out-dir", str(tmp_path), "--questions", "30"])
    first = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| 1 |"))
    assert "good" in first and "bad" not in first


def test_blobs_alone_say_which_world_their_questions_come_from(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(arena, "blob_player", lambda *a: ((lambda qs: [("I do not know.", True) for _ in qs]), {}, False))
    arena.main(["a.bin", "b.bin", "--out-dir", str(tmp_path), "--questions", "5"])
    assert "note: no checkpoint among the contestants" in capsys.readouterr().out
    arena.main(["a.bin", "b.bin", "--out-dir", str(tmp_path), "--questions", "5", "--world-people", "100"])
    assert "note: no checkpoint" not in capsys.readouterr().out


def test_a_base_blob_answers_in_the_qa_framing(tmp_path, monkeypatch, tok):
    net = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=tok.vocab_size, max_seq_len=64))
    export.write_blob(str(tmp_path / "base.bin"), net, "base", 0, tok)
    prompts, said = [], tok.encode(" Anna lives in Dunmore.\nQ: Where") + [tok.eos_id]
    monkeypatch.setattr(arena.runtime, "generate", lambda model, ids, *a, **k: prompts.append(ids) or iter(said))
    answer, _, framed = arena.blob_player(str(tmp_path / "base.bin"), 1.0, 16, seed=0)
    assert framed and answer(["Where does Anna live?"]) == [("Anna lives in Dunmore.", True)]
    assert prompts == [[tok.bos_id] + tok.encode(world.qa_framed("Where does Anna live?"))]


def test_the_report_is_titled_with_the_command_shell_quoted(tmp_path, monkeypatch):
    """arena.py: its title as the bare `python arena.py` (a run's contestants and flags went unsaid), or
    common.command_line joining words with spaces (a path with a space could not be pasted back into a shell)."""
    player = (lambda qs: [("I do not know.", True) for _ in qs], {"world_people": 12, "world_seed": 7}, False)
    monkeypatch.setattr(arena, "checkpoint_player", lambda *a: player)
    arena.main(["my run/sft.pt", "b.pt", "--out-dir", str(tmp_path), "--questions", "5"])
    title = f"## Arena (`python arena.py 'my run/sft.pt' b.pt --out-dir {tmp_path} --questions 5`)"
    assert title in (tmp_path / "report.md").read_text()
