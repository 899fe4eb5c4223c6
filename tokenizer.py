"""
The tokenizer and THE chat template of twofiles (no torch here).

Text becomes token ids with a sentencepiece BPE vocabulary (Kudo & Richardson 2018) trained on the
pretraining text, set up so that nothing is lost: identity normalisation, whitespace kept exactly, no
dummy prefix space, and byte fallback for any character the vocabulary lacks, so decode(encode(x)) == x
for every string without U+2581 (sentencepiece's stand-in for a space, which decodes to one) or lone
surrogates (not text: valid_text makes them U+FFFD). The chat markers are user-defined symbols, one token
each, and only render_chat places them: a marker typed in text ("<|end|>" in a message, a web page or a
comparison) is spelled with ordinary pieces, so no text can end a turn or open a new one (the injection that
`parse_special=False` prevents in llama.cpp).

A conversation becomes ids with `render_chat`, the one place the chat format is written in Python (run.py
mirrors it, and export.py's GGUF writes it as a Jinja template for llama.cpp; tests keep all three identical):

    <s> <|system|> ␣content <|end|> <|user|> ␣content <|end|> <|assistant|> ␣content <|end|> ...

Each content is encoded after one space (CONTENT_PREFIX), as Llama 2's template puts a space between
`[/INST]` and the answer. Without it, the first word of a message is spelled with other pieces than the
same word inside a sentence ("Isaac" -> "I" + "saac", not "▁Isaac"), and the SFT model sampled at
temperature 1 began 30% of its answers with a garbled word ("Cappy to help!"; README, point 4).

    python tokenizer.py out/tok.model "Hello  world!"    # print ids and pieces
"""
import argparse
import functools
import hashlib
import json
import os
import re
import sys

import sentencepiece as spm

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
END_TOKEN = "<|end|>"  # end of a turn: the assistant learns to emit it, so generation knows when to stop
CONTENT_PREFIX = " "  # encoded before each message's content (see the docstring); readers of an answer strip it
SPECIAL_TOKENS = [*ROLE_TOKENS.values(), END_TOKEN]
SPECIAL_SPLIT = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")  # keeps the markers it splits at

SURROGATE = re.compile("[\ud800-\udfff]")  # lone UTF-16 halves: text that has no UTF-8

# sentencepiece's piece types (sentencepiece_model.proto), written into the blob and GGUF for run.py
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def valid_text(text):
    """`text` with each lone surrogate as U+FFFD: JSON may spell one ("\\ud800"), and non-UTF-8 bytes in argv arrive
    as them (PEP 383); they have no UTF-8, and sentencepiece stopped on them with a RuntimeError."""
    return SURROGATE.sub("\ufffd", text)


def train_tokenizer(texts, model_prefix, vocab_size, threads=0):
    """Train a BPE vocabulary on an iterable of documents; writes model_prefix.model (and sentencepiece's
    model_prefix.vocab, its pieces as text) and returns a Tokenizer.
    Documents are fed line by line (newlines are then bytes, <0x0A>), a long line in pieces (sentencepiece
    skips lines over max_sentence_length); it may return fewer pieces than asked on a small text, so the real
    size is read back from the model. threads: 0 for one per core."""
    def lines():
        for text in texts:
            for line in text.split("\n"):
                for i in range(0, len(line), 4096):  # 4096 characters are at most 16384 UTF-8 bytes
                    if line[i:i + 4096].strip():
                        yield valid_text(line[i:i + 4096])
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_prefix=model_prefix, model_type="bpe", vocab_size=vocab_size,
            normalization_rule_name="identity",  # no NFKC: what goes in comes out
            add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            split_digits=True,  # one token per digit: arithmetic sees the digits it adds
            byte_fallback=True, character_coverage=1.0,
            user_defined_symbols=SPECIAL_TOKENS,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            hard_vocab_limit=False,  # allow fewer pieces than asked instead of failing on small text
            input_sentence_size=2_000_000, shuffle_input_sentence=True, max_sentence_length=16384,
            num_threads=threads or os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
        need = re.search(r"required_chars\. \d+ vs (\d+)", str(e))  # (its advice names a flag we do not have)
        raise ValueError(f"cannot train a {vocab_size}-token vocabulary on this text: " + (
            f"its characters, the 256 byte pieces and the special tokens need at least {need[1]}: raise --vocab-size"
            if need else str(e).splitlines()[0])) from None
    return Tokenizer(model_prefix + ".model")


class Tokenizer:
    def __init__(self, model_file):
        if not os.path.isfile(model_file):
            raise ValueError(f"no tokenizer model at {model_file}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=model_file)
        except (RuntimeError, OSError) as e:  # e.g. tok.vocab passed for tok.model
            raise ValueError(f"{model_file} is not a sentencepiece model ({str(e).splitlines()[0][:100]})") from None
        self.model_file = model_file
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.role_ids = {role: self.sp.piece_to_id(tok) for role, tok in ROLE_TOKENS.items()}
        self.end_id = self.sp.piece_to_id(END_TOKEN)
        if self.end_id == self.unk_id or self.unk_id in self.role_ids.values():
            raise ValueError(f"{model_file} lacks the chat tokens {SPECIAL_TOKENS}: not a twofiles tokenizer")

    def encode(self, text):
        """str -> list of ids (no BOS/EOS: callers add them). A chat marker in the text is encoded as "<" and
        the rest ("|end|>") apart, so it never becomes the marker's id (run.py's encoder does the same)."""
        text = valid_text(text)
        if "<|" not in text:  # the usual case, in one call
            return self.sp.encode(text)
        parts = [p for part in SPECIAL_SPLIT.split(text) if part
                 for p in ([part[:1], part[1:]] if part in SPECIAL_TOKENS else [part])]
        return [i for ids in self.sp.encode(parts) for i in ids]

    def encode_batch(self, texts):
        """list of str -> list of lists of ids; sentencepiece runs the batch in C++ threads."""
        texts = [valid_text(t) for t in texts]
        plain = iter(self.sp.encode([t for t in texts if "<|" not in t], num_threads=os.cpu_count() or 1))
        return [self.encode(t) if "<|" in t else next(plain) for t in texts]  # a text with a marker: one by one

    def decode(self, ids):
        return self.sp.decode([int(i) for i in ids])

    @functools.cached_property
    def fingerprint(self):
        """A short hash of what maps text to ids (pieces, scores, types): checkpoints record the tokenizer they
        were trained with, so a different one of the same size is refused instead of producing garbage."""
        return hashlib.sha256(json.dumps(self.pieces()).encode()).hexdigest()[:16]

    def pieces(self):
        """(piece, score, type) for every id, for exporters: what run.py needs to encode and decode."""
        out = []
        for i in range(self.vocab_size):
            piece, score = self.sp.id_to_piece(i), self.sp.get_score(i)
            if self.sp.is_unknown(i):
                kind = UNKNOWN
            elif self.sp.is_control(i):
                kind = CONTROL
            elif self.sp.is_byte(i):
                kind = BYTE
            elif piece in SPECIAL_TOKENS:
                kind = USER_DEFINED
            else:
                kind = NORMAL
            out.append((piece, score, kind))
        return out


def check_messages(messages):
    """Raise ValueError with a readable reason unless messages is a valid conversation: a non-empty list of
    {"role", "content"} dicts, an optional system message first, then user and assistant alternating,
    starting with the user."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} needs a string 'content'")
        if m.get("role") not in ROLES:
            raise ValueError(f"message {i} has unknown role {m.get('role')!r} (expected one of {', '.join(ROLES)})")
    first = 1 if messages[0]["role"] == "system" else 0
    for i, m in enumerate(messages[first:]):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"turns must alternate user/assistant after an optional system message; "
                             f"message {first + i} is {m['role']!r}, expected {expected!r}")


def encode_content(tok, text):
    """A message's content as the chat template encodes it: after CONTENT_PREFIX."""
    return tok.encode(CONTENT_PREFIX + text)


def render_chat(tok, messages, add_generation_prompt=False):
    """The chat template: messages -> (ids, mask). mask[i] = 1 exactly on the tokens the assistant must learn
    to produce: its content and the <|end|> that closes its turn. With add_generation_prompt, the ids end
    with <|assistant|>, ready for the model to answer."""
    check_messages(messages)
    ids, mask = [tok.bos_id], [0]
    for m in messages:
        content = encode_content(tok, m["content"])
        learn = int(m["role"] == "assistant")
        ids += [tok.role_ids[m["role"]], *content, tok.end_id]
        mask += [0] + [learn] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(tok.role_ids["assistant"])
        mask.append(0)
    return ids, mask


def main(argv=None):
    p = argparse.ArgumentParser(description="How a tokenizer splits a text: its ids, then its pieces.")
    p.add_argument("model", help="a sentencepiece model, e.g. out/tok.model")
    p.add_argument("text", help="the text to encode (chat markers typed in it are spelled as text; a text that "
                   "begins with '-' goes after --: tokenizer.py out/tok.model -- -x)")
    args = p.parse_args(argv)
    try:
        tok = Tokenizer(args.model)
    except ValueError as e:
        sys.exit(f"error: {e}")
    ids = tok.encode(args.text)
    print(ids)
    print([tok.sp.id_to_piece(i) for i in ids])


if __name__ == "__main__":
    main()
