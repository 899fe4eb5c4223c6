import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tokenizer  # noqa: E402
import world  # noqa: E402

# The test models are tiny: one thread is as fast as two for them, and it cannot fall into OpenMP's
# spin-waiting when the other core is busy (which made a 3 s fixture take minutes on a loaded machine).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world():
    return world.make_world(n_people=12, seed=7)


@pytest.fixture(scope="session")
def tok(tmp_path_factory, tiny_world):
    """A tokenizer trained on the tiny world's documents (a second or two), shared by all tests."""
    train_docs, _ = world.pretrain_docs(tiny_world)
    return tokenizer.train_tokenizer(train_docs, str(tmp_path_factory.mktemp("tok") / "tok"), 600)


@pytest.fixture
def fake_trainer(tok):
    """train.py's train_tokenizer without the training: make(seen) is a stand-in that writes `tok`'s model (and a
    .vocab of `vocab`) where it would write its own, and collects the texts it is given in `seen`."""
    def make(seen=None, vocab="new pieces\n"):
        def fake(texts, prefix, *a):
            if seen is not None:
                seen.extend(texts)
            shutil.copy(tok.model_file, prefix + ".model")
            with open(prefix + ".vocab", "w") as f:
                f.write(vocab)
            return tokenizer.Tokenizer(prefix + ".model")
        return fake
    return make
