"""``hf:`` specs: Hugging Face models built from configs (no network), captured with torch.export."""
from __future__ import annotations

import pytest
import torch

import fxcons
from fxcons.errors import SpecError
from fxcons.specs import load_spec

transformers = pytest.importorskip("transformers")
from fxcons.hf import build_hf  # noqa: E402

TINY = {
    "gpt2": "n_layer=1&n_embd=16&n_head=2&vocab_size=50&n_positions=16",
    "bert": "num_hidden_layers=1&hidden_size=16&num_attention_heads=2&intermediate_size=24&vocab_size=50"
            "&max_position_embeddings=16",
    "vit": "num_hidden_layers=1&hidden_size=16&num_attention_heads=2&intermediate_size=24&image_size=32"
           "&patch_size=8&num_labels=10",
    "llama": "num_hidden_layers=1&hidden_size=16&intermediate_size=24&num_attention_heads=4"
             "&num_key_value_heads=2&vocab_size=50&max_position_embeddings=16",
    "t5": "num_layers=1&d_model=16&d_kv=8&num_heads=2&d_ff=24&vocab_size=50",
}


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Building must never reach the hub."""
    def refuse(*a, **k):
        raise AssertionError("from_pretrained called")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(transformers.PretrainedConfig, "from_pretrained", classmethod(refuse))


def test_defaults_are_the_checkpoint_configs():
    lm = build_hf("gpt2", {"n_layer": 1})  # only the depth overridden
    c = lm.model.config
    assert (c.n_embd, c.n_head, c.vocab_size, c.n_positions, c.activation_function) == (768, 12, 50257, 1024, "gelu_new")
    assert type(lm.model).__name__ == "GPT2LMHeadModel" and lm.head == "classification"
    assert lm.model.lm_head.weight is lm.model.transformer.wte.weight
    bert = transformers.BertConfig()
    assert (bert.vocab_size, bert.hidden_size, bert.num_hidden_layers) == (30522, 768, 12)
    from fxcons.hf import RECIPES

    assert RECIPES["vit"].defaults["num_labels"] == 1000  # google/vit-base-patch16-224: ImageNet
    t5 = RECIPES["t5"].defaults
    assert (t5["d_model"], t5["d_ff"], t5["num_heads"], t5["num_layers"]) == (512, 2048, 8, 6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_build_and_oracle(name):
    lm = load_spec(f"hf:{name}?{TINY[name]}")
    m = lm.model
    assert m.training and lm.frontend == "export"
    assert getattr(m.config, "use_cache", False) is False
    assert m.config._attn_implementation == "sdpa"
    if name == "vit":
        assert lm.example_inputs[0].shape == (2, 3, 32, 32)
    else:
        assert lm.example_inputs[0].shape == (2, 8) and lm.example_inputs[0].dtype == torch.long
    if name == "t5":
        assert lm.example_kwargs["decoder_input_ids"].shape == (2, 8)
    ann = fxcons.annotate(m, lm.example_inputs, head=lm.head, example_kwargs=lm.example_kwargs or None,
                          frontend=lm.frontend)
    assert ann.frontend == "export"
    counts = ann.counts()
    assert counts["attention_vo"] > 0
    if name != "llama":  # RoPE leaves no query/key GL law
        assert counts["attention_qk"] > 0
    rep = ann.verify(probes=2)
    assert rep.ok, [(f.name, f.max_ratio) for f in rep.families if not f.passed]
    assert rep.max_ratio_exact < 1e-9


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
def test_eager_and_sdpa_attention_give_the_same_laws(name):
    def counts(attn):
        lm = load_spec(f"hf:{name}?{TINY[name]}&attn={attn}")
        assert lm.model.config._attn_implementation == attn
        ann = fxcons.annotate(lm.model, lm.example_inputs, head=lm.head,
                              example_kwargs=lm.example_kwargs or None, frontend=lm.frontend)
        return {k: v for k, v in ann.counts().items() if k != "translation"}

    assert counts("eager") == counts("sdpa")


def test_options_and_errors():
    lm = build_hf("bert", {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                           "intermediate_size": 24, "vocab_size": 50, "task": "base", "seq": 5, "batch": 3})
    assert type(lm.model).__name__ == "BertModel" and lm.head is None
    assert lm.example_inputs[0].shape == (3, 5)
    assert build_hf("bert-base-uncased", {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                                          "intermediate_size": 24, "vocab_size": 50}).name == "hf:bert"
    with pytest.raises(SpecError, match="not available offline"):
        build_hf("gpt-j", {})
    with pytest.raises(SpecError, match="no config field"):
        build_hf("gpt2", {"n_layers": 2})
    with pytest.raises(SpecError, match="attn"):
        build_hf("gpt2", {"attn": "flash"})


#: the other families the hf: spec builds (tiny configs): what each must show
MORE = {
    "roberta": {"attention_qk", "attention_vo", "scale", "translation"},   # post-LN BERT-like
    "distilbert": {"attention_qk", "attention_vo", "translation"},
    "qwen2": {"attention_vo", "rescale"},          # q/k/v biases + RoPE: no query/key law
    "mistral": {"rescale"},
    "gemma": {"rescale"},
    "opt": {"attention_qk", "attention_vo", "rescale", "translation"},
    "gpt_neox": {"attention_vo", "translation"},  # partial rotary
    "phi": {"attention_vo", "translation"},
    "bloom": {"rescale", "translation"},          # eager attention (Bloom has no sdpa path)
    "falcon": {"rescale"},
}


@pytest.mark.parametrize("name", sorted(MORE))
def test_more_families_build_and_pass_the_oracle(name):
    lm = load_spec(f"hf:{name}")
    assert lm.model.training and lm.frontend == "export" and lm.head == "classification"
    ann = fxcons.annotate(lm.model, lm.example_inputs, head=lm.head, example_kwargs=lm.example_kwargs or None,
                          frontend=lm.frontend)
    assert {k for k, v in ann.counts().items() if v} >= MORE[name]
    rep = ann.verify(probes=1)
    assert rep.ok, [(f.name, f.max_ratio) for f in rep.families if not f.passed]
    assert rep.max_ratio_exact < 1e-9
