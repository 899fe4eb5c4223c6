"""rlhf.py: the Bradley-Terry loss and accuracy, answers encoded as the chat template writes them, log-probs
only on answer tokens, KL 0 against itself and KL(policy || reference) in that direction, the policy gradient
raises a toy reward, PPO's clip stops tokens outside the trust region and compares with the policy that sampled,
the RL reward is the RM score minus beta x the sampled KL, dropout is off in the update, a resumed RL run equals
an uninterrupted one, the reward normalisation scores answers in a fixed order, the terminal labeler saves exactly
what was chosen and continues where it stopped (keeping comparisons it did not make), bad comparison files are
reported by line, a tiny run writes and reuses what it should, a resume refuses what would change its run, and on a
model of other text than the world the kept policy is the last."""
import io
import math
import json
import os
import re
import shutil

import pytest
import torch

import rlhf
import world as world_lib
from model import ModelArgs, Transformer, generate, save_checkpoint, token_logprobs
from tokenizer import render_chat


def tiny_model(vocab=600, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=vocab, max_seq_len=96))


@pytest.fixture
def out_dir(tmp_path, tok):
    """An out dir with the tiny world's tokenizer and an (untrained) 'sft.pt' of the 12-person world."""
    shutil.copy(tok.model_file, tmp_path / "tok.model")
    save_checkpoint(str(tmp_path / "sft.pt"), tiny_model(tok.vocab_size), "sft",
                    args={"base_args": {"world_people": 12, "world_seed": 7}})
    return tmp_path


FAST = ["--max-new-tokens", "8", "--spot-prompts", "8", "--eval-prompts", "8", "--exam-items", "4",
        "--prompts-per-step", "2", "--samples", "2", "--rm-batch-size", "8", "--log-interval", "1"]
# the people of hand-written comparisons
NAMES = ("Anna", "Tom", "Lena", "Paul", "Maria", "Jack", "Nora", "Sam", "Clara", "Ben", "Emma", "Leo")


def test_bradley_terry_loss_and_accuracy_on_a_toy():
    d = torch.tensor([0.0, 1.0, -2.0])
    loss = rlhf.bradley_terry_loss(d, torch.zeros(3))
    assert loss.item() == pytest.approx(-torch.log(torch.sigmoid(d)).mean().item())
    assert rlhf.bradley_terry_loss(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(0.6931, abs=1e-4)
    # a tie is a target of 1/2: its loss is smallest when the two scores are equal
    tie = torch.tensor([True])
    assert (rlhf.bradley_terry_loss(torch.zeros(1), torch.zeros(1), tie)
            < rlhf.bradley_terry_loss(torch.ones(1), torch.zeros(1), tie))
    assert rlhf.pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 0.0])) == 0.625
    # a linear reward learns the hidden preference from noisy Bradley-Terry labels
    g = torch.Generator().manual_seed(0)
    w_true = torch.tensor([2.0, -1.0, 0.5])
    a, b = torch.randn(2000, 3, generator=g), torch.randn(2000, 3, generator=g)
    a_wins = torch.rand(2000, generator=g) < torch.sigmoid(a @ w_true - b @ w_true)
    chosen, rejected = torch.where(a_wins[:, None], a, b), torch.where(a_wins[:, None], b, a)
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(300):
        loss = rlhf.bradley_terry_loss(chosen[:1500] @ w, rejected[:1500] @ w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = rlhf.pairwise_accuracy(chosen[1500:] @ w, rejected[1500:] @ w)
    ceiling = rlhf.pairwise_accuracy(chosen[1500:] @ w_true, rejected[1500:] @ w_true)  # the labels are noisy
    assert acc > 0.7 and abs(acc - ceiling) < 0.03
    assert torch.cosine_similarity(w.detach(), w_true, dim=0) > 0.98


def test_a_prompts_comparisons_are_one_batch_element_and_each_answer_is_scored_once():
    x, y, z, u, v = [5, 6], [7], [8, 9, 10], [11], [12, 13]
    pairs = [([1, 2], x, y, False), ([3], u, v, True), ([1, 2], y, z, False), ([1, 2], x, z, False)]
    groups = rlhf.group_by_prompt(pairs)
    assert groups == [([1, 2], [x, y, z], [(0, 1, False), (1, 2, False), (0, 2, False)]),
                      ([3], [u, v], [(0, 1, True)])]
    rm = rlhf.reward_model_from(tiny_model(vocab=20), likelihood=1.0)
    torch.nn.init.normal_(rm.reward.weight, std=1.0)  # nonzero scores
    rows = []
    score = rm.score
    rm.score = lambda tokens, lengths, targets: rows.append(len(lengths)) or score(tokens, lengths, targets)
    loss = rlhf.group_loss(rm, groups)
    assert rows == [5]  # five answers, not 2 x 4 pair halves
    # InstructGPT's weighting: the mean over prompts of the mean over each prompt's pairs
    rc, rr = rlhf.pair_scores(rm, pairs)
    per_pair = [rlhf.bradley_terry_loss(rc[i:i + 1], rr[i:i + 1], torch.tensor([t])) for i, (*_, t) in enumerate(pairs)]
    expected = ((per_pair[0] + per_pair[2] + per_pair[3]) / 3 + per_pair[1]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_likelihood_score_is_the_mean_log_prob_of_the_answer_tokens_alone():
    model = tiny_model(vocab=20)
    prompts, answers = [[1, 2, 3], [4]], [[5, 6], [7, 8, 9, 10]]
    got = rlhf.score_answers(model, prompts, answers, likelihood=True)
    for (p, a), g in zip(zip(prompts, answers), got):  # one row at a time: no padding, no other row
        logp = torch.log_softmax(model(torch.tensor([p + a]))[0], -1)
        expected = sum(logp[len(p) - 1 + i, t] for i, t in enumerate(a)) / len(a)
        assert g.item() == pytest.approx(expected.item(), abs=1e-5)


def test_rm_score_adds_the_weighted_likelihood_of_the_answer_to_the_head():
    policy = tiny_model(vocab=20)
    prompts, answers = [[1, 2, 3], [4]], [[5, 6], [7, 8, 9, 10, 11, 12]]  # 5 and 7 tokens: the first is padded
    head_only = rlhf.reward_model_from(policy)
    torch.nn.init.normal_(head_only.reward.weight, std=1.0)
    anchored = rlhf.reward_model_from(policy, likelihood=0.5)
    anchored.load_state_dict(head_only.state_dict())
    likelihood = rlhf.score_answers(policy, prompts, answers, likelihood=True)
    got = rlhf.score_answers(anchored, prompts, answers)
    expected = rlhf.score_answers(head_only, prompts, answers) + 0.5 * likelihood
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got, 0.5 * likelihood, atol=1e-3)
    one_by_one = torch.cat([rlhf.score_answers(anchored, [p], [a]) for p, a in zip(prompts, answers)])
    assert torch.allclose(got, one_by_one, atol=1e-5)  # the head reads each row's last token, not the padding
    x, _, lengths = rlhf.pad_batch(prompts, answers, "cpu")
    with pytest.raises(TypeError, match="targets"):
        anchored.score(x, lengths)


def test_the_reward_normalisation_scores_each_answer_once_in_the_order_of_the_records(tok, monkeypatch):
    # a set's order follows string hashes, seeded anew in every Python process: the padded batches, the floats of
    # the normalisation and so the whole RL run would differ from one run of the same command to the next
    records = [{"prompt": f"Where does Person {i % 3} live?", "chosen": f"In town {i}.",
                "rejected": f"In town {i + 1}.", "chosen_ended": True, "rejected_ended": i % 2 == 0} for i in range(8)]
    records.append(dict(records[0]))  # a repeated pair adds no answer
    expected, scored = [], []
    for r in records:
        for k in ("chosen", "rejected"):
            a = (rlhf.prompt_ids(tok, r["prompt"]), rlhf.answer_ids(tok, r[k], r[f"{k}_ended"]))
            if a not in expected:
                expected.append(a)

    def fake_scores(model, prompts, answers, **kwargs):
        scored.extend(zip(prompts, answers))
        return torch.arange(len(answers), dtype=torch.float)

    monkeypatch.setattr(rlhf, "score_answers", fake_scores)
    mean, std = rlhf.reward_normalisation(None, tok, records)
    assert scored == expected and len(expected) == 16
    assert (mean, std) == pytest.approx((7.5, torch.arange(16.0).std().item()))


def test_accuracy_by_kind_splits_pairs_by_correctness():
    rec = lambda c, r, agreement: {"correct_chosen": c, "correct_rejected": r, "agreement": agreement}
    records = [rec(True, False, 1.0), rec(False, True, 0.9), rec(True, True, 0.6), rec(False, False, 0.8),
               rec(False, False, 0.7)]
    by_kind = rlhf.accuracy_by_kind(records, torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0]),
                                    torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0]))
    assert by_kind == {"one right, one wrong": {"pairs": 2, "accuracy": 0.5, "labeler_ceiling": 0.95},
                       "both wrong": {"pairs": 2, "accuracy": 0.5, "labeler_ceiling": 0.75},
                       "both right": {"pairs": 1, "accuracy": 0.5, "labeler_ceiling": 0.6}}


def test_prompt_and_answer_ids_are_the_chat_template_of_one_turn(tok):
    """The RM and the policy score an answer as SFT saw it: prompt_ids + answer_ids is render_chat's turn."""
    question, answer = "Where does Anna live?", "Anna lives in Dunmore."
    turn = render_chat(tok, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}])[0]
    assert rlhf.prompt_ids(tok, question) + rlhf.answer_ids(tok, answer, ended=True) == turn
    assert rlhf.answer_ids(tok, answer, ended=False) == turn[len(rlhf.prompt_ids(tok, question)):-1]
    rows = [{"prompt": question, "chosen": answer, "rejected": "No.", "chosen_ended": True, "rejected_ended": False,
             "tie": tie} for tie in (True, False)]
    (p, c, j, tie), (*_, no_tie) = rlhf.encode_pairs(tok, rows, 96, "pairs.jsonl")
    assert p + c == turn and j == rlhf.answer_ids(tok, "No.", ended=False) and tie is True and no_tie is False
    assert len(rlhf.encode_pairs(tok, rows, len(turn), "p")) == 2  # exactly the context: accepted
    with pytest.raises(ValueError, match="longer than the model's"):
        rlhf.encode_pairs(tok, rows, len(turn) - 1, "p")


def test_logprobs_only_on_answer_tokens():
    model = tiny_model(50)
    prompts, answers = [[1, 5, 6, 7], [1, 8]], [[9, 10, 2], [11]]
    x, y, lengths = rlhf.pad_batch(prompts, answers, "cpu")
    assert x.shape == (2, 7) and lengths.tolist() == [7, 3]
    assert [t for t in y[0].tolist() if t != -1] == answers[0] and [t for t in y[1].tolist() if t != -1] == answers[1]
    lp = token_logprobs(model(x), y)
    assert (lp[y == -1] == 0).all() and (lp[y != -1] < 0).all()
    # each answer's log-prob equals the one computed on it alone, without padding
    for p, a, row in zip(prompts, answers, lp):
        seq = torch.tensor([p + a])
        alone = torch.log_softmax(model(seq)[0, len(p) - 1:-1], -1).gather(-1, torch.tensor(a)[:, None]).sum()
        assert row.sum().item() == pytest.approx(alone.item(), abs=1e-4)


def test_kl_is_zero_when_policy_equals_reference():
    model, other = tiny_model(50), tiny_model(50, seed=1)
    x, y, _ = rlhf.pad_batch([[1, 5, 6]] * 3, [[7, 8], [9], [10, 11, 12]], "cpu")
    mask = (y != -1).float()
    logits = model(x)
    assert torch.allclose(rlhf.kl_exact(logits, logits.clone(), mask), torch.zeros(3), atol=1e-6)
    assert (rlhf.kl_exact(logits, other(x), mask) > 0).all()
    # the sampled estimate is exactly 0 too, and the leave-one-out advantages of equal rewards vanish
    assert (token_logprobs(logits, y) - token_logprobs(logits, y)).abs().sum() == 0
    assert torch.allclose(rlhf.leave_one_out(torch.tensor([1.0, 1.0, 3.0, 1.0]), 2), torch.tensor([0.0, 0.0, 2.0, -2.0]))


def test_policy_gradient_raises_a_toy_reward():
    """Reward = how many of the 6 sampled tokens are even: REINFORCE with the leave-one-out baseline must raise it."""
    torch.manual_seed(0)
    policy = Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=16, max_seq_len=16))
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    prompt, k = torch.tensor([[1, 2]] * 32), 4  # 8 prompts x 4 samples
    means = []
    for _ in range(25):
        answers = generate(policy, prompt, 6, temperature=1.0, generator=gen)
        reward = torch.tensor([sum(t % 2 == 0 for t in a) for a in answers], dtype=torch.float)
        x, y, _ = rlhf.pad_batch(prompt.tolist(), answers, "cpu")
        logp = token_logprobs(policy(x), y)
        loss = rlhf.policy_loss(logp, logp.detach(), rlhf.leave_one_out(reward, k), (y != -1).float(), 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        means.append(reward.mean().item())
    assert sum(means[-5:]) / 5 > sum(means[:5]) / 5 + 1.0


def test_kl_exact_is_policy_to_reference_and_entropy_per_answer_token():
    # position 0 is an answer token; position 1 (mask 0: prompt or padding), where the two differ most, counts nothing
    policy = torch.log(torch.tensor([[[0.9, 0.1], [0.99, 0.01]]]))
    ref = torch.log(torch.tensor([[[0.5, 0.5], [0.01, 0.99]]]))
    mask = torch.tensor([[1.0, 0.0]])
    want = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # KL(ref || policy) would be 0.511
    assert rlhf.kl_exact(policy, ref, mask).item() == pytest.approx(want, rel=1e-4)
    assert rlhf.entropy_per_token(ref, mask) == pytest.approx(math.log(2), rel=1e-5)


def test_ppo_clip_stops_a_token_whose_ratio_left_the_trust_region():
    """On the first update (ratio 1) the surrogate's gradient is REINFORCE's, -A per token log-prob; on a later
    one a token whose ratio is already past 1 + eps (advantage > 0) or below 1 - eps (advantage < 0) gets none."""
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    mask, A = torch.ones(2, 3), torch.tensor([2.0, -1.0])
    logp = old.clone().requires_grad_(True)
    rlhf.policy_loss(logp, old, A, mask, 0.2).backward()
    assert torch.allclose(logp.grad, -A[:, None].expand(2, 3) / 2)  # the mean over the 2 answers
    # A > 0: ratio 1.5 is past 1.2 (clipped), 1.1 inside, 0.5 not clipped (the min keeps the smaller, unclipped
    # term: a bad move is always undone); A < 0 mirrored: 0.5 below 0.8 (clipped), 0.9 inside, 1.5 not clipped
    ratios = torch.tensor([[1.5, 1.1, 0.5], [0.5, 0.9, 1.5]])
    logp = (old + ratios.log()).requires_grad_(True)
    rlhf.policy_loss(logp, old, A, mask, 0.2).backward()
    expected = -A[:, None] * ratios / 2 * torch.tensor([[0.0, 1, 1], [0, 1, 1]])
    assert torch.allclose(logp.grad, expected)
    mask[0, 1] = 0  # a masked token (prompt, padding) gets no gradient whatever its ratio
    logp.grad = None
    rlhf.policy_loss(logp, old, A, mask, 0.2).backward()
    assert logp.grad[0, 1] == 0


def test_over_optimisation_finds_the_gold_peak_and_names_what_the_policy_piled_on():
    base = dict(kl=0.0, correct=1.0, repeats=0.0, fillers=0.0, chars=60.0, tokens=15.0, ended=1.0, distinct=1.0)
    rows = [dict(base, step=s + 1, proxy=0.1 * s, gold=2.5 - 0.1 * max(0, s - 20), polite=1.0 + 0.1 * max(0, s - 20))
            for s in range(60)]  # gold flat to step 21, then falls as polite phrases pile up; the proxy always rises
    o = rlhf.over_optimisation(rows)
    assert rows[o["peak"]]["step"] <= 21 and o["hacked"] and o["proxy_rising"]
    assert o["exploited"] == ["polite phrases per answer"] and o["drop"] == pytest.approx((2.5 + 1.25) / 2.5)  # to the mean of the last 4
    calm = [dict(r, proxy=1.0, gold=2.5, polite=1.0) for r in rows]  # nothing moves: nothing to call hacking
    assert not rlhf.over_optimisation(calm)["hacked"] and rlhf.over_optimisation(calm)["exploited"] == []
    assert not rlhf.over_optimisation(calm)["proxy_rising"]  # a flat proxy is not rising
    better = [dict(r, gold=2.5, polite=1.0) for r in rows]  # the proxy rises, no gold is lost: not hacking
    assert not rlhf.over_optimisation(better)["hacked"]
    two = [dict(r, repeats=0.02 * max(0, r["step"] - 21)) for r in rows]  # polite phrases cost more than repeats
    assert rlhf.over_optimisation(two)["exploited"] == ["polite phrases per answer", "repeated sentences per answer"]
    wrong = [dict(r, polite=1.0, correct=1.0 - 0.02 * max(0, r["step"] - 21)) for r in rows]  # answers turn wrong
    o = rlhf.over_optimisation(wrong)
    assert o["hacked"] and "wrong answers" in o["exploited"] and o["costs"]["wrong answers"] > 0


def test_the_spot_check_is_the_policys_win_rate_with_each_answers_own_ending(tiny_world, monkeypatch):
    items = world_lib.rl_prompts(tiny_world, "heldout")[:40]
    right = [world_lib.CANONICAL[it["attribute"]].format(name=it["subject"], value=it["answer"]) for it in items]
    model = tiny_model(vocab=20)

    def spot(policy_texts, policy_ended, sft_texts, sft_ended):
        monkeypatch.setattr(rlhf.common, "chat_answers", lambda *a, **k: [([], t, policy_ended) for t in policy_texts])
        return rlhf.spot_check(model, None, items, [([], t, sft_ended) for t in sft_texts], 8, 0)

    assert spot(right, True, ["I do not know."] * len(items), True) > 0.9  # the policy's wins, not SFT's
    assert spot(right, False, right, True) < 0.2  # the same answers, the policy's cut off


def test_gold_drop_is_a_fraction_of_the_peak_and_not_of_a_peak_near_zero():
    assert rlhf.gold_drop(2.0, 1.5) == 0.25 and rlhf.gold_drop(2.0, 2.5) == -0.25
    assert rlhf.gold_drop(-0.02, -0.05) == pytest.approx(0.03)  # not a 150% fall


def test_an_answer_that_re_encodes_past_the_context_is_left_out_or_cut(tok, tiny_world, monkeypatch):
    """A sampled chat marker decodes to text that re-encodes to several tokens: with --max-new-tokens near the
    context, an answer that fit as sampled may not fit as the RM reads it."""
    items = world_lib.rl_prompts(tiny_world, "train")[:2]
    long = "<|user|>" * 20  # 20 sampled tokens, many more spelled out
    assert not rlhf.fits(tok, items[0]["question"], long, True, 96)
    monkeypatch.setattr(rlhf, "sample_answers", lambda model, tok, items, k, n, gen: [
        ([5] * 20, text, True) for _ in items for text in ("It is a bakery.", "A cook.", long)][:len(items) * k])
    logs = []
    records = rlhf.simulated_comparisons(tiny_model(tok.vocab_size), tok, items, 10, 3, 20, 0,
                                          lambda line, **kw: logs.append(line))
    assert len(records) == 2 and all(long not in (r["chosen"], r["rejected"]) for r in records)
    assert "4 pairs left out" in logs[-1]
    policy = tiny_model(tok.vocab_size)
    rm = rlhf.reward_model_from(policy, 1.0)
    batch = rlhf.rollout_batch(policy, policy, rm, tok, items[:1], 3, 20, None, (0.0, 1.0))  # no error
    assert batch["proxy"].shape == (3,) and torch.isfinite(batch["proxy"]).all()


def test_terminal_labeling_saves_exactly_what_was_chosen(tmp_path, monkeypatch):
    pairs = [("Q1?", "a1", "b1", True, True), ("Q2?", "a2", "b2", True, False), ("Q3?", "a3", "b3", True, True),
             ("Q4?", "a4", "b4", False, True), ("Q5?", "a5", "b5", True, True)]
    monkeypatch.setattr("sys.stdin", io.StringIO("1\nnonsense\n2\ns\nt\nq\n"))
    path = tmp_path / "comparisons.jsonl"
    saved, quit_ = rlhf.label_at_terminal(pairs, str(path), 5, show=lambda *a: None)
    assert (saved, quit_) == (3, True)
    rows = [json.loads(line) for line in open(path)]
    assert [(r["prompt"], r["chosen"], r["rejected"], r["tie"]) for r in rows] == [
        ("Q1?", "a1", "b1", False), ("Q2?", "b2", "a2", False), ("Q4?", "a4", "b4", True)]
    assert rows[1]["chosen_ended"] is False and rows[1]["rejected_ended"] is True
    assert rlhf.read_comparisons(str(path))[2]["tie"] is True  # what it saves, it reads back
    monkeypatch.setattr("sys.stdin", io.StringIO("1\n1\n1\n"))
    assert rlhf.label_at_terminal(pairs, str(path), 2, show=lambda *a: None) == (2, False)  # stops at its goal
    assert len(open(path).readlines()) == 5
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # edited by hand, saved without its last newline
    monkeypatch.setattr("sys.stdin", io.StringIO("2\n"))
    rlhf.label_at_terminal(pairs, str(path), 1, show=lambda *a: None)
    assert len(rlhf.read_comparisons(str(path))) == 6  # not glued onto the last line


def test_label_mode_quits_and_a_later_run_continues(out_dir, monkeypatch, capsys):
    args = ["--out-dir", str(out_dir), "--label", "--n-comparisons", "6", *FAST]
    monkeypatch.setattr("sys.stdin", io.StringIO("q\n"))  # quit before the first answer: no file to trip on
    rlhf.main(args)
    assert not os.path.exists(out_dir / "comparisons.jsonl")
    monkeypatch.setattr("sys.stdin", io.StringIO("1\n2\nq\n"))
    rlhf.main(args)
    first = open(out_dir / "comparisons.jsonl").read().splitlines()
    out = capsys.readouterr().out
    assert len(first) == 2 and f"run `python rlhf.py {' '.join(args)}` again" in out  # the dir and budget too
    assert f"train on them now: `python rlhf.py --out-dir {out_dir} --comparisons {out_dir}/comparisons.jsonl`" in out
    shown = re.findall(r"\n  1: (.*)\n  2: (.*)\n", out)
    assert shown and all(a != b for a, b in shown)  # never the same answer twice
    monkeypatch.setattr("sys.stdin", io.StringIO("t\n"))  # then end of input: quits, keeping what was said
    rlhf.main(args)
    second = open(out_dir / "comparisons.jsonl").read().splitlines()
    assert second[:2] == first and len(second) == 3 and json.loads(second[2])["tie"] is True
    assert "4 to go" in capsys.readouterr().out
    assert not os.path.exists(out_dir / "rm.pt")


def test_label_mode_removes_the_simulated_comparisons_and_keeps_the_others(out_dir, monkeypatch, capsys):
    simulated = {"prompt": "Q?", "chosen": "a", "rejected": "b", "labeler": "simulated"}
    yours = {"prompt": "Q2?", "chosen": "c", "rejected": "d"}  # a file of your own, put there by hand
    (out_dir / "comparisons.jsonl").write_text(json.dumps(simulated) + "\n" + json.dumps(yours) + "\n")
    (out_dir / "rlhf.pt").write_bytes(b"an earlier run's")  # quitting before RL saves over nothing: no note
    monkeypatch.setattr("sys.stdin", io.StringIO("q\n"))
    rlhf.main(["--out-dir", str(out_dir), "--label", "--n-comparisons", "6", *FAST])
    out = capsys.readouterr().out
    assert "held 1 comparisons by the simulated labeler or copied from a --comparisons file: removed" in out
    assert "note: a fresh run" not in out
    assert [{k: r[k] for k in yours} for r in map(json.loads, open(out_dir / "comparisons.jsonl"))] == [yours]
    with pytest.raises(SystemExit) as e:  # nor does a run of the simulated labeler save over it
        rlhf.main(["--out-dir", str(out_dir), "--n-comparisons", "6", *FAST])
    assert "the simulated labeler did not make" in str(e.value.code)
    assert [{k: r[k] for k in yours} for r in map(json.loads, open(out_dir / "comparisons.jsonl"))] == [yours]


def test_label_mode_skipping_every_pair_saves_nothing_and_says_so(out_dir, monkeypatch, capsys):
    pairs = [("Q1?", "a1", "b1", True, True), ("Q2?", "a2", "b2", True, True)]
    monkeypatch.setattr(rlhf, "terminal_pairs", lambda *a: iter(pairs))  # the session runs out of pairs: no quit
    monkeypatch.setattr("sys.stdin", io.StringIO("s\ns\n"))
    rlhf.main(["--out-dir", str(out_dir), "--label", "--n-comparisons", "2", *FAST])
    assert "saved 0 comparisons" in capsys.readouterr().out
    assert not os.path.exists(out_dir / "comparisons.jsonl")


def test_label_mode_removes_copies_of_a_file_and_a_resumed_label_run_does_not_ask_again(out_dir, monkeypatch):
    rows = [{"prompt": f"What is {n}'s job?", "chosen": f"{n} works as a baker.", "rejected": "I do not know."}
            for n in NAMES]
    cmp = out_dir / "comparisons.jsonl"
    cmp.write_text("".join(json.dumps({**r, "labeler": "file"}) + "\n" for r in rows))  # a --comparisons run's copy
    monkeypatch.setattr("sys.stdin", io.StringIO("q\n"))
    rlhf.main(["--out-dir", str(out_dir), "--label", *FAST])
    assert not cmp.exists()  # the person's labels are not mixed with a file's
    cmp.write_text("".join(json.dumps({**r, "labeler": "human"}) + "\n" for r in rows))
    monkeypatch.setattr(rlhf, "terminal_pairs", lambda *a: iter([]))  # a session that runs out of pairs: RM, RL
    run = ["--out-dir", str(out_dir), "--label", "--n-comparisons", "20", "--rm-heldout", "0.3", "--steps", "2",
           "--eval-interval", "100", *FAST]
    rlhf.main(run)
    monkeypatch.setattr(rlhf, "label_at_terminal", lambda *a: pytest.fail("a resumed run asked for labels"))
    rlhf.main(["--out-dir", str(out_dir), "--resume", "--steps", "3"])
    assert [json.loads(line)["step"] for line in open(out_dir / "rl_curve.jsonl")] == [1, 2, 3]


def test_a_tagged_run_with_its_own_rm_leaves_a_persons_comparisons_alone(out_dir):
    """A tagged run whose RM settings differ writes comparisons_TAG.jsonl: OUT_DIR's comparisons.jsonl, a
    person's, is neither in its way nor touched."""
    cmp = out_dir / "comparisons.jsonl"
    cmp.write_text(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b", "labeler": "human"}) + "\n")
    before = cmp.read_bytes()
    rlhf.main(["--out-dir", str(out_dir), "--n-comparisons", "60", "--rm-heldout", "0.5", "--rm-lr", "1e-3",
               "--tag", "x", "--steps", "1", "--eval-interval", "100", *FAST])
    assert cmp.read_bytes() == before and (out_dir / "comparisons_x.jsonl").exists() and (out_dir / "rm_x.pt").exists()


def test_an_unreadable_comparisons_file_is_not_saved_over(out_dir):
    cmp = out_dir / "comparisons.jsonl"
    cmp.write_text(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"}) + "\n" + '{"prompt": "Q2?", "cho')
    before = cmp.read_bytes()
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(out_dir), "--n-comparisons", "6", *FAST])
    assert "the simulated labeler did not make" in str(e.value.code) and cmp.read_bytes() == before


def test_a_failed_comparisons_run_keeps_the_old_file(out_dir):
    old = out_dir / "comparisons.jsonl"
    old.write_text(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"}) + "\n")
    before = old.read_bytes()
    one = out_dir / "one.jsonl"
    one.write_text(json.dumps({"prompt": "Where does Anna live?", "chosen": "Dunmore.", "rejected": "Cat."}) + "\n")
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(out_dir), "--comparisons", str(one), *FAST])
    assert "too few" in str(e.value.code) and old.read_bytes() == before


@pytest.mark.parametrize("line, why", [
    ('{"prompt": "Q?", "chosen": "a"', "bad JSON"),
    ('["Q?", "a", "b"]', "expected an object"),
    ('{"prompt": "Q?", "chosen": "a"}', '"rejected" must be a string'),
    ('{"prompt": "", "chosen": "a", "rejected": "b"}', "empty \"prompt\""),
    ('{"prompt": "Q?", "chosen": "a", "rejected": "b", "tie": "yes"}', '"tie" must be true or false'),
    ('{"prompt": "Q?", "chosen": "' + "word " * 300 + '", "rejected": "b"}', "longer than the model's"),
])
def test_malformed_comparison_files_are_reported_by_line(out_dir, line, why):
    good = json.dumps({"prompt": "Where does Anna live?", "chosen": "Anna lives in Dunmore.", "rejected": "Cat."})
    path = out_dir / "pairs.jsonl"
    path.write_text(good + "\n\n" + line + "\n" + good + "\n")
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(out_dir), "--comparisons", str(path), *FAST])
    assert "pairs.jsonl:3: " in str(e.value) and why in str(e.value)
    assert not os.path.exists(out_dir / "rm.pt") and not os.path.exists(out_dir / "comparisons.jsonl")


@pytest.mark.parametrize("flags, saved", [(["--rm-lr", "1e30", "--rm-epochs", "8"], ()),
                                          (["--lr", "1e30", "--steps", "6"], ("rm.pt", "rlhf.pt", "rlhf_last.pt"))])
def test_a_diverged_run_stops_before_writing_nan_weights(out_dir, flags, saved):
    rows = [{"prompt": f"What is {n}'s job?", "chosen": f"{n} works as a baker.", "rejected": "I do not know."}
            for n in ("Anna", "Tom", "Lena", "Paul", "Maria", "Jack")]
    path = out_dir / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(out_dir), "--comparisons", str(path), "--eval-interval", "100", *FAST, *flags])
    assert "training diverged" in str(e.value.code)
    written = {n for n in ("rm.pt", "rlhf.pt", "rlhf_last.pt") if os.path.exists(out_dir / n)}
    assert written == set(saved)  # rlhf.pt and rlhf_last.pt: the step-0 policy, the SFT model's copy
    for name in written - {"rm.pt"}:
        ckpt = torch.load(out_dir / name, weights_only=True)
        assert ckpt["step"] == 0 and all(torch.isfinite(w).all() for w in ckpt["model"].values())


def test_rl_log_probs_are_the_sampling_policys_even_with_dropout(out_dir, tok):
    """An SFT model trained with --dropout: at step 1 the policy is the SFT model, so both KLs must be 0 (with
    dropout left on in the update they were not: the log-probs were those of a dropped-out network)."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tok.vocab_size, max_seq_len=96,
                                  dropout=0.3))
    save_checkpoint(str(out_dir / "sft.pt"), model, "sft", args={"base_args": {"world_people": 12, "world_seed": 7}})
    rows = [{"prompt": f"What is {n}'s job?", "chosen": f"{n} works as a baker.", "rejected": "I do not know."}
            for n in ("Anna", "Tom", "Lena", "Paul", "Maria", "Jack")]
    path = out_dir / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rlhf.main(["--out-dir", str(out_dir), "--comparisons", str(path), "--steps", "1", "--rm-heldout", "0.5", *FAST])
    first = json.loads(open(out_dir / "rl_curve.jsonl").readline())
    assert abs(first["kl"]) < 1e-4 and abs(first["kl_sampled"]) < 1e-4, first


def test_torchrun_is_refused_before_any_work(out_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(out_dir), *FAST])
    assert "runs as one process" in str(e.value.code)
    assert sorted(os.listdir(out_dir)) == ["sft.pt", "tok.model"]  # nothing written


def test_a_tiny_run_writes_everything_and_a_second_run_reuses_the_reward_model(out_dir, capsys):
    rows = [{"prompt": f"What is {n}'s job?", "chosen": f"{n} works as a baker.", "rejected": "I do not know."}
            for n in NAMES]
    rows.append({"prompt": "What is Ada's job?", "chosen": "Ada bakes.", "rejected": "Ada bakes."})  # teaches nothing
    path = out_dir / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = ["--out-dir", str(out_dir), "--comparisons", str(path), "--steps", "4", "--eval-interval", "2",
           "--rm-heldout", "0.3", *FAST]
    rlhf.main(run)
    out = capsys.readouterr().out
    assert "1 comparisons of" in out and "hold the same answer twice: left out" in out
    assert re.search(r"\| QA \d+\.\d% -> \d+\.\d% \|", out) and "note: a fresh run" not in out
    for name in ("comparisons.jsonl", "rm.pt", "rlhf.pt", "rlhf_last.pt", "rl_curve.jsonl", "rl_curve.svg"):
        assert os.path.exists(out_dir / name), name
    report = json.load(open(out_dir / "report.json"))
    assert {"accuracy", "labeler_ceiling", "wall_s"} <= set(report["rm"])
    rm = report["rm"]  # every comparison is either trained on or held out, never both
    assert rm["heldout_pairs"] > 0 and rm["train_pairs"] + rm["heldout_pairs"] == rm["comparisons"] == 12
    assert {"gold_winrate_vs_sft", "kl", "qa_after", "wall_s"} <= set(report["rlhf"])
    assert 0 <= report["rlhf"]["gold_winrate_vs_sft"] <= 1 and report["rlhf"]["kl"] >= 0
    curve = [json.loads(line) for line in open(out_dir / "rl_curve.jsonl")]
    assert [r["step"] for r in curve] == [1, 2, 3, 4] and "spot" in curve[1]
    assert open(out_dir / "rl_curve.svg").read().count("<polyline") == 2
    rlhf.main(run + ["--resume", "--steps", "6"])  # continues from rlhf_last.pt at step 4
    curve = [json.loads(line) for line in open(out_dir / "rl_curve.jsonl")]
    assert [r["step"] for r in curve] == [1, 2, 3, 4, 5, 6]
    capsys.readouterr()
    rlhf.main(run + ["--tag", "nokl", "--kl-coef", "0"])
    assert "reusing" in capsys.readouterr().out
    assert os.path.exists(out_dir / "rlhf_nokl.pt") and os.path.exists(out_dir / "rl_curve_nokl.svg")
    report = json.load(open(out_dir / "report.json"))
    assert "rlhf_nokl" in report and "rlhf" in report
    assert open(out_dir / "report.md").read().count("## Reward model") == 1
    # a tagged run with another RM keeps its own (rm_head.pt, report section rm_head), and rm.pt stays as it was
    main_rm, main_section = (out_dir / "rm.pt").read_bytes(), report["rm"]
    head = run + ["--tag", "head", "--rm-likelihood", "0", "--steps", "2"]
    rlhf.main(head)
    assert (out_dir / "rm.pt").read_bytes() == main_rm and os.path.exists(out_dir / "rm_head.pt")
    report = json.load(open(out_dir / "report.json"))
    assert report["rm"] == main_section and "rm_head" in report
    assert open(out_dir / "report.md").read().count("## Reward model") == 2
    sections = re.findall(r"<!-- stage: (\S+) -->", open(out_dir / "report.md").read())
    assert sections == ["rm", "rlhf", "rm_head", "rlhf_head", "rlhf_nokl"]  # a tagged run's RM, then its RL
    assert os.path.exists(out_dir / "comparisons_head.jsonl")  # its own, beside its own RM
    assert len(open(out_dir / "comparisons.jsonl").readlines()) == 12  # the main run's, without the useless pair
    capsys.readouterr()
    rlhf.main(head)
    out = capsys.readouterr().out
    assert f"reusing {out_dir / 'rm_head.pt'}" in out
    assert f"note: a fresh run: it saves over {out_dir / 'rlhf_head.pt'} and {out_dir / 'rlhf_head_last.pt'}" in out
    # the same RM whether or not another rm.pt was there to be read first (building it draws random weights)
    first = torch.load(out_dir / "rm_head.pt", weights_only=True)["model"]
    os.remove(out_dir / "rm.pt")
    rlhf.main(head + ["--retrain-rm"])
    again = torch.load(out_dir / "rm_head.pt", weights_only=True)["model"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    # --resume alone continues with the stopped run's flags: its own RM (rm_head.pt), its curve
    capsys.readouterr()
    rlhf.main(["--out-dir", str(out_dir), "--tag", "head", "--resume", "--steps", "4"])
    assert f"reusing {out_dir / 'rm_head.pt'}" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in open(out_dir / "rl_curve_head.jsonl")] == [1, 2, 3, 4]
    # a copy of the run resumes from its own sft.pt, not the one the original's path names
    copy = out_dir.parent / f"{out_dir.name}_copy"
    shutil.copytree(out_dir, copy)
    rlhf.main(["--out-dir", str(copy), "--tag", "head", "--resume", "--steps", "5"])
    assert f"from {copy / 'sft.pt'}" in capsys.readouterr().out
    # ... and refuses an sft.pt that changed since: the run's RM, KL reference and spot checks came from the old one
    save_checkpoint(str(copy / "sft.pt"), tiny_model(seed=1), "sft",
                    args={"base_args": {"world_people": 12, "world_seed": 7}})
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(copy), "--tag", "head", "--resume", "--steps", "6"])
    assert "not the SFT model this run started from" in str(e.value.code)


def pair_rows(names=NAMES, **extra):
    """JSONL lines of hand-written comparisons, one per person: a baker's answer chosen over "I do not know."."""
    return "".join(json.dumps({"prompt": f"What is {n}'s job?", "chosen": f"{n} works as a baker.",
                               "rejected": "I do not know.", **extra}) + "\n" for n in names)


def job_pairs(out_dir):
    path = out_dir / "pairs.jsonl"
    path.write_text(pair_rows())
    return ["--out-dir", str(out_dir), "--comparisons", str(path), "--rm-heldout", "0.3", "--eval-interval", "100",
            *FAST]


def test_the_rl_reward_is_the_rm_score_minus_beta_times_the_sampled_kl(out_dir, monkeypatch):
    seen, real = [], rlhf.leave_one_out
    monkeypatch.setattr(rlhf, "leave_one_out", lambda r, k: seen.append(r.mean().item()) or real(r, k))
    rlhf.main(job_pairs(out_dir) + ["--steps", "3", "--kl-coef", "1.0", "--lr", "1e-1"])  # a large lr: KL far from 0
    rows = [json.loads(line) for line in open(out_dir / "rl_curve.jsonl")]
    assert len(seen) == 3 and all(abs(r["kl_sampled"]) > 0.05 for r in rows[1:])  # (0.19 and 0.18 when written)
    assert all(r["kl_sampled"] > 0 and r["kl"] > 0 for r in rows[1:])  # log pi - log pi_ref, not the other way
    for r, got in zip(rows, seen):
        assert got == pytest.approx(r["proxy"] - 1.0 * r["kl_sampled"], abs=2e-3)


def test_ties_are_trained_on_but_never_scored(out_dir, monkeypatch):
    """A tie (a label's or the gold scores') has no right order: it is not a held-out pair, and an RM that always
    prefers the chosen answer is right on every pair the gold orders."""
    rows = [{"prompt": f"What is {n}'s job?", "chosen": f"{n} works as a baker.", "rejected": "I do not know.",
             "gold_chosen": 2.5, "gold_rejected": -1.0} for n in NAMES]
    rows += [{"prompt": f"What is {n}'s pet?", "chosen": f"{n} has a cat.", "rejected": f"{n} has a pet cat.",
              "gold_chosen": 2.5, "gold_rejected": 2.5} for n in NAMES]
    rows += [{"prompt": f"Where does {n} live?", "chosen": f"{n} lives here.", "rejected": "No idea.", "tie": True}
             for n in NAMES]
    held = [rlhf.is_heldout(r["prompt"], 0.3) for r in rows]
    assert any(h and r.get("tie") for h, r in zip(held, rows))
    (out_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(rlhf, "pair_scores", lambda model, pairs, likelihood=False: (torch.ones(len(pairs)),
                                                                                     torch.zeros(len(pairs))))
    rlhf.main(["--out-dir", str(out_dir), "--comparisons", str(out_dir / "pairs.jsonl"), "--rm-heldout", "0.3",
               "--steps", "1", *FAST])
    rm = json.load(open(out_dir / "report.json"))["rm"]
    assert rm["heldout_pairs"] == sum(h and not r.get("tie") for h, r in zip(held, rows))
    assert rm["accuracy_vs_gold"] == 1.0


def test_the_exam_scores_the_kept_policy_and_sft_on_prompts_the_spot_check_never_saw(out_dir, tiny_world, monkeypatch):
    items = {it["question"]: it for it in world_lib.rl_prompts(tiny_world, "heldout")}
    canonical = lambda q: world_lib.CANONICAL[items[q]["attribute"]].format(  # noqa: E731
        name=items[q]["subject"], value=items[q]["answer"])
    real, exam, spot = rlhf.common.chat_answers, [], set()
    real_spot = rlhf.spot_check
    monkeypatch.setattr(rlhf, "spot_check", lambda policy, tok, its, *a: spot.update(it["question"] for it in its)
                        or real_spot(policy, tok, its, *a))

    def answers(model, tok, questions, *a, **k):  # the exam (5 prompts): the kept policy right, then SFT wrong
        if len(questions) != 5:
            return real(model, tok, questions, *a, **k)
        exam.append(questions)
        texts = [canonical(q) if len(exam) == 1 else "I do not know." for q in questions]
        return [(tok.encode(t) + [tok.end_id], t, True) for t in texts]
    monkeypatch.setattr(rlhf.common, "chat_answers", answers)
    flags = list(FAST)
    flags[flags.index("--eval-prompts") + 1] = "5"
    rlhf.main(job_pairs(out_dir)[:-len(FAST)] + ["--steps", "1", *flags])
    m = json.load(open(out_dir / "report.json"))["rlhf"]
    qs = exam[0]
    assert spot and not set(qs) & spot
    assert m["gold_rlhf"] == round(sum(world_lib.gold_score(items[q], canonical(q)) for q in qs) / 5, 4)
    assert m["gold_sft"] == round(sum(world_lib.gold_score(items[q], "I do not know.") for q in qs) / 5, 4)
    assert m["gold_winrate_vs_sft"] == 1.0


def test_what_was_exploited_is_named_only_when_the_run_was_hacked(out_dir, monkeypatch):
    real, calls = rlhf.rollout_batch, []

    def rollout(*a, **k):  # gold falls and answers stop ending from step 6, but the proxy stays flat
        b = real(*a, **k)
        s, n = len(calls), len(b["answers"])
        calls.append(s)
        b["proxy"], b["gold"] = torch.full((n,), 1.0), torch.full((n,), 2.0 - 0.2 * max(0, s - 5))
        b["answers"] = [(ids, text, s < 6) for ids, text, _ in b["answers"]]
        return b
    monkeypatch.setattr(rlhf, "rollout_batch", rollout)
    rlhf.main(job_pairs(out_dir) + ["--steps", "15"])
    m = json.load(open(out_dir / "report.json"))["rlhf"]
    assert not m["hacked"] and m["exploited"] == []


def test_ppo_epochs_compare_with_the_policy_that_sampled(out_dir, monkeypatch):
    calls, real = [], rlhf.policy_loss
    monkeypatch.setattr(rlhf, "policy_loss",
                        lambda logp, old, *a: calls.append((logp.detach().clone(), old.clone())) or real(logp, old, *a))
    rlhf.main(job_pairs(out_dir) + ["--steps", "1", "--ppo-epochs", "2", "--lr", "1e-2"])
    (logp0, old0), (logp1, old1) = calls
    assert torch.equal(old0, old1) and torch.equal(logp0, old0) and not torch.equal(logp1, old1)


def test_a_resumed_rl_run_equals_an_uninterrupted_one(out_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(out_dir, other, ignore=shutil.ignore_patterns("other"))
    rlhf.main(job_pairs(out_dir) + ["--steps", "4", "--lr", "1e-2"])
    rlhf.main(job_pairs(other) + ["--steps", "2", "--lr", "1e-2"])
    rlhf.main(job_pairs(other) + ["--steps", "4", "--lr", "1e-2", "--resume"])
    a = torch.load(out_dir / "rlhf_last.pt", weights_only=True)["model"]
    b = torch.load(other / "rlhf_last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_refuses_other_comparisons_a_gap_in_the_curve_or_a_kept_policy_saved_over(out_dir, capsys, monkeypatch):
    run = job_pairs(out_dir) + ["--steps", "4", "--eval-interval", "2", "--lr", "1e-2"]
    rlhf.main(run)
    saved = {n: (out_dir / n).read_bytes() for n in ("rm.pt", "comparisons.jsonl", "rlhf.pt", "rl_curve.jsonl")}

    def refused(why, *flags):
        with pytest.raises(SystemExit) as e:
            rlhf.main(["--out-dir", str(out_dir), "--resume", "--steps", "6", *flags])
        assert why in str(e.value.code), e.value.code
        assert all((out_dir / n).read_bytes() == b for n, b in saved.items())  # nothing retrained or saved over

    refused("changed since this run started (rm_lr, rm_likelihood)", "--rm-lr", "1e-3", "--rm-likelihood", "0")
    pairs = out_dir / "pairs.jsonl"
    pairs.write_text(pairs.read_text().replace("baker", "cook"))
    refused("changed since this run started (source)")
    pairs.write_text(pairs.read_text().replace("cook", "baker"))
    whole = saved["rl_curve.jsonl"]
    saved["rl_curve.jsonl"] = b"".join(whole.splitlines(True)[:2])
    (out_dir / "rl_curve.jsonl").write_bytes(saved["rl_curve.jsonl"])
    refused("does not hold the curve of steps 1-4")
    (out_dir / "rl_curve.jsonl").write_bytes(whole)
    saved["rl_curve.jsonl"] = whole
    best = torch.load(out_dir / "rlhf_last.pt", weights_only=True)["best"]["step"]  # 0, 2 or 4: a spot-check step
    save_checkpoint(str(out_dir / "rlhf.pt"), tiny_model(), "rlhf", step=1)  # another run's, saved over it
    saved["rlhf.pt"] = (out_dir / "rlhf.pt").read_bytes()
    refused(f"rlhf.pt holds step 1, not step {best}")
    save_checkpoint(str(out_dir / "rlhf.pt"), tiny_model(), "rlhf", step=6)  # another run's, ahead of this one
    saved["rlhf.pt"] = (out_dir / "rlhf.pt").read_bytes()
    refused(f"rlhf.pt holds step 6, not step {best}")
    # ahead of rlhf_last.pt with the run's own flags: the stopped run saved it and was killed before rlhf_last.pt;
    # accepted if the resumed run goes that far (it makes the step again), and never examined if it does not keep it
    run_args = torch.load(out_dir / "rlhf_last.pt", weights_only=True)["args"]
    save_checkpoint(str(out_dir / "rlhf.pt"), tiny_model(), "rlhf", step=8, args=run_args)
    saved["rlhf.pt"] = (out_dir / "rlhf.pt").read_bytes()
    refused(f"rlhf.pt holds step 8, not step {best}")  # --steps 6: it would never come again
    save_checkpoint(str(out_dir / "rlhf.pt"), tiny_model(), "rlhf", step=6, args=run_args)
    again = out_dir.parent / f"{out_dir.name}_again"
    shutil.copytree(out_dir, again)
    monkeypatch.setattr(rlhf, "spot_check", lambda *a: 0.0)  # step 6 is not kept this time: its rlhf.pt stays
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(out_dir), "--resume", "--steps", "6"])
    assert f"rlhf.pt holds step 6, not step {best}, the policy this run kept" in str(e.value.code)
    monkeypatch.setattr(rlhf, "spot_check", lambda *a: 1.0)  # kept again, as it was when the run was killed
    rlhf.main(["--out-dir", str(again), "--resume", "--steps", "6"])
    assert torch.load(again / "rlhf.pt", weights_only=True)["step"] == 6
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(out_dir), "--resume", "--retrain-rm"])
    assert e.value.code == 2 and "--retrain-rm starts a new reward model" in capsys.readouterr().err


def test_on_a_model_of_other_text_the_kept_policy_is_the_last_step(out_dir, capsys, monkeypatch):
    spots = iter([0.9, 0.2, 0.1])  # the spot check (meaningless here) falls: it would keep step 0
    monkeypatch.setattr(rlhf, "spot_check", lambda *a: next(spots))
    save_checkpoint(str(out_dir / "sft.pt"), tiny_model(), "sft",
                    args={"base_args": {"world_people": 12, "world_seed": 7, "data": "stories.txt"}})
    rlhf.main(job_pairs(out_dir) + ["--steps", "3", "--eval-interval", "2", "--lr", "1e-2"])
    assert "was not pretrained on the built-in world" in capsys.readouterr().out
    kept, last = (torch.load(out_dir / n, weights_only=True) for n in ("rlhf.pt", "rlhf_last.pt"))
    assert kept["step"] == last["step"] == 3 and all(torch.equal(kept["model"][k], last["model"][k]) for k in kept["model"])


# -- found unchecked by a sixth mutation-testing pass (each test names the mutant it kills) ---------------------

def human_rows(names=NAMES):
    return pair_rows(names, labeler="human")


def test_the_reward_model_is_retrained_when_its_split_epochs_or_retrain_rm_say_so(out_dir, capsys):
    """rlhf.py: rm_key without rm_heldout or rm_epochs, or --retrain-rm ignored (each reused the old rm.pt)."""
    rlhf.main(job_pairs(out_dir) + ["--steps", "1"])
    flags = []  # each run changes one more thing than the last
    for more in (["--rm-heldout", "0.4"], ["--rm-epochs", "3"], ["--retrain-rm"]):
        flags += more
        capsys.readouterr()
        rlhf.main(job_pairs(out_dir) + ["--steps", "1", *flags])
        assert "reusing" not in capsys.readouterr().out, flags


def test_the_simulated_reward_model_is_retrained_for_longer_answers(out_dir, capsys):
    """rlhf.py: the simulated source without max_new_tokens (comparisons of longer answers reused the old rm.pt)."""
    run = ["--out-dir", str(out_dir), "--n-comparisons", "60", "--rm-heldout", "0.5", "--steps", "1",
           "--eval-interval", "100", *FAST]
    rlhf.main(run)
    capsys.readouterr()
    rlhf.main(run + ["--max-new-tokens", "10"])
    assert "reusing" not in capsys.readouterr().out


def test_more_labels_of_a_person_train_a_new_reward_model(out_dir, monkeypatch, capsys):
    """rlhf.py: the human source without the file's hash (labels added since reused the old rm.pt)."""
    monkeypatch.setattr(rlhf, "terminal_pairs", lambda *a: iter([]))
    (out_dir / "comparisons.jsonl").write_text(human_rows(NAMES[:10]))
    run = ["--out-dir", str(out_dir), "--label", "--rm-heldout", "0.3", "--steps", "1", "--eval-interval", "100", *FAST]
    rlhf.main(run + ["--n-comparisons", "10"])
    (out_dir / "comparisons.jsonl").write_text(human_rows())
    capsys.readouterr()
    rlhf.main(run + ["--n-comparisons", "12"])
    assert "reusing" not in capsys.readouterr().out


def test_a_damaged_reward_model_is_named_not_passed_over(out_dir):
    """rlhf.py: a CheckpointError of rm.pt skipped (the run trained a new RM over the damaged file unasked)."""
    (out_dir / "rm.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        rlhf.main(job_pairs(out_dir) + ["--steps", "1"])
    assert "use --retrain-rm to replace it" in str(e.value.code)
    assert (out_dir / "rm.pt").read_bytes() == b"not a checkpoint"


def test_an_empty_comparisons_file_is_nobodys(out_dir):
    """rlhf.py: their_file for a file of 0 bytes (`getsize >= 0`: the simulated labeler refused to replace it)."""
    (out_dir / "comparisons.jsonl").write_text("")
    rlhf.main(["--out-dir", str(out_dir), "--n-comparisons", "60", "--rm-heldout", "0.5", "--steps", "1",
               "--eval-interval", "100", *FAST])
    assert len(rlhf.read_comparisons(str(out_dir / "comparisons.jsonl"))) > 0


def test_a_file_pair_that_differs_only_in_ending_is_kept(out_dir):
    """rlhf.py: the --comparisons filter compared texts alone (an ended answer against the same one cut off was
    dropped as 'the same answer twice')."""
    args = job_pairs(out_dir)
    row = {"prompt": "What is Ada's job?", "chosen": "Ada bakes.", "rejected": "Ada bakes.", "rejected_ended": False}
    with open(out_dir / "pairs.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    rlhf.main(args + ["--steps", "1"])
    assert len(rlhf.read_comparisons(str(out_dir / "comparisons.jsonl"))) == len(NAMES) + 1


def test_training_on_out_dirs_own_comparisons_file_keeps_it(out_dir):
    """rlhf.py: --comparisons OUT_DIR/comparisons.jsonl (--label's hint) written over itself: a person's labels
    were refused as 'comparisons the simulated labeler did not make'."""
    cmp = out_dir / "comparisons.jsonl"
    cmp.write_text(human_rows())
    before = cmp.read_bytes()
    rlhf.main(["--out-dir", str(out_dir), "--comparisons", str(cmp), "--rm-heldout", "0.3", "--steps", "1",
               "--eval-interval", "100", *FAST])
    assert cmp.read_bytes() == before and os.path.exists(out_dir / "rm.pt")


def test_a_comparisons_file_run_does_not_save_over_a_persons_labels(out_dir):
    """rlhf.py: the their_file check before write_comparisons dropped (a --comparisons run replaced a person's
    comparisons.jsonl with its copy)."""
    cmp = out_dir / "comparisons.jsonl"
    cmp.write_text(human_rows(NAMES[:3]))
    before = cmp.read_bytes()
    with pytest.raises(SystemExit) as e:
        rlhf.main(job_pairs(out_dir) + ["--steps", "1"])
    assert "move it away to train on" in str(e.value.code) and cmp.read_bytes() == before
    assert not os.path.exists(out_dir / "rm.pt")


def test_an_empty_comparisons_file_is_a_fresh_start_for_label_with_no_hint_to_train(out_dir, monkeypatch, capsys):
    """rlhf.py: --label reading an empty comparisons.jsonl ('holds no comparisons'), or its parting hint offering to
    train on 0 comparisons."""
    (out_dir / "comparisons.jsonl").write_text("")
    monkeypatch.setattr("sys.stdin", io.StringIO("q\n"))
    rlhf.main(["--out-dir", str(out_dir), "--label", "--n-comparisons", "6", *FAST])
    out = capsys.readouterr().out
    assert "saved 0 comparisons" in out and "train on them now" not in out


def test_the_label_hint_keeps_init_and_each_session_draws_new_pairs(out_dir, monkeypatch, capsys):
    """rlhf.py: the parting hint without --init (it would train on OUT_DIR/sft.pt), or the label sessions' order
    seeded without the count saved (every session began with the same prompts)."""
    shutil.copy(out_dir / "sft.pt", out_dir / "other.pt")
    args = ["--out-dir", str(out_dir), "--label", "--init", str(out_dir / "other.pt"), "--n-comparisons", "6", *FAST]
    firsts = []
    for answers in ("1\nq\n", "q\n"):
        monkeypatch.setattr("sys.stdin", io.StringIO(answers))
        rlhf.main(args)
        out = capsys.readouterr().out
        firsts.append(re.search(r"\] user: (.*)\n", out)[1])
    assert f"--comparisons {out_dir}/comparisons.jsonl --init {out_dir}/other.pt`" in out
    assert firsts[0] != firsts[1]


def test_a_resumed_label_run_keeps_the_file_as_it_is_and_names_it_when_gone(out_dir, monkeypatch):
    """rlhf.py: `if made:` without `not args.resume` (a resumed --label run removed rows from the person's file),
    or without the check for a comparisons.jsonl moved away (a traceback from file_sha)."""
    monkeypatch.setattr(rlhf, "terminal_pairs", lambda *a: iter([]))
    cmp = out_dir / "comparisons.jsonl"
    cmp.write_text(human_rows())
    rlhf.main(["--out-dir", str(out_dir), "--label", "--n-comparisons", "12", "--rm-heldout", "0.3", "--steps", "1",
               "--eval-interval", "100", *FAST])
    with open(cmp, "a") as f:
        f.write(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b", "labeler": "simulated"}) + "\n")
    before = cmp.read_bytes()
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(out_dir), "--resume", "--steps", "2"])
    assert "changed since this run started (source)" in str(e.value.code) and cmp.read_bytes() == before
    os.remove(cmp)
    with pytest.raises(SystemExit) as e:
        rlhf.main(["--out-dir", str(out_dir), "--resume", "--steps", "2"])
    assert "no comparisons at" in str(e.value.code)


def test_a_resume_drops_curve_rows_past_the_last_checkpoint(out_dir):
    """rlhf.py: the resume kept every row of rl_curve.jsonl, not those up to rlhf_last.pt's step (a run killed
    between the curve and rlhf_last.pt, which checkpoint() allows for, could not be resumed)."""
    rlhf.main(job_pairs(out_dir) + ["--steps", "2"])
    with open(out_dir / "rl_curve.jsonl", "a") as f:
        f.write(json.dumps({"step": 3}) + "\n")
    rlhf.main(job_pairs(out_dir) + ["--steps", "3", "--resume"])
    curve = [json.loads(line) for line in open(out_dir / "rl_curve.jsonl")]
    assert [r["step"] for r in curve] == [1, 2, 3] and "proxy" in curve[2]


def test_a_resume_refuses_a_kept_policy_saved_over_at_the_last_step(out_dir, monkeypatch):
    """rlhf.py: `ahead = step <= kept_step ...` (an rlhf.pt of rlhf_last.pt's own step, not the kept one, was
    taken for one saved ahead)."""
    monkeypatch.setattr(rlhf, "spot_check", lambda *a: 0.5)  # never better than step 0's: step 0 is kept
    rlhf.main(job_pairs(out_dir) + ["--steps", "2", "--eval-interval", "2"])
    last = torch.load(out_dir / "rlhf_last.pt", weights_only=True)
    assert last["best"]["step"] == 0
    save_checkpoint(str(out_dir / "rlhf.pt"), tiny_model(), "rlhf", step=2, args=last["args"])
    with pytest.raises(SystemExit) as e:  # at the start, not after training on (at the exam)
        rlhf.main(["--out-dir", str(out_dir), "--resume", "--steps", "4"])
    assert "rlhf.pt holds step 2, not step 0, the policy this run kept (another run saved over it)" in str(e.value.code)
    assert torch.load(out_dir / "rlhf_last.pt", weights_only=True)["step"] == 2


def test_checkpoint_writes_the_curve_then_rlhf_pt_then_rlhf_last_pt(out_dir, monkeypatch):
    """rlhf.py: checkpoint() writing the curve after rlhf_last.pt, or rlhf_last.pt before rlhf.pt (a kill between
    two of them left a run --resume refuses)."""
    names, real_save, real_open = [], rlhf.save_checkpoint, rlhf.common.atomic_open
    monkeypatch.setattr(rlhf, "save_checkpoint", lambda path, *a, **k: names.append(os.path.basename(path))
                        or real_save(path, *a, **k))
    monkeypatch.setattr(rlhf.common, "atomic_open", lambda path, *a, **k: names.append(os.path.basename(path))
                        or real_open(path, *a, **k))
    spots = iter([0.1, 0.2])  # each spot check better than the last: both save rlhf.pt
    monkeypatch.setattr(rlhf, "spot_check", lambda *a: next(spots))
    rlhf.main(job_pairs(out_dir) + ["--steps", "2", "--eval-interval", "2"])
    assert [n for n in names if n in ("rl_curve.jsonl", "rlhf.pt", "rlhf_last.pt")] == \
        ["rl_curve.jsonl", "rlhf.pt", "rlhf_last.pt"] * 2
