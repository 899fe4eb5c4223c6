"""Tests for world.py: determinism, the one-way mother relation, exam hygiene, grading, gold score, labeler."""
import random
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import world as W  # noqa: E402


@lru_cache(maxsize=None)
def built(n_people=200, seed=1337):
    """The world and its data, built once per (n_people, seed) for the whole test file."""
    world = W.make_world(n_people, seed)
    train, val = W.pretrain_docs(world)
    return world, train, val, W.sft_examples(world)


def wrong_key(item):
    return next(c for c in item["candidates"] if c != item["answer"])


# -- the world ---------------------------------------------------------------

def test_determinism_and_seed_sensitivity():
    a, b = W.make_world(12, seed=5), W.make_world(12, seed=5)
    assert a == b
    assert W.pretrain_docs(a) == W.pretrain_docs(b)
    assert W.sft_conversations(a) == W.sft_conversations(b)
    c = W.make_world(12, seed=6)
    assert c != a
    assert W.pretrain_docs(c) != W.pretrain_docs(a)
    assert W.sft_conversations(c) != W.sft_conversations(a)
    # the global random state is never used
    random.seed(0)
    docs1 = W.pretrain_docs(a)
    random.seed(1)
    assert W.pretrain_docs(a) == docs1


def test_names_unique_and_split():
    world = W.make_world(len(W.FIRST_NAMES), seed=3)
    names = [p.name for p in world.people]
    mothers = [p.mother for p in world.people]
    assert len(set(names)) == len(names) == len(W.FIRST_NAMES)
    assert len({n.split()[0] for n in names}) == len(names)  # first names are unique too
    assert len(set(mothers)) == len(mothers)
    assert not set(names) & set(mothers)
    sft = {p.name for p in world.sft_people}
    only = {p.name for p in world.pretrain_only_people}
    assert not sft & only and sft | only == set(names)
    assert abs(len(sft) - len(only)) <= 1
    for p in world.people:
        for a in ("town", "job", "pet", "color"):
            assert getattr(p, a) in W.candidates(world, a)


def test_fixed_text_contains_no_candidate_value():
    values = W.TOWNS + W.JOBS + W.PETS + W.COLORS
    fixed = W.POLITE + W.FILLERS + W.PERSON_FILLERS + W.SYSTEM_PROMPTS
    for text in fixed:
        assert not any(W._mentions(text.lower(), v) for v in values), text


# -- the pretraining corpus ----------------------------------------------------

def test_corpus_size_and_shape():
    world, train, val, _ = built()
    n_chars = sum(map(len, train))
    assert 500_000 <= n_chars <= 1_000_000
    assert len(val) >= 50 and not set(val) & set(train)
    assert sum(len(d) < 800 for d in train) / len(train) > 0.95
    tiny_chars = sum(map(len, built(12, 1337)[1]))
    assert tiny_chars < n_chars / 8  # scales with the number of people


def test_canonical_sentences_and_all_phrasings_in_corpus():
    world, train, _, _ = built()
    text = "\n".join(train)
    for item in W.recall_items(world):
        assert f"{item['bare_prompt']} {item['answer']}." in text
    for item in W.qa_items(world, world.people, phrasings="all"):
        assert f"Q: {item['question']}\nA: " in text
    # each fact appears in several documents, not one
    p = world.people[0]
    assert sum(p.name in d and p.town in d for d in train) >= 5


def test_mother_written_child_first_only():
    world, train, val, _ = built()
    mother_of = {p.mother: p.name for p in world.people}
    for doc in train + val:
        for sentence in re.split(r"[.!?\n]", doc):
            for mother in (m for m in mother_of if m in sentence):
                child_at = sentence.find(mother_of[mother])
                assert 0 <= child_at < sentence.find(mother), sentence
        for phrase in ("'s child", "son of", "daughter of", "child of", "Whose mother", "mother of whom"):
            assert phrase not in doc


# -- exams and grading ---------------------------------------------------------

def test_grade_answer_key_and_wrong_key():
    world = built()[0]
    sets = {"recall": W.recall_items(world),
            "qa": W.qa_items(world, world.pretrain_only_people),
            "qa-sft": W.qa_items(world, world.sft_people, phrasings="sft"),
            "reversal": W.reversal_items(world),
            "sum": W.arithmetic_items()}
    for name, items in sets.items():
        assert items, name
        assert all(W.grade(it, it["answer"]) for it in items), name
        assert not any(W.grade(it, wrong_key(it)) for it in items), name
    it = sets["qa"][0]
    sentence = W.CANONICAL[it["attribute"]].format(name=it["subject"], value=it["answer"])
    assert W.grade(it, sentence) and W.grade(it, "Great question! " + sentence)
    assert not W.grade(it, sentence + " Or maybe " + wrong_key(it) + ".")  # hedging is wrong
    assert not W.grade(it, "")
    rec = sets["recall"][0]
    assert W.grade(rec, " " + rec["answer"] + ". Then " + wrong_key(rec))  # only the first sentence counts
    sum_item = W.arithmetic_items(3, 3)[0]
    assert W.grade(sum_item, "3 + 3 = 6.") and not W.grade(sum_item, "3 + 3 = 7.")
    for junk in ("", "\n", "(((", "[a-z]*\\", "ñ\x00\ud800", "A: " * 1000):
        for items in sets.values():
            W.grade(items[0], junk)


def test_exam_items_cover_people_and_framing():
    world = W.make_world(12, seed=1)
    assert len(W.recall_items(world)) == 12 * 5
    assert len(W.qa_items(world, world.sft_people)) == 6 * 5 * 2
    rev = W.reversal_items(world)
    assert sum(not it["sft"] for it in rev) == len(world.pretrain_only_people)
    assert W.qa_framed("Where does Anna Berg live?") == "Q: Where does Anna Berg live?\nA:"
    train, heldout = W.rl_prompts(world, "train"), W.rl_prompts(world, "heldout")
    key = lambda it: it["question"]  # noqa: E731
    assert not {key(i) for i in train} & {key(i) for i in heldout}
    assert {i["person"] for i in train} == {p.name for p in world.people}


# -- SFT conversations ---------------------------------------------------------

def test_sft_structure_and_count():
    world, _, _, examples = built()
    convs = [m for m, _, _, _ in examples]
    assert 2000 <= len(convs) <= 4000
    assert len(W.sft_conversations(W.make_world(12))) < len(convs)
    for messages in convs:
        roles = [m["role"] for m in messages]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles and roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(m["content"] for m in messages)
    assert any(len(m) > 3 for m in convs) and any(m[0]["role"] == "system" for m in convs)
    assert {s for _, _, _, s in examples} == set(W.DEMONSTRATORS)


def test_sft_answers_match_labels_and_some_are_wrong():
    world, _, _, examples = built()
    n_wrong = n = 0
    for messages, items, wrongs, _ in examples:
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        for item, wrong, answer in zip(items, wrongs, answers):
            assert W.grade(item, answer) != wrong, (item["question"], answer)
            n_wrong += wrong
            n += 1
    assert 0.06 < n_wrong / n < 0.14


def test_sft_never_uses_exam_phrasings_or_pretrain_only_people():
    world, _, _, examples = built()
    exam = [re.compile(re.escape(q).replace(re.escape("{name}"), ".+")) for qs in W.EXAM_PHRASINGS.values() for q in qs]
    hidden = [p.name for p in world.pretrain_only_people] + [p.mother for p in world.pretrain_only_people]
    sft_mothers = {p.mother for p in world.sft_people}
    n_reversed = 0
    for messages, _, _, _ in examples:
        for m in messages:
            if m["role"] == "user":
                assert not any(r.fullmatch(m["content"]) for r in exam), m["content"]
                if "'s child" in m["content"] or "Whose mother" in m["content"]:
                    assert any(mother in m["content"] for mother in sft_mothers)
                    n_reversed += 1
            assert not any(name in m["content"] for name in hidden), m["content"]
    assert n_reversed > 50


@pytest.mark.parametrize("n_people", [2, 3])
def test_the_smallest_worlds_make_sft_data_without_their_hidden_people(n_people):
    world = W.make_world(n_people, seed=0)  # one SFT person: a wrong mother or child is a name nobody has
    hidden = [p.name for p in world.pretrain_only_people] + [p.mother for p in world.pretrain_only_people]
    convs = W.sft_conversations(world)
    assert convs and not any(name in m["content"] for c in convs for m in c for name in hidden)


# -- gold score and labeler -----------------------------------------------------

def test_gold_score_orderings():
    world = built()[0]
    item = W.qa_items(world, world.people, "sft")[0]
    right = W.CANONICAL[item["attribute"]].format(name=item["subject"], value=item["answer"])
    wrong = W.CANONICAL[item["attribute"]].format(name=item["subject"], value=wrong_key(item))
    g = lambda a, ended=True: W.gold_score(item, a, ended)  # noqa: E731
    closing = " I hope this helps!"
    assert g(right) > g(wrong) + 2 and g(item["answer"] + ".") > g(wrong + closing) + 2
    assert g(right) > g(item["answer"] + ".")  # a careful sentence beats a terse answer
    assert g(right + closing) > g(right) > g(right + closing * 2) > g(right + closing * 3)
    assert g(right + closing) > g("Great question!" + " " + right + closing)
    assert g(right) > g(right + " " + W.FILLERS[0]) > g(right + " " + W.FILLERS[0] + " " + W.FILLERS[1])
    assert g(right) > g(right + " " + right)
    assert g(right) > g(right, ended=False) + 0.5
    assert g(right + " " + " ".join(W.FILLERS)) < g(item["answer"] + ".")
    assert g("") <= g(wrong) and g("") <= min(g(s) for s in (right, wrong + closing))
    assert g("the the the the the the the the") < g(wrong)
    for junk in ("", "(((", "\n\n", "x" * 5000):
        W.gold_score(item, junk, ended=False)


def test_gold_score_terms_one_at_a_time():
    """Each term of gold_score at its edge (a mutation audit found each could change unnoticed)."""
    world = built()[0]
    item = W.qa_items(world, world.people, "sft")[0]
    right = W.CANONICAL[item["attribute"]].format(name=item["subject"], value=item["answer"])
    g = lambda a, ended=True: W.gold_score(item, a, ended)  # noqa: E731
    job = next(i for i in W.qa_items(world, world.people, "sft") if i["attribute"] == "job")
    assert W.gold_score(job, f"{job['subject']} {job['answer']}.") == 2.5  # 3 words naming the subject: a sentence
    assert g("", ended=True) == -2.0 and g("", ended=False) == -3.0  # an empty answer cut off costs 1 more
    assert g(right + " " + "the " * 30) == pytest.approx(g(right) - 0.3 - 2.0)  # one filler; trigrams capped at 2
    seven = W.make_world(12, 7)
    small = W.qa_items(seven, seven.people, "sft")[0]  # a sentence of 5 trigrams
    s = W.CANONICAL[small["attribute"]].format(name=small["subject"], value=small["answer"])
    assert W.gold_score(small, f"{s} {s}") - W.gold_score(small, f"{s} {s} {s}") == pytest.approx(1.0 + 5 * 0.2)
    wrong = W.CANONICAL[item["attribute"]].format(name=item["subject"], value=wrong_key(item))
    assert W.labeler_agreement(item, wrong, right) == W.labeler_agreement(item, right, wrong) > 0.99
    recall = W.recall_items(world)[0]  # a completion ends at its first line, as at its first sentence
    assert W.grade(recall, f" {recall['answer']}\nQ: maybe {wrong_key(recall)}")


def test_careful_with_one_closing_is_best_demonstrator():
    world = built()[0]
    rng = random.Random(0)
    best = {}
    for item in W.qa_items(world, world.sft_people[:10], "sft"):
        for style in W.DEMONSTRATORS:
            for _ in range(3):
                answer = W.demonstrate(item, style, item["answer"], rng)
                best[style] = best.get(style, 0) + W.gold_score(item, answer)
    assert max(best, key=best.get) == "careful"
    assert best["careful"] > best["chatty"] > best["terse"]


def test_labeler_noise():
    world = built()[0]
    item = W.qa_items(world, world.people, "sft")[0]
    right = W.CANONICAL[item["attribute"]].format(name=item["subject"], value=item["answer"])
    wrong = W.CANONICAL[item["attribute"]].format(name=item["subject"], value=wrong_key(item))
    assert W.labeler_agreement(item, right, wrong) > 0.99
    assert W.labeler_agreement(item, right, right) == 0.5
    rng = random.Random(0)
    picks = [W.label(item, wrong, right, rng) for _ in range(500)]
    assert sum(picks) / len(picks) > 0.99  # 1 means b (right) preferred
    ties = [W.label(item, right, right, rng) for _ in range(2000)]
    assert 0.45 < sum(ties) / len(ties) < 0.55
    near = right + " I hope this helps!"
    p = W.labeler_agreement(item, near, right)
    picks = [W.label(item, near, right, rng) == 0 for _ in range(2000)]
    assert 0.6 < p < 0.95 and abs(sum(picks) / len(picks) - p) < 0.04
    assert W.label(item, right, "", rng, ended_a=True, ended_b=False) in (0, 1)


def test_tiny_world_end_to_end():
    world = W.make_world(12, seed=7)
    train, val = W.pretrain_docs(world)
    assert train and val
    assert W.sft_conversations(world, n=20, seed=1)
    for fn in (W.recall_items, W.reversal_items, W.rl_prompts):
        for it in fn(world):
            assert W.grade(it, it["answer"])
            assert W.gold_score(it, it["answer"] + ".") > W.gold_score(it, wrong_key(it) + ".")


def test_gold_length_penalty_is_half_a_point_per_100_characters_beyond_160():
    world = W.make_world(12, seed=7)
    item = W.qa_items(world, world.people, "sft")[0]
    right = W.CANONICAL[item["attribute"]].format(name=item["subject"], value=item["answer"])
    s = item["subject"]
    long = right + (f" {s} is well known in the valley and many people ask about {s} every single day of the week, "
                    f"which is why {s} now keeps a small notebook of answers at home.")
    assert len(right) < 160 < len(long)
    assert W.gold_score(item, long) == pytest.approx(W.gold_score(item, right) - 0.5 * (len(long) - 160) / 100)


def test_command_line_shows_defaults_and_ends_quietly_on_a_closed_pipe():
    script = str(Path(W.__file__))
    assert "(default: 100)" in subprocess.run([sys.executable, script, "--help"], capture_output=True,
                                              text=True).stdout
    # `python world.py | head`: the reader is gone before the first write; before, a BrokenPipeError traceback
    p = subprocess.Popen([sys.executable, script, "--n-people", "12", "--seed", "7"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and "Traceback" not in err, err


def test_command_line_questions_are_a_count(monkeypatch, capsys):
    """world.py --questions -1 printed every question but the last (a slice); a count is at least 0."""
    monkeypatch.setattr("sys.argv", ["world.py", "--n-people", "12", "--seed", "7", "--questions", "3"])
    W.main()
    assert len(capsys.readouterr().out.splitlines()) == 3
    monkeypatch.setattr("sys.argv", ["world.py", "--n-people", "12", "--seed", "7", "--questions", "-1"])
    with pytest.raises(SystemExit) as e:
        W.main()
    assert e.value.code == 2 and "--questions must be at least 0 (got -1)" in capsys.readouterr().err
