"""final_fc_layer semantics: hook exactly the given module's input[0], gradient w.r.t. the MODEL output (Captum).

The tutorial passes ``list(net.children())[-1]``, which for its ``Net`` is ``relu4`` (relu1..relu4 are registered after
fc3): Captum then uses fc2's pre-ReLU output as the activation.  We must give Captum's numbers AND warn, naming fc3.
"""

import re
import warnings

import pytest
import torch
from torch import nn

from .conftest import Cfg
from .oracle import assert_scores_close

FINAL_WARNING = r"(?is)(?=.*\bfc3\b)(?=.*(final|last))(?=.*linear)"


def _warned(rec):
    return [w for w in rec if re.search(FINAL_WARNING, str(w.message))]


@pytest.mark.parametrize("ref", ["oracle", "captum"])
@pytest.mark.parametrize("kind", ["fast", "rp"])
def test_tutorial_children_last_relu4_matches_captum_and_warns(eng, tb, cnn, kind, ref):
    model = cnn.model()
    final = list(model.children())[-1]
    assert isinstance(final, nn.ReLU) and final is model.relu4  # the tutorial's trap, kept on purpose
    cfg = Cfg(kind, "sum", final="relu4")
    with pytest.warns(Warning, match=FINAL_WARNING) as rec:
        obj = tb.engine(eng, cnn, cfg, model=model, final=final)
        scores = obj.influence(cnn.test, k=None)
    assert any(issubclass(w.category, eng.TracInWarning) for w in _warned(rec)), [str(w.message) for w in rec]
    assert_scores_close(scores, tb.ref_scores(ref, cnn, cfg))
    # and these really differ from true last-layer TracIn (otherwise the test would prove nothing)
    true_last = tb.oracle_scores(cnn, Cfg(kind, "sum"))
    assert (scores.double() - true_last).abs().max() > 1e-2 * true_last.abs().max()


def test_relu4_self_influence_matches_captum(eng, tb, cnn):
    cfg = Cfg("fast", "sum", final="relu4")
    with pytest.warns(Warning, match=FINAL_WARNING):
        obj = tb.engine(eng, cnn, cfg, final="relu4")
        s = obj.self_influence()
    assert_scores_close(s, tb.captum_self(cnn, cfg))
    assert_scores_close(s, tb.oracle_self(cnn, cfg))


@pytest.mark.parametrize("kind", ["fast", "rp"])
def test_fc3_as_string_or_module_same_scores_no_warning(eng, tb, cnn, kind):
    cfg = Cfg(kind, "sum", final="fc3")
    results = []
    for how in ("string", "module"):
        model = cnn.model()
        final = "fc3" if how == "string" else model.fc3
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            obj = tb.engine(eng, cnn, cfg, model=model, final=final)
            results.append(obj.influence(cnn.test, k=None))
            obj.self_influence()
        assert not _warned(rec), [str(w.message) for w in _warned(rec)]
    assert torch.equal(results[0], results[1])
    assert_scores_close(results[0], tb.oracle_scores(cnn, cfg))


def test_fast_final_layer_is_weight_only_no_bias(eng, tb, mlp):
    """TracInCPFast == TracInCP(layers=[final]) minus the bias term (Captum drops the bias)."""
    fast = tb.engine(eng, mlp, Cfg("fast", "sum")).influence(mlp.test, k=None)
    cp = tb.engine(eng, mlp, Cfg("cp", "none", layers=("fc2",))).influence(mlp.test, k=None)
    assert_scores_close(cp, tb.oracle_scores(mlp, Cfg("cp", "none", layers=("fc2",))))
    assert not torch.allclose(fast, cp, rtol=1e-3)


def test_dotted_final_layer_name(eng, tb, mlp):
    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.body = inner

        def forward(self, x):
            return self.body(x)

    model = Wrapped(mlp.model())

    def load(net, path):
        return mlp.load_func(net.body, path)

    obj = eng.TracInCPFast(
        model,
        "body.fc2",
        mlp.train_dataset(),
        mlp.ckpts,
        load,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=16,
    )
    assert_scores_close(obj.influence(mlp.test, k=None), tb.oracle_scores(mlp, Cfg("fast", "sum")))


def test_find_final_linear_layer(eng, cnn, mlp):
    net = cnn.model()
    name, module = eng.find_final_linear_layer(net, cnn.test[0][:2])
    assert name == "fc3" and module is net.fc3
    m = mlp.model()
    name, module = eng.find_final_linear_layer(m, mlp.test[0][:2])
    assert name == "fc2" and module is m.fc2
