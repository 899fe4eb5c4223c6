"""export.py and run.py against their references: run.py's NumPy forward pass against model.py's (logits at
every position, greedy ids, the KV cache), its pure-Python BPE against sentencepiece, its chat rendering
against tokenizer.render_chat; every damaged blob gives one clear line; every stage exports and runs;
llama2.c's format holds the same model; the blob export writes the runtime section of the report card.

    python tests/test_export_run.py     # not a test: the stories15M-shape speed and memory benchmark
"""
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `python tests/test_export_run.py`
import common  # noqa: E402
import export  # noqa: E402
import model  # noqa: E402
import run  # noqa: E402
import tokenizer  # noqa: E402
import world  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRICKY = ["", " ", "  ", "     five", "trailing   ", "\t", "a\tb\t\tc", "\n", "line\n\nbreaks\n", "\r\n windows",
          "ünïcödé façade", "emoji 😀🎉 and 中文", "👩‍👩‍👧 family", "e\u0301 combining", "\x00 nul \x7f",
          "Q: Where does Anna live?\nA:", "12345 + 678 = 13023", "<|user|>inside text<|end|>", "<|end|><|end|>",
          "<|end", "|>", "<|assistant|>x<|system|>", "<s> </s> <unk> <0x41>", "\u2581 already escaped",
          "mixed \t \n  whitespace  \t", "aaaaaaaaaaaaaaaaaaaaaaaa", "the the the the"]


def tiny_model(vocab_size, seed=0, **kw):
    """A random model whose weights are exactly representable in float16 (so the blob holds the very same
    model) and large enough that logits are well separated (greedy decoding is not decided by rounding)."""
    torch.manual_seed(seed)
    args = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, max_seq_len=96)
    net = model.Transformer(model.ModelArgs(**{**args, **kw})).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.mul_(8.0 if "embeddings" in name or "output" in name else 3.0)
            p.copy_(p.half().float())
    return net


def export_blob(tmp_path, net, tok, stage="base", name="model"):
    """Checkpoint -> export.py's command line -> blob path."""
    ckpt, tok_file = tmp_path / f"{name}.pt", tmp_path / "tok.model"
    shutil.copy(tok.model_file, tok_file)
    model.save_checkpoint(str(ckpt), net, stage=stage)
    out = tmp_path / f"{name}.bin"
    call_main(export, [str(ckpt), "--out", str(out)], ckpt_flag=True)
    return out


def call_main(module, argv, ckpt_flag=False):
    argv = ["--ckpt", argv[0], *argv[1:]] if ckpt_flag else argv
    old = sys.argv
    sys.argv = [module.__name__ + ".py", *argv]
    try:
        module.main()
    finally:
        sys.argv = old


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tok):
    """{"tied"|"untied": (torch model, run.py Transformer, run.py Tokenizer, blob path)}"""
    out = {}
    for kind in ("tied", "untied"):
        net = tiny_model(tok.vocab_size, tie_embeddings=kind == "tied")
        path = export_blob(tmp_path_factory.mktemp(kind), net, tok)
        header, weights, _ = run.load_blob(str(path))
        out[kind] = net, run.Transformer(header["model_args"], weights), run.Tokenizer(header["tokenizer"], header["chat"]), path
    return out


@pytest.fixture(params=["tied", "untied"])
def pair(request, pairs):
    return pairs[request.param]


@pytest.fixture(scope="module")
def rtok(pairs):
    return pairs["tied"][2]


# -- the forward pass ------------------------------------------------------------------------------------

def test_logits_match_pytorch_at_every_position(pair):
    net, rt, _, _ = pair
    ids = torch.randint(0, net.args.vocab_size, (1, net.args.max_seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net(ids)[0].numpy()
    got = rt.forward(ids[0].tolist(), 0)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(want).max() > 5  # the comparison is not between near-zero logits
    assert np.abs(got - want).max() < 2e-3


def test_kv_cache_chunks_equal_one_full_pass(pair):
    _, rt, _, _ = pair
    ids = list(range(5, 45))
    full = rt.forward(ids, 0)
    parts = [rt.forward(ids[:9], 0), rt.forward(ids[9:20], 9)] + [rt.forward([t], p) for p, t in enumerate(ids) if p >= 20]
    assert np.abs(np.concatenate(parts) - full).max() < 1e-4
    reuse = rt.forward(ids[15:], 15)  # restart mid-cache, as chat does when a turn's tokens differ
    assert np.abs(reuse - full[15:]).max() < 1e-4
    with pytest.raises(ValueError):
        rt.forward([1, 2], rt.a["max_seq_len"] - 1)


def test_greedy_generation_matches_pytorch(pair):
    net, rt, rtok, _ = pair
    prompt = [rtok.bos_id] + rtok.encode("Anna lives in")
    want = model.generate(net, torch.tensor([prompt]), 64, temperature=0.0)[0]
    got = list(run.generate(rt, prompt, 0, 64, lambda logits: int(logits.argmax())))
    assert len(got) == 64 and got == want


def test_sampling_filters_and_seed():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    rng = np.random.default_rng(0)
    draw = lambda **kw: [run.sample_next(logits, kw.get("t", 1.0), kw.get("k", 0), kw.get("p", 1.0), rng)  # noqa: E731
                         for _ in range(2000)]
    assert set(draw(t=0)) == {0}
    assert set(draw(k=1)) == {0} and set(draw(p=0.4)) == {0}
    assert set(draw(p=0.7)) == {0, 1} and set(draw(k=3)) == {0, 1, 2}
    half = np.log(np.array([0.5, 0.25, 0.25], np.float32))  # exact: the first token alone reaches top_p, as in model.py
    assert {run.sample_next(half, 1.0, 0, 0.5, rng) for _ in range(200)} == {0}
    counts = np.bincount(draw(), minlength=4) / 2000
    assert np.abs(counts - [0.5, 0.3, 0.15, 0.05]).max() < 0.04
    big = np.random.default_rng(1).normal(size=5000).astype(np.float32)  # the nucleus shortcut vs a full sort
    probs = np.exp(big - big.max()) / np.exp(big - big.max()).sum()
    order = np.argsort(-probs)
    nucleus = set(order[:np.searchsorted(np.cumsum(probs[order]), 0.9) + 1].tolist())
    got = {run.sample_next(big, 1.0, 0, 0.9, rng) for _ in range(3000)}
    assert got <= nucleus and len(got) > len(nucleus) // 2
    assert {run.sample_next(big, 1e-310, 0, 0.9, rng) for _ in range(5)} == {int(big.argmax())}  # ~greedy, no nan
    a = [run.sample_next(big, 0.8, 0, 0.9, np.random.default_rng(7)) for _ in range(3)]
    assert a == [run.sample_next(big, 0.8, 0, 0.9, np.random.default_rng(7)) for _ in range(3)]


# -- the tokenizer and the chat template -----------------------------------------------------------------

def test_encoder_matches_sentencepiece_on_the_world_corpus(tok, rtok, tiny_world):
    train, val = world.pretrain_docs(tiny_world)
    for doc in train + val:
        assert rtok.encode(doc) == tok.encode(doc), doc[:80]
    big, _ = world.pretrain_docs(world.make_world())  # the default world: another 2000+ documents
    sample = random.Random(0).sample(big, 300)
    assert [rtok.encode(d) for d in sample] == tok.encode_batch(sample)


def test_encoder_and_decoder_on_tricky_strings(tok, rtok):
    rng = random.Random(0)
    alphabet = "ab \t\n▁<|>end😀é中" + "".join(chr(c) for c in range(0x20, 0x7f))
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    # equal scores: "lll" can merge as "ll"+"l" or "l"+"ll"; sentencepiece takes the leftmost pair
    doubled = [p.replace("\u2581", " ") * 3 for p, _, k in tok.pieces() if k == tokenizer.NORMAL and len(p) == 1]
    for s in TRICKY + randoms + doubled:
        ids = tok.encode(s)
        assert rtok.encode(s) == ids, repr(s)
        assert rtok.decode(ids) == tok.decode(ids), repr(s)
    assert rtok.encode("<|end|>") == tok.encode("<|end|>") != [tok.end_id] and rtok.encode("") == []
    byte = {p: i for i, (p, _, k) in enumerate(tok.pieces()) if k == tokenizer.BYTE}
    for broken in (b"\xe6\xac", b"a\xe6\xacb\xff", b"\xc3", b"\xf0\x9f\x98", b"\xed\xa0\x80"):  # not UTF-8
        ids = [byte[f"<0x{b:02X}>"] for b in broken]
        assert rtok.decode(ids) == tok.decode(ids), broken  # one U+FFFD per byte, as sentencepiece writes


def test_a_control_token_keeps_the_bytes_on_its_two_sides_apart_as_sentencepiece_does(tok, rtok, capsys):
    """<0xC3></s><0xA8> is two U+FFFD in sentencepiece, not the "è" of <0xC3><0xA8>: decode and the streaming
    Printer both end a broken character at <s> or </s>; random sequences of byte, control, marker and word ids
    decode as sentencepiece decodes them."""
    byte = {int(p[3:5], 16): i for i, (p, _, k) in enumerate(tok.pieces()) if k == tokenizer.BYTE}
    C3, A8 = byte[0xC3], byte[0xA8]
    for ids, want in (([C3, A8], "è"), ([C3, tok.eos_id, A8], "\ufffd\ufffd"), ([C3, tok.bos_id, A8], "\ufffd\ufffd"),
                      ([byte[0xE4], byte[0xB8], tok.eos_id, byte[0xAD]], "\ufffd" * 3)):
        assert tok.decode(ids) == rtok.decode(ids) == want, ids
        out = run.Printer(rtok)
        for i in ids:
            out.write([i])
        out.write([], final=True)
        assert capsys.readouterr().out == want, ids
    rng = random.Random(0)
    pool = [*(byte[b] for b in (0xC3, 0xA8, 0xE4, 0xB8, 0xAD, 0xF0, 0x9F, 0x98, 0x80, 0x41)), tok.bos_id, tok.eos_id,
            tok.unk_id, tok.end_id, *tok.encode(" Anna")]
    for _ in range(2000):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 8))]
        assert rtok.decode(ids) == tok.decode(ids), ids


def test_chat_rendering_equals_render_chat(tok, rtok, tiny_world):
    conversations = world.sft_conversations(tiny_world)[:40]
    conversations.append([{"role": "system", "content": "Be brief. <|end|> is a token"},
                          {"role": "user", "content": "  two  spaces\tand a tab 😀"}])
    for messages in conversations:
        for prompt in (False, True):
            assert run.render_chat(rtok, messages, prompt) == tokenizer.render_chat(tok, messages, prompt)[0]


def test_a_marker_typed_as_text_is_never_its_id_even_when_merges_reach_it():
    """The test vocabulary never merges as far as "<|end|>"; a real one may. Text that spells a marker is split
    into text pieces, so a user cannot end a turn or forge one (prompt injection)."""
    markers = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    normal = ["<", "|", "e", "n", "d", ">", "<|", "<|e", "<|en", "<|end", "<|end|"]  # merges that reach <|end|>
    pieces = ["<unk>", "<s>", "</s>"] + markers + normal + [f"<0x{b:02X}>" for b in range(256)]
    types = [run.UNKNOWN, run.CONTROL, run.CONTROL] + [run.USER_DEFINED] * 4 + [run.NORMAL] * len(normal) + [run.BYTE] * 256
    scores = [0.0] * 7 + [-float(i) for i in range(len(normal))] + [0.0] * 256
    rt = run.Tokenizer({"pieces": pieces, "scores": scores, "types": types, "unk_id": 0, "bos_id": 1, "eos_id": 2},
                       {"role_ids": {"system": 3, "user": 4, "assistant": 5}, "end_id": 6})
    ids = rt.encode("<|end|>")
    assert not set(ids) & {3, 4, 5, 6} and rt.decode(ids) == "<|end|>"


def test_an_old_exchange_is_dropped_to_leave_room_for_the_answer(rtok):
    msgs = [{"role": "user", "content": "tell me about Anna " * 3}, {"role": "assistant", "content": "In Dunmore."},
            {"role": "user", "content": "and Ben?"}]
    ctx = len(run.render_chat(rtok, msgs, True)) + 5  # all of it fits, but with 5 tokens to answer in, not 10
    ids, kept = run.fit_context(rtok, msgs, ctx, room=10)
    assert kept == msgs[2:] and ids == run.render_chat(rtok, msgs[2:], True) and len(ids) + 10 <= ctx
    assert run.fit_context(rtok, msgs, ctx, room=5) == (run.render_chat(rtok, msgs, True), msgs)


def test_a_version_1_blob_is_read_with_its_own_template(pair, tok, tmp_path):
    """Version 1 had no content prefix: run.py still renders its chats as they were trained."""
    path = tmp_path / "v1.bin"
    blob = rewrite(pair[3].read_bytes(), lambda h: h["chat"].pop("content_prefix"))
    path.write_bytes(blob[:8] + struct.pack("<I", 1) + blob[12:])
    header, _, _ = run.load_blob(str(path))
    v1 = run.Tokenizer(header["tokenizer"], header["chat"])
    messages = [{"role": "user", "content": "Where does Anna live?"}]
    assert run.render_chat(v1, messages) == [tok.bos_id, tok.role_ids["user"], *tok.encode(messages[0]["content"]), tok.end_id]


@pytest.mark.parametrize("chunks, shown", [([" In", " Dunmore."], "In Dunmore."), (["In", " Dunmore."], "In Dunmore."),
                                           ([" ", "In"], "In"), ([" "], ""), (["\u2581x"], "\u2581x")])
def test_chat_output_leaves_out_the_content_prefix_once(chunks, shown, capsys):
    """Printer gets text in pieces; only a leading CONTENT_PREFIX is dropped, even when it comes alone."""
    class Pieces:  # each id is the index of a chunk
        def piece_bytes(self, i):
            return chunks[i].encode()

        def is_control(self, i):
            return False
    out = run.Printer(Pieces(), skip=tokenizer.CONTENT_PREFIX)
    for i in range(len(chunks)):
        out.write([i])
    out.write([], final=True)
    assert capsys.readouterr().out == shown


class Recording(run.Transformer):
    """run.Transformer that keeps the token sequence its KV cache holds, as fed."""

    def __init__(self, *a):
        super().__init__(*a)
        self.seq, self.calls = [], []

    def features(self, tokens, start_pos):
        self.seq[start_pos:] = list(tokens)
        self.calls.append((start_pos, list(tokens)))
        return super().features(tokens, start_pos)


def chat_session(pair, tok, lines, monkeypatch, **kw):
    _, rt, rtok, path = pair
    header, weights, _ = run.load_blob(str(path))
    header["model_args"].update(kw.pop("model_args", {}))
    rec = Recording(header["model_args"], weights)
    args = argparse_defaults(**kw)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    greedy = lambda logits: int(logits.argmax())  # noqa: E731
    return rec, run.chat(rec, rtok, args, greedy, run.Stats())


def argparse_defaults(**kw):
    return type("Args", (), {**dict(prompt=None, system=None, max_new_tokens=12), **kw})


def test_chat_feeds_exactly_the_rendered_conversation(pair, tok, monkeypatch, capsys):
    rec, messages = chat_session(pair, tok, ["Where does Anna live?", "", "And her mother?"], monkeypatch,
                                 system="Answer in one sentence.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    first = tokenizer.render_chat(tok, messages[:2], add_generation_prompt=True)[0]
    assert rec.calls[0] == (0, first)  # turn one: the whole rendered prompt in one prefill
    last = tokenizer.render_chat(tok, messages[:4], add_generation_prompt=True)[0]
    assert rec.seq[:len(last)] == last  # turn two: the cache holds exactly the re-rendered conversation
    assert 0 < rec.calls[len(rec.calls) // 2][0]  # ... and turn two reused the cache instead of starting over
    assert len(capsys.readouterr().out.splitlines()) >= 2


def test_chat_longer_than_the_context_drops_old_turns_never_crashes(pair, tok, monkeypatch, capsys):
    lines = ["tell me about Anna and her town " * 3, "and Ben?", "x " * 200, "and who is Clara?"]
    rec, messages = chat_session(pair, tok, lines, monkeypatch, model_args={"max_seq_len": 56}, system="Be brief.")
    err = capsys.readouterr().err
    assert "does not fit" in err and "dropped" in err
    assert messages[-2]["content"] == "and who is Clara?" and len(rec.seq) <= 56
    assert messages[0] == {"role": "system", "content": "Be brief."}  # the old turns go, the system message stays


def test_a_chat_answer_ends_at_end_of_turn(pair):
    _, rt, rtok, _ = pair
    word = rtok.encode("Dunmore")[0]
    script, calls = iter([word, rtok.end_id, rtok.eos_id, word, word]), []
    sample = lambda logits: calls.append(1) or next(script)  # noqa: E731
    messages = run.chat(rt, rtok, argparse_defaults(prompt="Where does Anna live?"), sample, run.Stats())
    assert len(calls) == 2 and messages[-1]["content"] == rtok.decode([word]).removeprefix(rtok.content_prefix)


def test_command_line_options_anywhere_and_odd_input(pair, capsys):
    path = str(pair[3])
    call_main(run, [path, "Anna lives in", "--temperature", "0", "--max-new-tokens", "8"])
    want = capsys.readouterr().out
    call_main(run, [path, "--temperature", "0", "Anna lives in", "--max-new-tokens", "8"])  # option before the prompt
    assert capsys.readouterr().out == want and want.startswith("Anna lives in")
    call_main(run, [path, "\udcff\udcfe Anna", "--temperature", "0", "--max-new-tokens", "2"])  # argv not UTF-8
    assert capsys.readouterr().out.startswith("\ufffd\ufffd Anna")
    for argv in (["--temperature", "nan"], ["--temperature", "inf"], ["--thread", "1"], ["--seed", "-1"],
                 ["--system", "Be terse."]):  # a system message without --chat was dropped unsaid
        with pytest.raises(SystemExit) as e:
            call_main(run, [path, "hi", *argv])
        assert e.value.code == 2  # argparse's one usage line
    with pytest.raises(SystemExit) as e:
        call_main(run, [path, "--chat", "hi", "--system", "a long system message " * 40])
    assert "--system message is too long" in str(e.value.code)
    call_main(run, [path, "--chat", "hi", "--max-new-tokens", "2"])
    assert "note: this is a base model" in capsys.readouterr().err
    for message, why in (("", "the message is empty"), (" ", "the message is empty"),
                         ("Anna " * 2000, "does not fit the model's context")):  # one turn, nothing answered: an error
        with pytest.raises(SystemExit) as e:
            call_main(run, [path, "--chat", message])
        assert why in str(e.value.code)


def test_completion_of_a_prompt_longer_than_the_context(pair, monkeypatch, capsys):
    _, rt, rtok, _ = pair
    seen, real = [], run.generate
    monkeypatch.setattr(run, "generate", lambda model, ids, *a: seen.append(list(ids)) or real(model, ids, *a))
    run.complete(rt, rtok, "Anna lives in Dunmore. " * 80, argparse_defaults(max_new_tokens=5),
                 lambda logits: int(logits.argmax()), run.Stats())
    assert "keeping its last" in capsys.readouterr().err
    keep = rt.a["max_seq_len"] // 2
    assert seen[0] == [rtok.bos_id] + rtok.encode("Anna lives in Dunmore. " * 80)[-keep:]
    n = 1 + len(rtok.encode("Anna lives in Dunmore."))
    monkeypatch.setattr(rt, "a", {**rt.a, "max_seq_len": n + 3})  # it fits, but leaves less than was asked for
    run.complete(rt, rtok, "Anna lives in Dunmore.", argparse_defaults(max_new_tokens=5),
                 lambda logits: int(logits.argmax()), run.Stats())
    assert "leaves room for 3 new tokens" in capsys.readouterr().err
    monkeypatch.setattr(rt, "a", {**rt.a, "max_seq_len": 1})  # no room: the prompt is cut to BOS, nothing follows
    run.complete(rt, rtok, "Anna lives in Dunmore.", argparse_defaults(max_new_tokens=5),
                 lambda logits: int(logits.argmax()), run.Stats())
    out = capsys.readouterr()
    assert "keeping its last 0" in out.err and out.out == "\n"


# -- damaged and foreign files ---------------------------------------------------------------------------

SHIFT = 4096


def rewrite(blob, change):
    """The blob with its header edited by change(header); the tensors move SHIFT bytes on (offsets updated
    first) so a longer header still fits."""
    n = struct.unpack("<I", blob[12:16])[0]
    header = json.loads(blob[16:16 + n])
    start = min(e["offset"] for e in header["tensors"])
    for e in header["tensors"]:
        e["offset"] += SHIFT
    change(header)
    text = json.dumps(header).encode()
    assert 16 + len(text) <= start + SHIFT
    return blob[:12] + struct.pack("<I", len(text)) + text + bytes(start + SHIFT - 16 - len(text)) + blob[start:]


def edit(path, value):
    """A setter for rewrite: edit(["model_args", "dim"], 5) sets header["model_args"]["dim"] = 5."""
    def change(h):
        for key in path[:-1]:
            h = h[key]
        h[path[-1]] = value
    return change


CORRUPTIONS = {
    "empty": lambda b: b"",
    "magic only": lambda b: b[:8],
    "flipped magic": lambda b: bytes([b[0] ^ 0xFF]) + b[1:],
    "newer version": lambda b: b[:8] + struct.pack("<I", run.VERSION + 1) + b[12:],
    "version zero": lambda b: b[:8] + struct.pack("<I", 0) + b[12:],
    "huge header length": lambda b: b[:12] + struct.pack("<I", 2**32 - 1) + b[16:],
    "truncated header": lambda b: b[:200],
    "truncated weights": lambda b: b[:len(b) // 2],
    "last bytes missing": lambda b: b[:-200],
    "garbage header": lambda b: b[:16] + b"{\xff" + b[18:],
    "header not an object": lambda b: rewrite(b, lambda h: h.clear()),
    "huge dim": lambda b: rewrite(b, edit(["model_args", "dim"], 2**40)),
    "huge n_layers": lambda b: rewrite(b, edit(["model_args", "n_layers"], 10**12)),
    "huge max_seq_len": lambda b: rewrite(b, edit(["model_args", "max_seq_len"], 10**12)),
    "negative vocab": lambda b: rewrite(b, edit(["model_args", "vocab_size"], -5)),
    "float dim": lambda b: rewrite(b, edit(["model_args", "dim"], 64.5)),
    "huge consistent vocab": lambda b: rewrite(b, lambda h: (edit(["model_args", "vocab_size"], 10**9)(h),
                                                             edit(["tensors", 0, "shape"], [10**9, 64])(h))),
    "offset past the end": lambda b: rewrite(b, edit(["tensors", -1, "offset"], 64 * 10**9)),
    "misaligned offset": lambda b: rewrite(b, lambda h: h["tensors"][3].update(offset=h["tensors"][3]["offset"] + 2)),
    "offset into header": lambda b: rewrite(b, edit(["tensors", 2, "offset"], 0)),
    "missing tensor": lambda b: rewrite(b, lambda h: h["tensors"].pop()),
    "duplicate tensor": lambda b: rewrite(b, lambda h: h["tensors"].__setitem__(1, h["tensors"][2])),
    "wrong shape": lambda b: rewrite(b, edit(["tensors", 1, "shape"], [3, 3])),
    "list as a name": lambda b: rewrite(b, edit(["tensors", 1, "name"], ["a"])),
    "overflowing shapes": lambda b: rewrite(b, lambda h: (edit(["model_args", "vocab_size"], 2**62)(h),
                                                          edit(["tensors", 0, "shape"], [2**62, 64])(h))),
    "infinite theta": lambda b: rewrite(b, edit(["model_args", "rope_theta"], float("inf"))),
    "float32 dtype": lambda b: rewrite(b, edit(["tensors", 1, "dtype"], "float32")),
    "pieces short": lambda b: rewrite(b, lambda h: h["tokenizer"]["pieces"].pop()),
    "bos out of range": lambda b: rewrite(b, edit(["tokenizer", "bos_id"], 10**6)),
    "no role ids": lambda b: rewrite(b, edit(["chat", "role_ids"], None)),
    "content prefix not a string": lambda b: rewrite(b, edit(["chat", "content_prefix"], 1)),
    "float in a shape": lambda b: rewrite(b, lambda h: h["tensors"][0].update(shape=[float(d) for d in h["tensors"][0]["shape"]])),
    "deeply nested header": lambda b: b[:12] + struct.pack("<I", 30000) + b"[" * 30000 + b[16 + 30000:],
    "random bytes": lambda b: random.Random(0).randbytes(5000),
    "random after magic": lambda b: b[:8] + random.Random(1).randbytes(5000),
}


@pytest.fixture(scope="module")
def blob_bytes(pairs):
    return pairs["tied"][3].read_bytes()


def test_rewrite_helper_keeps_a_valid_blob(blob_bytes, tmp_path):
    path = tmp_path / "same.bin"
    path.write_bytes(rewrite(blob_bytes, lambda h: None))
    run.load_blob(str(path))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_damaged_blob_gives_one_clear_line(name, blob_bytes, tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(CORRUPTIONS[name](blob_bytes))
    with pytest.raises(SystemExit) as e:
        call_main(run, [str(path), "--max-new-tokens", "1"])
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and len(message) < 300, message
    if name == "newer version":
        assert "newer" in message
    if name in ("truncated weights", "last bytes missing", "offset past the end", "huge consistent vocab",
                "overflowing shapes"):
        assert "past the end" in message


@pytest.mark.parametrize("what", ["checkpoint", "directory", "missing", "truncated"])
def test_foreign_files_exit_1_without_traceback(what, pairs, blob_bytes, tmp_path):
    path = {"checkpoint": tmp_path / "base.pt", "directory": tmp_path, "missing": tmp_path / "nope.bin",
            "truncated": tmp_path / "cut.bin"}[what]
    if what == "truncated":
        path.write_bytes(blob_bytes[:-100])
    if what == "checkpoint":
        model.save_checkpoint(str(path), pairs["tied"][0], stage="base")
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- every stage exports and runs; formats -----------------------------------------------------------------

def test_every_stage_exports_and_runs_standalone(tok, tmp_path):
    outs = {}
    for i, stage in enumerate(["base", "sft", "rlhf"]):
        net = tiny_model(tok.vocab_size, seed=i)
        path = export_blob(tmp_path, net, tok, stage=stage, name=stage)
        header = run.load_blob(str(path))[0]
        assert header["stage"] == stage
        outs[stage] = (net, path)
    # run.py copied alone next to the blob, with the project out of reach (-I: no script dir, no PYTHONPATH)
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(ROOT / "run.py", alone / "run.py")
    for stage, (net, path) in outs.items():
        shutil.copy(path, alone / "m.bin")
        prompt = "Where does Anna live?" if stage == "base" else None
        ids = [tok.bos_id] + tok.encode(prompt or "")
        if stage == "base":
            new = model.generate(net, torch.tensor([ids]), 20, temperature=0.0, stop_id=tok.eos_id)[0]
            cmd, want = [prompt], tok.decode(ids + new) + "\n"
        else:  # chat over a pipe: one user turn per line, EOF ends
            msgs = [{"role": "user", "content": "Hi there"}]
            chat_ids = tokenizer.render_chat(tok, msgs, add_generation_prompt=True)[0]
            new = model.generate(net, torch.tensor([chat_ids]), 20, temperature=0.0, stop_id=tok.end_id)[0]
            markers = {tok.end_id, *tok.role_ids.values()}  # never shown in an answer
            answer = tok.decode([t for t in new if t not in markers]).removeprefix(tokenizer.CONTENT_PREFIX)
            cmd, want = ["--chat"], answer + "\n"
        r = subprocess.run([sys.executable, "-I", "run.py", "m.bin", *cmd, "--temperature", "0", "--max-new-tokens", "20"],
                           cwd=alone, input="Hi there\n", capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == want and "tok/s" in r.stderr


def test_the_blob_records_the_checkpoints_stage_and_step(tok, tmp_path):
    net = model.Transformer(model.ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=tok.vocab_size, max_seq_len=64))
    export.write_blob(str(tmp_path / "m.bin"), net, "sft", 7, tok)
    header = run.load_blob(str(tmp_path / "m.bin"))[0]
    assert (header["stage"], header["step"]) == ("sft", 7)


def test_export_defaults_and_refusals(tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    shutil.copy(tok.model_file, tmp_path / "out" / "tok.model")
    net = tiny_model(tok.vocab_size)
    model.save_checkpoint("out/base.pt", net, stage="base")
    model.save_checkpoint("out/sft.pt", net, stage="sft")
    call_main(export, [])
    assert run.load_blob("out/model.bin")[0]["stage"] == "sft"  # the latest stage wins
    assert common.read_report("out")["runtime"]["stage"] == "sft"  # ... and is checked into out/report.json
    call_main(export, ["--format", "gguf"])
    assert Path("out/model.gguf").read_bytes()[:4] == b"GGUF"
    os.makedirs("run2")  # another run's checkpoint: its blob goes beside it, out/model.bin stays
    shutil.copy(tok.model_file, "run2/tok.model")
    model.save_checkpoint("run2/base.pt", net, stage="base")
    blob = Path("out/model.bin").read_bytes()
    call_main(export, ["--ckpt", "run2/base.pt"])
    assert run.load_blob("run2/model.bin")[0]["stage"] == "base" and Path("out/model.bin").read_bytes() == blob
    rm = model.Transformer(model.ModelArgs(**{**vars(net.args), "reward_head": True}))
    model.save_checkpoint("out/rm.pt", rm, stage="rm")
    for argv, words in [(["--ckpt", "out/rm.pt"], "reward model"), (["--ckpt", "out/none.pt"], "no checkpoint"),
                        (["--ckpt", "out/tok.model"], "not a file torch.save wrote"),
                        (["--ckpt", "elsewhere/none.pt"], "no checkpoint at elsewhere/none.pt")]:  # not its tok.model
        with pytest.raises(SystemExit) as e:
            call_main(export, argv)
        assert str(e.value.code).startswith("error: ") and words in str(e.value.code)
    Path("out/notes.txt").write_text("not a tokenizer")
    before = Path("out/base.pt").read_bytes()
    for argv, words in [(["--out", "out/base.pt"], "would overwrite"), (["--out", "out"], "is a directory"),
                        (["--tokenizer", "out/notes.txt"], "not a sentencepiece model"),
                        (["--format", "llama2c", "--out", "out/tok.model"], "would overwrite"),
                        (["--out", ""], "names no file"), (["--out", "new/"], "names no file"),
                        (["--out", "out/tok.vocab"], "would overwrite"),
                        (["--out", "out/report.md"], "would overwrite"),
                        (["--out", "out/train.bin"], "would overwrite"),  # the pretraining tokens
                        (["--format", "llama2c", "--out", "out/tokenizer.bin"], "another name"),
                        (["--out", "out/base.pt/x.bin"], "base.pt is a file, not a directory")]:
        with pytest.raises(SystemExit) as e:
            call_main(export, ["--ckpt", "out/base.pt", *argv])
        assert str(e.value.code).startswith("error: ") and words in str(e.value.code)
    assert Path("out/base.pt").read_bytes() == before
    report = Path("out/report.md").read_text()
    call_main(export, ["--ckpt", "out/base.pt", "--out", "out/base.bin"])  # a side blob: checked, not the report's
    assert run.load_blob("out/base.bin")[0]["stage"] == "base" and Path("out/report.md").read_text() == report
    model.save_checkpoint("out/moved.pt", net, stage="base", tokenizer="0123456789abcdef")  # another run's
    for argv in (["--ckpt", "out/moved.pt"], ["--ckpt", "out/moved.pt", "--format", "gguf"]):
        with pytest.raises(SystemExit) as e:
            call_main(export, argv)
        assert "another tokenizer" in str(e.value.code)
    with pytest.raises(model.CheckpointError, match="another tokenizer"):
        model.load_checkpoint("out/moved.pt", tokenizer=tok.fingerprint)
    model.save_checkpoint("out/same.pt", net, stage="base", tokenizer=tok.fingerprint)
    assert model.load_checkpoint("out/same.pt", tokenizer=tok.fingerprint)[1]["tokenizer"] == tok.fingerprint
    other = tiny_model(tok.vocab_size + 1)
    model.save_checkpoint("out/other.pt", other, stage="base")
    with pytest.raises(SystemExit) as e:
        call_main(export, ["--ckpt", "out/other.pt"])
    assert "vocab" in str(e.value.code)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")
    with pytest.raises(OSError):
        with common.atomic_open(str(path), "wb") as f:
            f.write(b"half of the new")
            raise OSError(28, "No space left on device")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.bin"]
    with common.atomic_open(str(path), "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["model.bin"]


# -- the runtime section of the report card ---------------------------------------------------------------

@pytest.mark.parametrize("name, text", [("report.md", "# My notes\n\nhand-written\n"),
                                        ("report.json", '{"broken'), ("report.json", "[1, 2]")])
def test_a_report_file_that_is_not_ours_is_left_alone(tmp_path, capsys, name, text):
    """... and the scripts know it: their last line no longer points at a report they did not write."""
    (tmp_path / name).write_text(text)
    assert common.update_report(str(tmp_path), "runtime", {"x": 1}, "## Runtime") is False
    assert (tmp_path / name).read_text() == text and sorted(os.listdir(tmp_path)) == [name]
    assert f"{name} is not" in capsys.readouterr().err
    assert common.update_report(str(tmp_path / "new"), "runtime", {"x": 1}, "## Runtime") is True


def test_blob_export_writes_the_runtime_report(tok, tmp_path, capsys):
    torch.manual_seed(0)  # weights that float16 rounds: the check must compare against the rounded model
    net = model.Transformer(model.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size,
                                            max_seq_len=64))
    common.update_report(str(tmp_path), "sft", {"qa_seen": 0.5}, "## SFT")  # another stage's section survives
    path = export_blob(tmp_path, net, tok, stage="sft")
    assert "checked with run.py" in capsys.readouterr().out
    report = common.read_report(str(tmp_path))
    m = report["runtime"]
    assert report["sft"] == {"qa_seen": 0.5}
    assert m["parity_max_abs_logit_diff"] < 1e-4 and m["tok_per_s"] > 0 and m["stage"] == "sft"
    assert m["blob_bytes"] == path.stat().st_size
    assert m["run_py_lines"] == len((ROOT / "run.py").read_text().splitlines())
    assert m["parity_positions"] > 5 and m["generated_tokens"] == 64 - m["parity_positions"] and m["wall_s"] > 0
    md = (tmp_path / "report.md").read_text()
    assert "two files" in md and f"{m['run_py_lines']} lines" in md and "## SFT" in md
    # the float32 weights the checkpoint holds differ from the blob's: PyTorch on those would not agree as well
    header, weights, _ = run.load_blob(str(path))
    ids = list(range(3, 3 + m["parity_positions"]))
    with torch.no_grad():
        unrounded = np.abs(net(torch.tensor([ids]))[0].numpy() - run.Transformer(header["model_args"], weights).forward(ids, 0))
    assert unrounded.max() > 10 * m["parity_max_abs_logit_diff"]


def test_runtime_check_sees_a_damaged_weight(tok, tmp_path):
    net = tiny_model(tok.vocab_size)
    path = export_blob(tmp_path, net, tok)
    blob = bytearray(path.read_bytes())
    header, _, _ = run.load_blob(str(path))
    entry = next(e for e in header["tensors"] if e["name"] == "layers.0.attention.wq.weight")
    blob[entry["offset"]:entry["offset"] + 64] = bytes(64)  # zero 32 weights of one matrix
    path.write_bytes(bytes(blob))
    m = export.check_blob(str(path), net, "base", 0, 0.0)
    assert m["parity_max_abs_logit_diff"] > 1e-2


def read_llama2c(path, tok_path):
    """Parse llama2.c's legacy .bin and tokenizer.bin the way run.c reads them."""
    raw = Path(path).read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    f = np.frombuffer(raw, "<f4", offset=28)
    shared, vocab, hs = vocab > 0, abs(vocab), dim // n_heads
    sizes = [("tok_embeddings", vocab * dim), ("attention_norm", n_layers * dim), ("wq", n_layers * dim * dim),
             ("wk", n_layers * dim * n_kv * hs), ("wv", n_layers * dim * n_kv * hs), ("wo", n_layers * dim * dim),
             ("ffn_norm", n_layers * dim), ("w1", n_layers * dim * hidden), ("w2", n_layers * hidden * dim),
             ("w3", n_layers * hidden * dim), ("norm", dim), ("cos", seq_len * hs // 2), ("sin", seq_len * hs // 2)]
    sizes += [] if shared else [("output", vocab * dim)]
    parts, at = {}, 0
    for name, n in sizes:
        parts[name], at = f[at:at + n], at + n
    assert at == len(f)  # nothing missing, nothing left over
    t = Path(tok_path).read_bytes()
    pieces, at = [], 4
    for _ in range(vocab):
        score, n = struct.unpack("<fi", t[at:at + 8])
        pieces.append(t[at + 8:at + 8 + n].decode())
        at += 8 + n
    assert at == len(t) and struct.unpack("<i", t[:4])[0] == max(len(p.encode()) for p in pieces)
    return (dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len, shared), parts, pieces


@pytest.mark.parametrize("tied", [True, False])
def test_llama2c_export_holds_the_same_model(tied, tok, tmp_path):
    net = tiny_model(tok.vocab_size, tie_embeddings=tied)
    model.save_checkpoint(str(tmp_path / "base.pt"), net, stage="base")
    shutil.copy(tok.model_file, tmp_path / "tok.model")
    call_main(export, [str(tmp_path / "base.pt"), "--format", "llama2c", "--out", str(tmp_path / "l.bin")], ckpt_flag=True)
    cfg, parts, pieces = read_llama2c(tmp_path / "l.bin", tmp_path / "tokenizer.bin")
    a = net.args
    assert cfg == (a.dim, a.hidden_dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.max_seq_len, tied)
    # run.c's conventions: <unk> <s> </s> at 0 1 2, byte b at 3 + b, spaces as spaces
    assert pieces[1] == "\n<s>\n" and pieces[2] == "\n</s>\n"
    assert all(pieces[3 + b] == f"<0x{b:02X}>" for b in range(256)) and " " in pieces
    # the weights, un-flattened into model.py's names, run through run.py's forward pass in the new id order
    L, C = a.n_layers, a.dim
    w = {"tok_embeddings.weight": parts["tok_embeddings"].reshape(-1, C), "norm.weight": parts["norm"]}
    for name, key in [("attention_norm", "attention_norm"), ("wq", "attention.wq"), ("wk", "attention.wk"),
                      ("wv", "attention.wv"), ("wo", "attention.wo"), ("ffn_norm", "ffn_norm"),
                      ("w1", "feed_forward.w1"), ("w2", "feed_forward.w2"), ("w3", "feed_forward.w3")]:
        per_layer = parts[name].reshape(L, -1)
        for i in range(L):
            w[f"layers.{i}.{key}.weight"] = per_layer[i].reshape(net.state_dict()[f"layers.{i}.{key}.weight"].shape)
    if not tied:
        w["output.weight"] = parts["output"].reshape(-1, C)
    rt = run.Transformer(dict(vars(a)), w)
    old_of_new = export.llama2c_order(tok)
    new_of_old = np.argsort(old_of_new)
    ids = torch.randint(0, a.vocab_size, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = net(ids)[0].numpy()
    got = rt.forward(new_of_old[ids[0].numpy()].tolist(), 0)
    assert np.abs(got[:, new_of_old] - want).max() < 1e-3
    assert all(pieces[new_of_old[i]].replace(" ", "\u2581") == p for i, (p, _, k) in enumerate(tok.pieces())
               if k in (tokenizer.NORMAL, tokenizer.USER_DEFINED))
    assert export.made_by_export(tmp_path / "l.bin") and export.made_by_export(tmp_path / "tokenizer.bin")
    call_main(export, [str(tmp_path / "base.pt"), "--format", "llama2c", "--out", str(tmp_path / "l.bin")],
              ckpt_flag=True)  # the same export again: it replaces its own two files


def test_out_replaces_only_a_file_an_export_wrote(tok, tmp_path):
    """export.py overwrote any file --out named but a few (comparisons.jsonl, a person's labels, became a blob), and
    wrote a blob under a .gguf name. Now an existing file is replaced only when it is a blob, a GGUF file or a
    llama2.c model or tokenizer (recognised by their layout: a file one byte longer or shorter is not)."""
    model.save_checkpoint(str(tmp_path / "base.pt"), tiny_model(tok.vocab_size), stage="base")
    shutil.copy(tok.model_file, tmp_path / "tok.model")
    labels = '{"prompt": "Where does Anna live?", "chosen": "In Dunmore.", "rejected": "Red."}\n'
    for name in ("comparisons.jsonl", "rl_curve.jsonl", "notes"):
        (tmp_path / name).write_text(labels)
        with pytest.raises(SystemExit) as e:
            call_main(export, ["--ckpt", str(tmp_path / "base.pt"), "--out", str(tmp_path / name)])
        assert "not an export" in str(e.value.code) and (tmp_path / name).read_text() == labels
    for argv in (["--out", str(tmp_path / "chat.gguf")], ["--format", "gguf", "--out", str(tmp_path / "chat.bin")]):
        with pytest.raises(SystemExit) as e:
            call_main(export, ["--ckpt", str(tmp_path / "base.pt"), *argv])
        assert "does not match --format" in str(e.value.code) and not os.path.exists(argv[-1])
    for fmt, name in (("blob", "m.bin"), ("gguf", "m.gguf"), ("llama2c", "l.bin")):
        call_main(export, ["--ckpt", str(tmp_path / "base.pt"), "--format", fmt, "--out", str(tmp_path / name)])
        call_main(export, ["--ckpt", str(tmp_path / "base.pt"), "--format", fmt, "--out", str(tmp_path / name)])
        assert export.made_by_export(tmp_path / name) == fmt
    for fmt, name in (("llama2c", "m.bin"), ("blob", "l.bin"), ("blob", "tokenizer.bin")):  # another kind of export
        before = (tmp_path / name).read_bytes()
        with pytest.raises(SystemExit) as e:  # (llama2c's --out model.bin replaced the blob run.py reads)
            call_main(export, ["--ckpt", str(tmp_path / "base.pt"), "--format", fmt, "--out", str(tmp_path / name)])
        assert "export, which a" in str(e.value.code) and (tmp_path / name).read_bytes() == before
    for name in ("l.bin", "tokenizer.bin"):  # layouts, not names: cut or lengthened, neither is llama2.c's
        data = (tmp_path / name).read_bytes()
        for changed in (data[:-1], data + b"\0"):
            (tmp_path / "x").write_bytes(changed)
            assert not export.made_by_export(tmp_path / "x")
    shutil.copy(tmp_path / "m.bin", tmp_path / "tokenizer.bin")
    with pytest.raises(SystemExit, match="tokenizer.bin is a blob export, which a llama2c tokenizer would replace"):
        call_main(export, ["--ckpt", str(tmp_path / "base.pt"), "--format", "llama2c",
                           "--out", str(tmp_path / "n.bin")])


# -- found unchecked by a fifth mutation-testing pass (each test names the bug it kills) ----------------------

def test_the_next_turn_reuses_the_cache_through_the_last_answer(pairs, tok, monkeypatch):
    """run.py: chat's `cached = ids` (the answer's keys and values were computed again at every next turn)."""
    _, _, rtok, path = pairs["tied"]
    header, weights, _ = run.load_blob(str(path))
    rec = Recording(header["model_args"], weights)
    answer = tok.encode(" In Dunmore.") + [tok.end_id]  # re-encodes to itself, as the history holds it
    script = iter(answer + answer)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Where does Anna live?\nAnd Ben?\n"))
    run.chat(rec, rtok, argparse_defaults(), lambda logits: next(script), run.Stats())
    first = tokenizer.render_chat(tok, [{"role": "user", "content": "Where does Anna live?"}], True)[0]
    prefills = [start for start, tokens in rec.calls if len(tokens) > 1]
    assert prefills == [0, len(first) + len(answer) - 1]  # all but the <|end|> the model never saw fed


def test_a_marker_the_model_writes_mid_answer_is_neither_shown_nor_kept(pairs, tok, capsys):
    """run.py: chat printing every id but <|end|> (a role marker mid-answer shown as "<|user|>"), and keeping it
    in the history as text (the next turn then had the marker spelled out in the assistant's message)."""
    _, rt, rtok, _ = pairs["tied"]
    script = iter(tok.encode(" In") + [tok.role_ids["user"]] + tok.encode(" Dunmore.") + [tok.end_id])
    messages = run.chat(rt, rtok, argparse_defaults(prompt="Where does Anna live?"), lambda logits: next(script),
                        run.Stats())
    assert capsys.readouterr().out == "In Dunmore.\n" and messages[-1]["content"] == "In Dunmore."


def test_a_short_chat_keeps_every_turn_and_says_nothing_of_dropping_whatever_max_new_tokens(pairs, tok, monkeypatch,
                                                                                           capsys):
    """run.py: fit_context given all of --max-new-tokens as the room to leave (not at most half the context: with
    a large limit every old exchange was dropped at each turn); the "dropped" note's `<` as `<=` (said every turn)."""
    _, rt, rtok, _ = pairs["tied"]
    script = iter((tok.encode(" In Dunmore.") + [tok.end_id]) * 2)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Where does Anna live?\nAnd Ben?\n"))
    messages = run.chat(rt, rtok, argparse_defaults(max_new_tokens=1000), lambda logits: next(script), run.Stats())
    assert [m["content"] for m in messages] == ["Where does Anna live?", "In Dunmore.", "And Ben?", "In Dunmore."]
    assert "dropped" not in capsys.readouterr().err


def test_a_prompt_that_fills_the_whole_context_does_not_fit():
    """run.py: fit_context's `len(ids) < ctx` as `<=` (a prompt of exactly ctx tokens was accepted, then the
    answer had no room for a single token)."""
    class Chars:  # one id per character
        bos_id, end_id, content_prefix = 1, 2, " "
        role_ids = {"system": 3, "user": 4, "assistant": 5}
        encode = staticmethod(lambda text: [ord(c) for c in text])
    msgs = [{"role": "user", "content": "and Ben?"}]
    n = len(run.render_chat(Chars, msgs, True))
    assert run.fit_context(Chars, msgs, n, room=10) == (None, msgs)
    assert run.fit_context(Chars, msgs, n + 1, room=10) == (run.render_chat(Chars, msgs, True), msgs)


def test_a_system_message_must_leave_half_the_context(pairs, capsys):
    """run.py: the --system check at the whole context, not half (a system message of 60 of 96 tokens passed,
    leaving the question and answer almost nothing)."""
    _, rt, rtok, _ = pairs["tied"]
    ctx, system = rt.a["max_seq_len"], "Be brief."
    while len(run.render_chat(rtok, [{"role": "system", "content": system}], True)) < 0.6 * ctx:
        system += " Be brief."
    with pytest.raises(SystemExit) as e:
        run.chat(rt, rtok, argparse_defaults(prompt="hi", system=system), lambda logits: rtok.end_id, run.Stats())
    assert "--system message is too long" in str(e.value.code)


def test_tokens_per_second_add_up_over_a_chats_turns(monkeypatch, capsys):
    """run.py: Stats.timed setting its seconds instead of adding them (a chat's tok/s: every turn's tokens over the
    last turn's time)."""
    clock = iter([0.0, 1.0, 10.0, 12.0])  # turn one's first token and end, turn two's
    monkeypatch.setattr(run, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: next(clock))}))
    stats = run.Stats()
    assert list(stats.timed(iter([5, 6, 7]))) == [5, 6, 7] and list(stats.timed(iter([8, 9]))) == [8, 9]
    stats.report()
    assert "achieved tok/s: 1.0 (3 tokens in 3.00 s)" in capsys.readouterr().err


def test_a_prompt_of_exactly_the_context_is_cut_to_leave_room_to_write(pairs, monkeypatch, capsys):
    """run.py: complete's `len(ids) >= ctx` as `>` (a prompt of exactly ctx tokens was kept whole: nothing could
    be generated, and no note said why)."""
    _, rt, rtok, _ = pairs["tied"]
    prompt = "Anna lives in Dunmore."
    n = 1 + len(rtok.encode(prompt))
    monkeypatch.setattr(rt, "a", {**rt.a, "max_seq_len": n})
    new = []
    run.complete(rt, rtok, prompt, argparse_defaults(max_new_tokens=5),
                 lambda logits: new.append(1) or int(logits.argmax()), run.Stats())
    assert f"keeping its last {n // 2}" in capsys.readouterr().err and len(new) == min(5, n - 1 - n // 2)


def test_a_stages_section_is_replaced_and_tagged_runs_are_grouped_by_tag(tmp_path):
    """common.py: update_report keeping a stage's old section (setdefault); _section_key without the tag (each
    tagged run's rm and rlhf sections apart, interleaved with another tag's)."""
    for stage in ("rlhf_b", "rm_a", "sft", "rlhf_a", "rm_b", "pretrain"):
        common.update_report(str(tmp_path), stage, {"n": 1}, f"## {stage} old")
    common.update_report(str(tmp_path), "sft", {"n": 2}, "## sft new")
    md = (tmp_path / "report.md").read_text()
    assert [line[3:] for line in md.splitlines() if line.startswith("## ")] == [
        "pretrain old", "sft new", "rm_a old", "rlhf_a old", "rm_b old", "rlhf_b old"]
    assert common.read_report(str(tmp_path))["sft"] == {"n": 2}


def test_an_empty_report_md_is_a_report_card_and_a_json_of_non_sections_is_not(tmp_path, capsys):
    """common.py: _read_sections' `if lines and ...` without `lines` (an empty report.md: IndexError traceback at
    the end of a run); read_report without its check of each entry (a report.json {"a": 1} was taken as ours and
    written over)."""
    (tmp_path / "report.md").write_text("")
    common.update_report(str(tmp_path), "sft", {"n": 1}, "## SFT")
    assert "## SFT" in (tmp_path / "report.md").read_text()
    other = tmp_path / "other"
    os.makedirs(other)
    (other / "report.json").write_text('{"a": 1}')
    common.update_report(str(other), "sft", {"n": 1}, "## SFT")
    assert (other / "report.json").read_text() == '{"a": 1}' and "report.json is not" in capsys.readouterr().err


def test_ctrl_c_outside_a_training_loop_is_one_line_and_status_130(capsys):
    """common.py: run_main's KeyboardInterrupt exit status 1 (a shell script, pipeline.sh, cannot tell an
    interrupted stage from a failed one)."""
    def main():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        common.run_main(main)
    assert e.value.code == 130 and "interrupted: the files already written are whole" in capsys.readouterr().err


def test_a_reader_that_stops_reading_ends_the_script_quietly():
    """common.py: run_main's BrokenPipeError handler without pointing stdout at /dev/null (the exit's own flush
    failed again: "Exception ignored ... BrokenPipeError" on stderr and status 120 after `| head`)."""
    # torch and model.py stubbed: run_main uses neither, and torch takes seconds to import
    code = ("import sys, types\n"
            "stub = types.SimpleNamespace(generate_many=None, peek_checkpoint=None, ContextError=ValueError)\n"
            "stub.distributed = stub\n"
            "sys.modules.update({'torch': stub, 'torch.distributed': stub, 'model': stub})\n"
            "import common\ndef main():\n    for _ in range(10**6):\n        print('x' * 100)\ncommon.run_main(main)\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 1 and err == b""


def test_a_marker_typed_as_text_is_split_as_run_py_splits_it_when_a_piece_crosses_the_split(tmp_path):
    """tokenizer.py: encode splitting a marker in text as "<|" + "end|>" (still not the marker's id, but no longer
    run.py's "<" + "|end|>": with a vocabulary that has the piece "<|", as text with "<|" in it teaches, the two
    encoders disagreed; the world's vocabulary has no such piece, so the parity tests never showed it)."""
    tok = tokenizer.train_tokenizer(["a <| b |> c"] * 300, str(tmp_path / "t"), 280)
    assert tok.sp.piece_to_id("<|") != tok.unk_id  # a piece across "<" and the rest
    header = export.blob_header(tiny_model(tok.vocab_size, dim=16, n_layers=1, n_heads=2), "base", 0, tok, [], 0)
    rtok = run.Tokenizer(header["tokenizer"], header["chat"])  # as run.py reads them from a blob
    for text in ["<|end|>", "x<|user|>y", "say <|assistant|> and <|system|>|end|>"]:
        assert tok.encode(text) == rtok.encode(text), text


def fake_tok(pieces, unk=0, bos=1, eos=2):
    return type("Tok", (), {"pieces": staticmethod(lambda: pieces), "unk_id": unk, "bos_id": bos, "eos_id": eos})


def test_llama2c_refuses_a_tokenizer_without_its_layout_in_one_line():
    """export.py: llama2c_order without its check of the 256 byte pieces (a KeyError traceback) or of <unk> <s>
    </s> at 0 1 2 (run.c, which hard-codes them, would have run a model with its special ids swapped)."""
    head = [("<unk>", 0.0, tokenizer.UNKNOWN), ("<s>", 0.0, tokenizer.CONTROL), ("</s>", 0.0, tokenizer.CONTROL)]
    byte = [(f"<0x{b:02X}>", 0.0, tokenizer.BYTE) for b in range(256)]
    words = [("a", -1.0, tokenizer.NORMAL), ("b", -2.0, tokenizer.NORMAL)]
    assert export.llama2c_order(fake_tok(head + words + byte)) == [0, 1, 2, *range(5, 261), 3, 4]
    for tok in (fake_tok(head + words + byte[:-1]), fake_tok([head[1], head[0], head[2]] + byte, unk=1, bos=0)):
        with pytest.raises(ValueError, match="llama2.c needs <unk>, <s>, </s> at ids 0, 1, 2 and 256 byte"):
            export.llama2c_order(tok)


def test_llama2c_max_token_length_counts_bytes_not_characters(tmp_path):
    """export.py: tokenizer.bin's max_token_length as the longest piece in characters (run.c sizes its merge
    buffer from it: a piece of 8 Chinese characters is 24 bytes, more than the 13 characters of <|assistant|>,
    and run.c would write past the buffer; the world's vocabulary is ASCII, where the two agree)."""
    tok = tokenizer.train_tokenizer(["中文中文中文中文 ab"] * 300, str(tmp_path / "t"), 290)
    net = tiny_model(tok.vocab_size, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=8)
    export.write_llama2c(str(tmp_path / "l.bin"), str(tmp_path / "tokenizer.bin"), net, tok)
    _, _, pieces = read_llama2c(tmp_path / "l.bin", tmp_path / "tokenizer.bin")  # checks max_token_length
    assert max(len(p.encode()) for p in pieces) > max(len(p) for p in pieces)


# -- the benchmark (run by hand: python tests/test_export_run.py) ------------------------------------------

def benchmark(directory="/tmp/twofiles_bench"):
    """A random model of llama2.c's stories15M shape, exported, then `run.py --bench` with 1 and 2 BLAS threads
    (OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset for that command only) and its peak RSS."""
    import types
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "stories15m_shape.bin")
    if not os.path.exists(path):
        train, _ = world.pretrain_docs(world.make_world(n_people=12))
        tok = tokenizer.train_tokenizer(train, os.path.join(directory, "tok"), vocab_size=512)
        pieces = tok.pieces() + [(f"x{i}", -1e3 - i, tokenizer.NORMAL) for i in range(32000 - tok.vocab_size)]
        fake = types.SimpleNamespace(pieces=lambda: pieces, unk_id=tok.unk_id, bos_id=tok.bos_id,
                                     eos_id=tok.eos_id, role_ids=tok.role_ids, end_id=tok.end_id)
        torch.manual_seed(0)
        net = model.Transformer(model.ModelArgs(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000,
                                                max_seq_len=256))
        export.write_blob(path, net, "base", 0, fake)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    size = os.path.getsize(path)
    # the peak is the child's own VmHWM: getrusage's ru_maxrss survives fork and exec on Linux, so a child of
    # this process (which holds torch) reported this process's 230-350 MB instead of run.py's ~115 MB
    peak = ("import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], "
            "run_name='__main__')\nfinally:\n    status = open('/proc/self/status').read()\n"
            "    print(f\"peak RSS {int(status.split('VmHWM:')[1].split()[0]) / 1024:.0f} MB\")\n")
    for threads in (1, 2):
        cmd = [sys.executable, "-c", peak, str(ROOT / "run.py"), path, "--bench", "--threads", str(threads)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        print(r.stdout.strip().replace("\n", " | "), r.stderr.strip())
    print(f"blob {size / 1e6:.1f} MB; RSS budget 2.5 x blob + 60 MB = {2.5 * size / 2**20 + 60:.0f} MB")


if __name__ == "__main__":
    benchmark()


# -- found unchecked by a sixth mutation-testing pass (each test names the mutant it kills) ---------------------

def test_a_four_byte_file_or_a_record_longer_than_its_maximum_is_not_a_llama2c_tokenizer(tmp_path):
    """export.py: made_by_export without `size > 4` (any 4-byte file passed for an empty tokenizer.bin), or
    without `n <= longest` (a record longer than max_token_length passed)."""
    (tmp_path / "note").write_bytes(b"abc\n")
    (tmp_path / "long").write_bytes(struct.pack("<ifi", 2, 0.0, 3) + b"abc")
    assert not export.made_by_export(tmp_path / "note") and not export.made_by_export(tmp_path / "long")
    (tmp_path / "fits").write_bytes(struct.pack("<ifi", 3, 0.0, 3) + b"abc")
    assert export.made_by_export(tmp_path / "fits")


def test_out_refuses_a_link_to_nowhere(tmp_path):
    """export.py: check_out_path's `lexists(out) and not isfile(out)` dropped (a dangling link was written through)."""
    os.symlink(tmp_path / "nowhere", tmp_path / "link.bin")
    with pytest.raises(ValueError, match="exists and is not a regular file"):
        export.check_out_path(str(tmp_path / "link.bin"), [], "blob")


# -- found unchecked by an eighth mutation-testing pass (each test names the mutant it kills) -------------------

def test_llama2c_names_its_tokenizer_as_out_was_given(tok, tmp_path, monkeypatch, capsys):
    """export.py: tokenizer.bin's path made from the absolute out dir (a relative --out l.bin was reported as
    written to l.bin and /abs/path/tokenizer.bin)."""
    model.save_checkpoint(str(tmp_path / "base.pt"), tiny_model(tok.vocab_size), stage="base")
    shutil.copy(tok.model_file, tmp_path / "tok.model")
    monkeypatch.chdir(tmp_path)
    call_main(export, ["--ckpt", "base.pt", "--format", "llama2c", "--out", "l.bin"])
    assert " to l.bin and tokenizer.bin (" in capsys.readouterr().out
    assert export.made_by_export(tmp_path / "tokenizer.bin") == "llama2c tokenizer"
