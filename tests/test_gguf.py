"""export.py's GGUF file, read back with llama.cpp's own `gguf` package: every key with its type and value,
every tensor's name, shape, type and bytes; the tensors put back under model.py's names run run.py's forward
pass to PyTorch's logits; the Jinja chat template renders what tokenizer.render_chat renders.

When llama-cpp-python is installed, llama.cpp itself loads the file and must agree with us: logits at every
position, greedy tokens, the tokenization of the world corpus, and a chat answer through the template.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export  # noqa: E402
import model  # noqa: E402
import run  # noqa: E402
import tokenizer  # noqa: E402
import world  # noqa: E402
from test_export_run import TRICKY, call_main, tiny_model  # noqa: E402

LLAMA_NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output", "attn_norm": "attention_norm",
               "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
               "attn_output": "attention.wo", "ffn_norm": "ffn_norm", "ffn_gate": "feed_forward.w1",
               "ffn_up": "feed_forward.w3", "ffn_down": "feed_forward.w2"}  # written out again, not imported


def export_gguf(tmp_path, net, tok, stage="sft"):
    ckpt = tmp_path / f"{stage}.pt"
    shutil.copy(tok.model_file, tmp_path / "tok.model")
    model.save_checkpoint(str(ckpt), net, stage=stage)
    out = tmp_path / "model.gguf"
    call_main(export, ["--ckpt", str(ckpt), "--format", "gguf", "--out", str(out)])
    return out


def model_py_name(gguf_name):
    """blk.1.attn_q.weight -> layers.1.attention.wq.weight; token_embd.weight -> tok_embeddings.weight"""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"layers.{parts[1]}.{LLAMA_NAMES[parts[2]]}.weight"
    return f"{LLAMA_NAMES[parts[0]]}.weight"


def fields(reader):
    """{key: (value types, value)} of every key/value in the file, as the gguf package parses them."""
    return {k: ([t.name for t in f.types], f.contents()) for k, f in reader.fields.items()
            if not k.startswith("GGUF.")}


@pytest.fixture(scope="module")
def gqa_net(tok):
    return tiny_model(tok.vocab_size, n_kv_heads=2)  # 4 query heads share 2 key/value heads


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory, tok, gqa_net):
    return export_gguf(tmp_path_factory.mktemp("gguf"), gqa_net, tok)


@pytest.mark.parametrize("tied", [True, False])
def test_every_key_and_tensor(tied, tok, tmp_path):
    gguf = pytest.importorskip("gguf")
    net = tiny_model(tok.vocab_size, tie_embeddings=tied, n_kv_heads=2, rope_theta=5e5, norm_eps=1e-6)
    reader = gguf.GGUFReader(str(export_gguf(tmp_path, net, tok, stage="base")))
    a, pieces = net.args, tok.pieces()
    u32, f32, boolean, string = ["UINT32"], ["FLOAT32"], ["BOOL"], ["STRING"]
    want = {
        "general.architecture": (string, "llama"), "general.name": (string, "twofiles-base"),
        "general.file_type": (u32, 1), "general.alignment": (u32, 32),
        "llama.vocab_size": (u32, tok.vocab_size), "llama.context_length": (u32, 96),
        "llama.embedding_length": (u32, 64), "llama.block_count": (u32, 2), "llama.feed_forward_length": (u32, a.hidden_dim),
        "llama.attention.head_count": (u32, 4), "llama.attention.head_count_kv": (u32, 2),
        "llama.attention.layer_norm_rms_epsilon": (f32, pytest.approx(1e-6)),
        "llama.rope.freq_base": (f32, 5e5), "llama.rope.dimension_count": (u32, 16),
        "tokenizer.ggml.model": (string, "llama"),
        "tokenizer.ggml.tokens": (["ARRAY", "STRING"], [p for p, _, _ in pieces]),
        "tokenizer.ggml.scores": (["ARRAY", "FLOAT32"], [s for _, s, _ in pieces]),
        "tokenizer.ggml.token_type": (["ARRAY", "INT32"], [3 if k == 4 else k for _, _, k in pieces]),  # markers: control
        "tokenizer.ggml.unknown_token_id": (u32, 0), "tokenizer.ggml.bos_token_id": (u32, 1),
        "tokenizer.ggml.eos_token_id": (u32, 2), "tokenizer.ggml.eot_token_id": (u32, tok.end_id),
        "tokenizer.ggml.add_bos_token": (boolean, True), "tokenizer.ggml.add_eos_token": (boolean, False),
        "tokenizer.ggml.add_space_prefix": (boolean, False),
        "tokenizer.chat_template": (string, export.CHAT_TEMPLATE),
    }
    assert fields(reader) == want
    types = {p: k for p, _, k in pieces}  # control, user-defined for the chat markers, byte
    assert [types[t] for t in tokenizer.SPECIAL_TOKENS] == [4] * 4 and types["<s>"] == 3 and types["<0x0A>"] == 6
    # tensors: llama.cpp's names, ggml's dimension order, float16 matrices and float32 norms, bit for bit
    sd = net.state_dict()
    names = [t.name for t in reader.tensors]
    assert len(names) == len(set(names)) == 2 + 9 * a.n_layers + (not tied)
    assert ("output.weight" in names) == (not tied)  # tied: llama.cpp falls back to token_embd
    for t in reader.tensors:
        w = sd[model_py_name(t.name)]
        assert list(t.shape) == list(w.shape[::-1])  # ggml lists the fastest-varying dimension first
        assert t.tensor_type.name == ("F16" if w.dim() == 2 else "F32")
        assert t.data_offset % 32 == 0
        assert np.array_equal(t.data.reshape(w.shape), w.numpy().astype(t.data.dtype))


def test_gguf_weights_run_the_same_model(gguf_file, gqa_net, tok):
    """The tensors back under model.py's names, in run.py: the same logits as PyTorch (tied output)."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(gguf_file))
    w = {model_py_name(t.name): np.asarray(t.data).reshape(list(t.shape)[::-1]) for t in reader.tensors}
    rt = run.Transformer({k: getattr(gqa_net.args, k) for k in gqa_net.args.__dataclass_fields__}, w)
    ids = torch.randint(0, tok.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = gqa_net(ids)[0].numpy()
    assert np.abs(rt.forward(ids[0].tolist(), 0) - want).max() < 2e-3


def test_chat_template_renders_render_chat(tok, tiny_world):
    """The Jinja template, rendered as chat UIs render it (a sandbox, bos_token given), then tokenized the way
    llama.cpp tokenizes a chat (special tokens parsed): the ids of tokenizer.render_chat."""
    jinja2 = pytest.importorskip("jinja2.sandbox")
    template = jinja2.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        export.CHAT_TEMPLATE)

    def raise_exception(message):
        raise ValueError(message)

    conversations = world.sft_conversations(tiny_world)[:30]
    conversations.append([{"role": "system", "content": " lead and trail \n"}, {"role": "user", "content": "😀\t|>"},
                          {"role": "assistant", "content": ""}, {"role": "user", "content": "Q: x\nA:"}])
    for messages in conversations:
        for prompt in (False, True):
            text = template.render(messages=messages, add_generation_prompt=prompt, bos_token="<s>",
                                   raise_exception=raise_exception)
            assert text.startswith("<s>")
            # read as llama.cpp reads a chat prompt: the markers' text is their token (the contents hold none;
            # a marker typed in a message would become one here, as in every llama.cpp chat template)
            parts = tokenizer.SPECIAL_SPLIT.split(text[len("<s>"):])
            ids = [tok.bos_id] + [i for p in parts if p
                                  for i in ([tok.sp.piece_to_id(p)] if p in tokenizer.SPECIAL_TOKENS else tok.encode(p))]
            assert ids == tokenizer.render_chat(tok, messages, prompt)[0]
    with pytest.raises(ValueError, match="unknown role"):
        template.render(messages=[{"role": "tool", "content": "x"}], bos_token="<s>", raise_exception=raise_exception)


def test_gguf_export_refuses_a_reward_model(tok, tmp_path):
    rm = model.Transformer(model.ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, reward_head=True))
    model.save_checkpoint(str(tmp_path / "rm.pt"), rm, stage="rm")
    shutil.copy(tok.model_file, tmp_path / "tok.model")
    with pytest.raises(SystemExit) as e:
        call_main(export, ["--ckpt", str(tmp_path / "rm.pt"), "--format", "gguf", "--out", str(tmp_path / "x.gguf")])
    assert str(e.value.code).startswith("error: ") and "reward model" in str(e.value.code)
    assert not (tmp_path / "x.gguf").exists()


# -- llama.cpp itself (skipped unless llama-cpp-python is installed) ----------------------------------------

@pytest.fixture(scope="module")
def llama(gguf_file, gqa_net):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=gqa_net.args.max_seq_len, n_batch=gqa_net.args.max_seq_len,
                          logits_all=True, n_threads=1, verbose=False)
    yield llm
    llm.close()


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])  # (T, V)


def test_llama_cpp_logits_match_pytorch(llama, gqa_net, tok):
    """No permutation of wq/wk: llama.cpp's llama architecture rotates consecutive pairs, as model.py does.
    llama.cpp multiplies float16 weights by float16-rounded activations, hence a tolerance of 2e-3 relative."""
    ids = torch.randint(0, tok.vocab_size, (1, gqa_net.args.max_seq_len), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = gqa_net(ids)[0].numpy()
    got = llama_logits(llama, ids[0].tolist())
    scale = np.abs(want).max()
    assert scale > 5 and np.abs(got - want).max() < 2e-3 * scale  # measured 2e-4; the HF permutation: 5e-2
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95


def test_llama_cpp_greedy_tokens_match_pytorch(llama, gqa_net, tok):
    for text in ["Anna lives in", "Q: Where does Ben live?\nA:"]:
        prompt = [tok.bos_id] + tok.encode(text)
        want = model.generate(gqa_net, torch.tensor([prompt]), 40, temperature=0.0)[0]
        llama.reset()
        llama.eval(prompt)
        got = []
        for _ in range(40):
            got.append(int(np.argmax(llama.scores[llama.n_tokens - 1])))
            llama.eval(got[-1:])
        assert got == want


def test_llama_cpp_tokenizes_the_world_corpus_like_sentencepiece(llama, tok, tiny_world):
    train, val = world.pretrain_docs(tiny_world)
    for doc in train + val:
        assert llama.tokenize(doc.encode(), add_bos=False, special=False) == tok.encode(doc), doc[:80]
    assert llama.tokenize(b"Anna lives in") == [tok.bos_id] + tok.encode("Anna lives in")  # BOS, no space prefix
    # a chat marker in plain text is spelled out by both (the GGUF types the markers control, which
    # llama.cpp parses only on request, as in a chat prompt)
    for s in TRICKY + ["<|assistant|>", "x <|user|> y"]:
        assert llama.tokenize(s.encode(), add_bos=False, special=False) == tok.encode(s), repr(s)
    assert llama.tokenize(b"<|user|>", add_bos=False, special=True) == [tok.role_ids["user"]]


def test_llama_cpp_chat_uses_the_template_and_stops_at_end(llama, gqa_net, tok):
    """create_chat_completion renders tokenizer.chat_template from the file: the same prompt ids as
    render_chat, and the same greedy answer as run.py's chat."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where does Anna live?"}]
    prompt = tokenizer.render_chat(tok, messages, add_generation_prompt=True)[0]
    want = model.generate(gqa_net, torch.tensor([prompt]), 24, temperature=0.0, stop_id=tok.end_id)[0]
    out = llama.create_chat_completion(messages=messages, temperature=0.0, max_tokens=24, repeat_penalty=1.0)
    assert out["usage"]["prompt_tokens"] == len(prompt)
    markers = {tok.end_id, *tok.role_ids.values()}  # structure, not text: neither shows them in an answer
    assert out["choices"][0]["message"]["content"] == tok.decode([t for t in want if t not in markers])
    assert out["choices"][0]["finish_reason"] == ("stop" if want[-1] == tok.end_id else "length")


def test_tensors_of_sizes_off_the_alignment_are_padded_to_it(tok, tmp_path):
    """export.py: write_gguf's offsets advanced by each tensor's bytes, not rounded up to GGUF_ALIGN, or no padding
    written after a tensor (a fifth mutation-testing pass). Every tensor of the usual shapes is a multiple of 32
    bytes, so only a model of dim 20 (a norm of 80 bytes) shows either: misaligned offsets, or data read from
    the wrong place."""
    gguf = pytest.importorskip("gguf")
    net = tiny_model(tok.vocab_size, dim=20, n_heads=2, n_kv_heads=1)
    reader = gguf.GGUFReader(str(export_gguf(tmp_path, net, tok, stage="base")))
    sd = net.state_dict()
    assert any(t.n_bytes % 32 for t in reader.tensors)  # the case the usual shapes never make
    for t in reader.tensors:
        w = sd[model_py_name(t.name)]
        assert t.data_offset % 32 == 0, t.name
        assert np.array_equal(t.data.reshape(w.shape), w.numpy().astype(t.data.dtype)), t.name
