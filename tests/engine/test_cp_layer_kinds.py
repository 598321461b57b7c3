"""TracInCP's hooked per-example gradients without vmap, each against the float64 per-example loop oracle: a Linear
over tokens (token Gram and materialised), a Linear called twice, Embedding (padding, broadcast position ids),
EmbeddingBag (sum with weights, mean with padding), LayerNorm / GroupNorm / eval BatchNorm, a Conv2d as tokens,
in-place ops after a hooked layer, and a tiny Hugging Face BERT that never needs vmap; vmap stays the fallback
for tied weights and sequence-first layers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets.influence import TracInCP, TracInWarning
from tracin_widgets.influence.cp._grad_sample import _plan

from .oracle import TracInOracle, assert_scores_close
from .problems import save_perturbed_checkpoints

LOSS = nn.CrossEntropyLoss(reduction="none")


def _check(model, paths, train, test, layers=None, batch_size=5, **kw):
    """Influence and self-influence of TracInCP against the oracle (no TracInWarning: no vmap fallback)."""
    ours = TracInCP(model, TensorDataset(*train), paths, layers=layers, loss_fn=LOSS, batch_size=batch_size, **kw)
    oracle = TracInOracle(model, paths, layers=layers, loss_fn=LOSS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TracInWarning)
        got = ours.influence(test)
        self_inf = ours.self_influence()
    assert_scores_close(got, oracle.influence(test, train).float())
    assert_scores_close(self_inf, oracle.self_influence(train).float(), what="self-influence")
    return ours


@pytest.fixture(params=[True, False], ids=["gram", "materialised"])
def gram(request, monkeypatch):
    """Force the token-Gram trick on, or off, for every layer over tokens."""
    monkeypatch.setattr(_plan, "_gram_wins", lambda m, tokens, n_test: request.param)
    return request.param


class TokenNet(nn.Module):
    """Embedding (padding_idx) + BERT-like position embedding looked up once for all rows, a Linear over tokens,
    LayerNorm, a Linear run twice on 2-D inputs, a head on the mean token."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6, padding_idx=0)
        self.pos = nn.Embedding(7, 6)
        self.register_buffer("position_ids", torch.arange(7).unsqueeze(0), persistent=False)
        self.tok = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.twice = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, ids):
        h = self.emb(ids) + self.pos(self.position_ids[:, : ids.shape[1]])
        h = self.norm(torch.tanh(self.tok(h))).mean(1)
        return self.head(self.twice(torch.relu(self.twice(h))))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    torch.manual_seed(0)
    model = TokenNet()
    paths = save_perturbed_checkpoints(model, tmp_path_factory.mktemp("tokens"), 2, 0.1)
    ids = torch.randint(0, 11, (13, 7))
    ids[:4, 5:] = 0  # padding
    y = torch.randint(0, 3, (13,))
    return model, paths, (ids, y), (ids[:3].flip(1), y[:3])


def test_linear_over_tokens_embeddings_and_layernorm_match_the_oracle(tokens, gram):
    model, paths, train, test = tokens
    ours = _check(model, paths, train, test)
    paths_ = ours.gradient_paths()
    assert "vmap" not in " ".join(paths_.values())
    assert paths_["twice"] == "Linear over 2 tokens (token Gram, never materialised)" if gram else True
    assert paths_["tok"].startswith("Linear over 7 tokens (" + ("token Gram" if gram else "materialised"))
    assert paths_["pos"].startswith("Embedding over 7 tokens")
    assert paths_["head"] == "factorised Linear (g a^T, never materialised)"
    assert paths_["norm"] == "LayerNorm affine (closed form from hooks)"


def test_token_layers_in_chunks_of_other_lengths_match_the_oracle(tokens, gram):
    """Test rows of another token count than the training rows, and training chunks of 2 rows."""
    model, paths, train, _ = tokens
    test = (torch.randint(0, 11, (2, 4)), torch.tensor([0, 2]))
    _check(model, paths, train, test, layers=["emb", "tok", "twice"], batch_size=2, max_memory=1)


class BagNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag_sum = nn.EmbeddingBag(9, 4, mode="sum")
        self.bag_mean = nn.EmbeddingBag(9, 4, mode="mean", padding_idx=0)
        self.head = nn.Linear(8, 3)

    def forward(self, ids, weights):
        return self.head(torch.cat([self.bag_sum(ids, per_sample_weights=weights), self.bag_mean(ids)], 1))


def test_embedding_bags_match_the_oracle(tmp_path, gram):
    torch.manual_seed(1)
    model = BagNet()
    paths = save_perturbed_checkpoints(model, tmp_path, 2, 0.1)
    ids = torch.randint(0, 9, (12, 5))
    ids[0] = 0  # a bag of padding only: its mean is 0
    ids[1, 2:] = 0
    w = torch.rand(12, 5)
    y = torch.randint(0, 3, (12,))
    ours = _check(model, paths, (ids, w, y), (ids[2:5], w[2:5], y[2:5]))
    assert ours.gradient_paths()["bag_mean"].startswith("EmbeddingBag over 5 tokens")


class NormNet(nn.Module):
    """Conv2d -> eval BatchNorm2d -> in-place ReLU -> GroupNorm -> strided Conv2d -> BatchNorm1d -> head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.gn = nn.GroupNorm(2, 4)
        self.down = nn.Conv2d(4, 6, 3, stride=2, dilation=2)
        self.bn1d = nn.BatchNorm1d(6 * 4)
        self.head = nn.Linear(6 * 4, 3)

    def forward(self, x):
        h = self.gn(self.relu(self.bn(self.conv(x))))
        return self.head(self.bn1d(torch.relu(self.down(h)).flatten(1)))


def test_norm_layers_and_conv_tokens_match_the_oracle(tmp_path, gram):
    torch.manual_seed(2)
    model = NormNet()
    with torch.no_grad():
        for bn in (model.bn, model.bn1d):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
    paths = save_perturbed_checkpoints(model, tmp_path, 2, 0.1)
    x, y = torch.randn(11, 2, 8, 8), torch.randint(0, 3, (11,))
    ours = _check(model, paths, (x, y), (x[:3] * 0.7, y[:3]))
    found = ours.gradient_paths()
    assert found["bn"] == "BatchNorm2d affine (closed form from hooks)"
    assert found["gn"] == "GroupNorm affine (closed form from hooks)"
    assert found["bn1d"] == "BatchNorm1d affine (closed form from hooks)"
    want = "Conv2d over 4 output positions (token Gram, never materialised)" if gram else "Conv2d (materialised"
    assert found["down"].startswith(want)
    # a BatchNorm with batch statistics mixes the rows: not hooked (vmap gives the per-example gradients)
    model.bn.track_running_stats, model.bn.running_mean, model.bn.running_var = False, None, None
    assert not _plan.hookable_norm(model.bn)


class TinyBert(nn.Module):
    """A Hugging Face ``BertForSequenceClassification`` (random init) called as ``model(input_ids, mask)``."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=24,
            max_position_embeddings=16,
            num_labels=3,
            attn_implementation="eager",
        )
        self.model = BertForSequenceClassification(cfg)

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def test_hugging_face_bert_needs_no_vmap_and_matches_the_oracle(tmp_path):
    pytest.importorskip("transformers")
    torch.manual_seed(3)
    model = TinyBert().eval()
    paths = save_perturbed_checkpoints(model, tmp_path, 2, 0.02)
    ids = torch.randint(1, 50, (9, 8))
    mask = torch.ones_like(ids)
    mask[:3, 6:] = 0
    y = torch.randint(0, 3, (9,))
    ours = _check(model, paths, (ids * mask, mask, y), (ids[:2].flip(1), mask[:2], y[:2]), batch_size=4)
    found = ours.gradient_paths()
    assert "vmap" not in " ".join(found.values())
    assert found["model.bert.embeddings.position_embeddings"].startswith("Embedding over 8 tokens")
    _check(model, paths, (ids, mask, y), (ids[:2], mask[:2], y[:2]), layers=["model.classifier"])


class Tied(nn.Module):
    """An embedding whose weight is also the output layer's (tied): a hook would see one of the two uses."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.emb(ids).mean(1))


class SeqFirst(nn.Module):
    """A Linear over ``(tokens, batch, features)``: its first dimension is not the batch, so it is not hooked."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.lin(x.transpose(0, 1)).mean(0))


def test_tied_weights_and_sequence_first_layers_go_to_vmap(tmp_path):
    torch.manual_seed(4)
    tied = Tied()
    ids = torch.randint(0, 6, (3, 4))
    probes = [(k, lambda k=k: tied(ids[:k])) for k in (2, 3)]
    plan = _plan.make_plan(tied, ["emb.weight"], probes)
    assert plan.hooked == [] and plan.dense == ["emb.weight"]
    seq = SeqFirst()
    paths = save_perturbed_checkpoints(seq, tmp_path, 2, 0.1, prefix="seq-")
    x, y = torch.randn(10, 3, 3), torch.randint(0, 2, (10,))  # 3 tokens: as many as the probes' 3 rows
    found = _check(seq, paths, (x, y), (x[:3], y[:3])).gradient_paths()
    assert found == {"lin.weight": "torch.func.vmap(grad)", "lin.bias": "torch.func.vmap(grad)", "head": found["head"]}
