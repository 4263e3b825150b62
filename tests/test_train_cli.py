"""``fxcons train`` and the data sets: JSON output, exit status, adamw (drift only), text data
with the tiny Transformer, a wrong law injected into the annotation (exit 1)."""
import argparse
import json

import numpy as np
import pytest
import torch

import fxcons
from fxcons import data, train
from fxcons.lawset import LawFamily, LawSet, Term


def run_cli(capsys, *argv):
    """Through fxcons.cli when it wires `train`, else through a tiny argparse harness."""
    try:
        from fxcons.cli import main

        code = main(["train", *argv])
    except (ImportError, SystemExit):
        ap = argparse.ArgumentParser()
        train.add_parser(ap.add_subparsers(dest="cmd"))
        code = train.run(ap.parse_args(["train", *argv]))
    out = capsys.readouterr().out
    return code, json.loads(out)


RESNET = "models:resnet18_cifar?width=4"
FAST = ["--batch-size", "16", "--threads", "1", "--device", "cpu", "--json"]


def test_train_sgd_resnet_json(capsys):
    code, out = run_cli(capsys, RESNET, "--data", "digits", "--optimizer", "sgd", "--lr", "0.05",
                        "--steps", "4", *FAST)
    assert code == 0 and out["ok"] and out["flagged"] == []
    assert out["data_note"].startswith("sklearn digits 8x8 -> 3x32x32")
    assert out["steps"] == 4 and out["laws"] == 120 * 4 + 8 * 4 + 1  # with the classification head
    assert out["orthogonality_max"] < 1e-4           # exact laws, float32 gradients
    assert out["prediction_rel_error_max"] < 1e-5    # exact laws: one-step SGD identity
    assert 0 < out["drift_max"] < 1
    assert out["orthogonality_max_eps"] is not None and out["prediction_rel_error_max_eps"] is not None
    kinds = {f["kind"] for f in out["families"]}
    assert {"rescale", "scale", "translation"} <= kinds
    assert all(f["prediction_rel_error_max"] is not None for f in out["families"])


def test_train_adamw_text_transformer(capsys):
    code, out = run_cli(capsys, "models:tiny_transformer?vocab=24&num_classes=24&seq_len=12", "--data", "text",
                        "--optimizer", "adamw", "--lr", "0.003", "--steps", "3", *FAST)
    assert out["optimizer"] == "adamw" and out["prediction"].startswith("not predicted")
    assert out["prediction_rel_error_max"] is None
    assert out["drift_max"] > 0 and np.isfinite(out["loss_final"])
    assert out["untested_final"] >= 2 * 32  # the attention key biases: zero gradient, untested
    # exit status follows the flagged exact families (an engine law that is wrong fails here)
    assert code == (0 if out["ok"] else 1)


def test_train_wrong_law_exits_1(capsys, monkeypatch):
    real = fxcons.annotation.annotate

    def annotate_with_wrong_law(*a, **k):
        ann = real(*a, **k)
        wrong = LawFamily("fc rows alone", "rescale", "exact", "diag",
                          [Term("fc.weight", "sq0", 1.0, np.arange(10)[:, None])])
        ann.laws = LawSet(list(ann.laws.families) + [wrong], ann.laws.param_shapes)
        return ann

    monkeypatch.setattr(fxcons.annotation, "annotate", annotate_with_wrong_law)
    code, out = run_cli(capsys, RESNET, "--data", "synthetic", "--optimizer", "sgd-momentum", "--lr", "0.02",
                        "--steps", "2", "--weight-decay", "1e-4", "--clip", "1.0", *FAST)
    assert code == 1 and out["flagged"] == ["fc rows alone"] and not out["ok"]
    assert out["optimizer"] == "sgd-momentum" and "momentum" in out["prediction"]


def test_bad_arguments_are_errors():
    with pytest.raises(fxcons.FxconsError):
        train.run(argparse.Namespace(steps=0, batch_size=1, lr=0.1, every=1, device="cpu"))
    with pytest.raises(data.DataError, match="token ids"):
        data.make_dataset("digits", torch.zeros(2, 8, dtype=torch.long), (2, 10))


# ----------------------------------------------------------------------------- data

def test_digits_shapes():
    ds = data.make_dataset("digits", torch.zeros(2, 3, 32, 32), (2, 10))
    assert ds.inputs.shape == (1797, 3, 32, 32) and ds.targets.max() == 9 and ds.num_classes == 10
    assert torch.equal(ds.inputs[:, 0], ds.inputs[:, 2])
    assert abs(float(ds.inputs.mean())) < 0.2
    v = data.make_dataset("digits", torch.zeros(2, 16), (2, 3))
    assert v.inputs.shape == (1797, 16) and v.targets.max() == 2
    x, y = next(ds.batches(64, seed=1))
    assert x.shape == (64, 3, 32, 32) and y.shape == (64,)


def test_text_and_synthetic():
    text = data.corpus()
    assert len(text) > 10_000
    ids = data.encode("aab", 2)
    assert ids.tolist() == [0, 0, 1]
    ds = data.make_dataset("text", torch.zeros(2, 12, dtype=torch.long), (2, 24), vocab=24)
    assert ds.inputs.shape[1] == 12 and int(ds.inputs.max()) < 24 and ds.targets.shape == (len(ds),)
    # the label is the next character
    lm = data.make_dataset("text", torch.zeros(2, 12, dtype=torch.long), (2, 12, 24), vocab=24)
    assert torch.equal(lm.inputs[:, 1:], lm.targets[:, :-1])
    syn = data.make_dataset("synthetic", torch.zeros(2, 5), (2, 3))
    assert syn.inputs.shape == (4096, 5) and set(syn.targets.tolist()) == {0, 1, 2}
