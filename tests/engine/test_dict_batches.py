"""Dict batches: a Hugging Face classifier (a tiny random-init BERT, float64) fed dict items, a list of dicts, a
``datasets.Dataset`` in torch format and a DataLoader padding each batch with ``DataCollatorWithPadding``; the model
called as ``model(**features)`` and its ``ModelOutput`` read at ``logits``. The scores equal Captum's on the same
model wrapped to take tuples, and the float64 oracle's."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tracin_widgets.influence import TracInCPFast, TracInCPFastRandProj

from .oracle import TracInOracle, assert_scores_close

transformers = pytest.importorskip("transformers")
N_TRAIN, N_TEST, LENGTH, VOCAB = 24, 5, 9, 40
RTOL = 1e-5


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg).double().eval()


class Tuples(nn.Module):
    """The BERT called with tuples and returning a tensor: what Captum takes."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits


def _texts(n: int, seed: int) -> list[dict]:
    """Token ids of varying lengths (1 = [CLS]), as a tokenizer gives them."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        k = int(torch.randint(2, LENGTH + 1, (1,), generator=g))
        ids = [1, *torch.randint(4, VOCAB, (k - 1,), generator=g).tolist()]
        rows.append({"input_ids": ids, "label": int(torch.randint(0, 3, (1,), generator=g))})
    return rows


def _padded(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(rows), LENGTH, dtype=torch.long)
    mask = torch.zeros(len(rows), LENGTH, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return ids, mask, torch.tensor([r["label"] for r in rows])


class DictItems(Dataset):
    def __init__(self, ids, mask, y):
        self.ids, self.mask, self.y = ids, mask, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "label": self.y[i]}


@pytest.fixture(scope="module")
def bert_setup(tmp_path_factory):
    model = _bert()
    folder = tmp_path_factory.mktemp("bert")
    g = torch.Generator().manual_seed(1)
    paths = []
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        path = folder / f"checkpoint-{i}.pt"
        torch.save(model.state_dict(), path)
        paths.append(str(path))
    train, test = _texts(N_TRAIN, 2), _texts(N_TEST, 3)
    return model, paths, train, test


def _load_inner(m: nn.Module, path: str) -> float:
    m.bert.load_state_dict(torch.load(path))
    return 1.0


def _loss() -> nn.Module:
    return nn.CrossEntropyLoss(reduction="sum")


def _reference(model, paths, train, test, ref: str) -> torch.Tensor:
    wrapped = Tuples(model)
    tr, te = _padded(train), _padded(test)

    load, loss = _load_inner, _loss()
    if ref == "oracle":
        oracle = TracInOracle(wrapped, paths, load, final_fc_layer="bert.classifier", loss_fn=loss)
        return oracle.influence(te, tr)
    ci = pytest.importorskip("captum.influence")
    captum = ci.TracInCPFast(
        wrapped,
        wrapped.bert.classifier,
        TensorDataset(*tr),
        paths,
        checkpoints_load_func=load,
        loss_fn=loss,
        batch_size=8,
    )
    return captum.influence(te, k=None)


def _train_forms(train: list[dict], how: str):
    ids, mask, y = _padded(train)
    if how == "dataset":
        return DictItems(ids, mask, y), {"batch_size": 7}
    if how == "list":
        return [DictItems(ids, mask, y)[i] for i in range(len(y))], {"batch_size": 7}
    if how == "hf":
        datasets = pytest.importorskip("datasets")
        ds = datasets.Dataset.from_dict(
            {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "label": y.tolist()}
        )
        return ds.with_format("torch"), {"batch_size": 7}
    # a DataLoader padding each batch to its own longest row, labels under "labels"
    return DataLoader(train, batch_size=5, collate_fn=_collator()), {}


def _collator():
    import tempfile

    vocab = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    vocab.write("\n".join(["[PAD]", "[CLS]", "[SEP]", "[UNK]", *[f"t{i}" for i in range(4, VOCAB)]]))
    vocab.close()
    tokenizer = transformers.BertTokenizerFast(vocab.name)
    return transformers.DataCollatorWithPadding(tokenizer)


@pytest.mark.parametrize("ref", ["oracle", "captum"])
@pytest.mark.parametrize("how", ["dataset", "list", "hf", "collator"])
def test_bert_dict_batches_match_the_tuple_wrapped_model(bert_setup, how, ref):
    model, paths, train, test = bert_setup
    data, kw = _train_forms(train, how)
    eng = TracInCPFast(model, "classifier", data, paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), **kw)
    ids, mask, y = _padded(test)
    expect = _reference(model, paths, train, test, ref)
    assert_scores_close(eng.influence({"input_ids": ids, "attention_mask": mask, "labels": y}), expect, rtol=RTOL)
    # a test DataLoader of padded dict batches too
    loader = DataLoader(test, batch_size=2, collate_fn=_collator())
    assert_scores_close(eng.influence(loader), expect, rtol=RTOL)
    if ref == "oracle":
        wrapped = Tuples(model)
        oracle = TracInOracle(wrapped, paths, _load_inner, final_fc_layer="bert.classifier", loss_fn=_loss())
        assert_scores_close(eng.self_influence(), oracle.self_influence(_padded(train)), rtol=RTOL)


def test_bert_randproj_top_k_on_dict_batches(bert_setup):
    model, paths, train, test = bert_setup
    data, kw = _train_forms(train, "dataset")
    eng = TracInCPFastRandProj(
        model, "classifier", data, paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"), projection_dim=None, **kw
    )
    ids, mask, y = _padded(test)
    top = eng.influence({"input_ids": ids, "attention_mask": mask, "labels": y}, k=4)
    expect = _reference(model, paths, train, test, "oracle").topk(4, dim=1)
    assert torch.equal(top.indices, expect.indices)
    assert_scores_close(top.influence_scores, expect.values, rtol=RTOL)


class DictOut(nn.Module):
    """Returns a dict without "logits"."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"scores": self.fc(x), "hidden": x}


def test_an_output_without_logits_names_output_key(tmp_path):
    torch.manual_seed(0)
    model = DictOut()
    path = tmp_path / "c.pt"
    torch.save(model.state_dict(), path)
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    loss = nn.CrossEntropyLoss(reduction="sum")
    eng = TracInCPFast(model, "fc", TensorDataset(x, y), [str(path)], loss_fn=loss)
    with pytest.raises(
        TypeError,
        match=r"^the model returned a dict with keys \['scores', 'hidden'\] but no 'logits' for the test batch: pass "
        r"output_key='<the key of the outputs to differentiate>' to the engine",
    ):
        eng.influence((x[:2], y[:2]))
    assert eng.factors_ is None  # before any pass
    ours = TracInCPFast(model, "fc", TensorDataset(x, y), [str(path)], loss_fn=loss, output_key="scores")
    plain = nn.Sequential()
    plain.fc = model.fc
    ref = TracInCPFast(plain, "fc", TensorDataset(x, y), [str(path)], loss_fn=loss)
    assert_scores_close(ours.influence((x[:3], y[:3])), ref.influence((x[:3], y[:3])), rtol=1e-6)


def test_a_dict_loader_batch_without_labels_names_label_key(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    path = tmp_path / "c.pt"
    torch.save(model.state_dict(), path)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    rows = [{"input": x[i], "y": y[i]} for i in range(6)]
    loader = DataLoader(rows, batch_size=3, collate_fn=lambda items: torch.utils.data.default_collate(items))
    loss = nn.CrossEntropyLoss(reduction="sum")
    eng = TracInCPFast(model, "0", loader, [str(path)], loss_fn=loss)
    with pytest.raises(
        ValueError,
        match=r"^train_dataset batch is a dict batch \(keys \['input', 'y'\]\) without the key 'labels' or 'label' "
        r"holding the labels: pass label_key='<the key of the labels>' to the engine",
    ):
        eng.fit()
    ours = TracInCPFast(model, "0", loader, [str(path)], loss_fn=loss, label_key="y")
    ref = TracInCPFast(model, "0", TensorDataset(x, y), [str(path)], loss_fn=loss)
    assert_scores_close(ours.influence({"input": x[:2], "y": y[:2]}), ref.influence((x[:2], y[:2])), rtol=1e-6)


@pytest.mark.parametrize("bad", [3, b"labels"])
def test_label_key_types(tmp_path, bad):
    model = nn.Sequential(nn.Linear(4, 3))
    path = tmp_path / "c.pt"
    torch.save(model.state_dict(), path)
    data = TensorDataset(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"^label_key must be a key of the dict batches \(or None\)"):
        TracInCPFast(model, "0", data, [str(path)], loss_fn=nn.CrossEntropyLoss(), label_key=bad)


def test_the_engine_imports_neither_transformers_nor_datasets():
    import subprocess
    import sys

    code = (
        "import sys, tracin_widgets.influence as e; import torch; e.TracInCPFast; "
        "print(sorted(m for m in ('transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dict_items_are_part_of_the_cache_key():
    from collections import UserDict

    from tracin_widgets.influence._cache import dataset_fingerprint

    def key(value: float) -> str:
        x = torch.zeros(2000)
        x[1000] = value  # hidden in the tensor's repr ("...")
        rows = [UserDict({"x": x, "label": 1}) for _ in range(3)]
        return dataset_fingerprint(DataLoader(rows, batch_size=2))

    assert key(1.0) == key(1.0) != key(2.0)
