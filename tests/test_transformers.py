"""Real Transformer blocks: every law family counted by hand from LAWS.md §3.3–3.6.

Each model is tiny (hidden 16) and built with one and with two layers. A family is keyed by
its kind and the modules of its parameters; the expected counts are derived below, next to
the model. Counting rules (LAWS.md):

* §3.3 a head of dimension d with biases: d(d+1)/2 query/key and d(d+1)/2 value/output entries
  (the bias is one more column, not one more row), d key-bias entries; one law per key/value
  group with grouped-query attention; RoPE leaves d/2 plane scalings per group for query/key.
* §3.1/§3.6 an affine norm unit j (γ_j, β_j) read only by Linear columns: one rescale law per
  feature; a SwiGLU hidden unit rescales W₃'s row against the down projection's column.
* §3.4 a (Layer/RMS)Norm's input: one scale law (eps) over every writer of that input, when
  every reader of the stream is a norm; with GPT-2's tied output matrix the final norm's
  affine compensates (LAWS.md §3.6).
* §3.5 LayerNorm translation: for a writer of the norm's input that reaches it with nothing
  but adds in between (no active dropout): 1ᵀW (one per input feature) and Σb; embedding row
  sums; softmax head: column sums of W and Σb.
"""
from __future__ import annotations

import pytest
import torch

import fxcons
from fxcons.derive import module_of
from fxcons.specs import load_spec

timm = pytest.importorskip("timm")
pytest.importorskip("transformers")

E, H = 16, 2  # hidden size and heads of the ViT / GPT-2 / BERT configs: head dim d = 8


def tri(d):
    return d * (d + 1) // 2


def families(ann) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for f in ann.families:
        key = (f.kind, tuple(sorted({module_of(p) for p in f.params})))
        out[key] = out.get(key, 0) + f.count
    return out


def check(ann, expected: dict, missing: dict | None = None):
    """The law families are exactly ``expected``; ``missing`` lists LAWS.md laws that fxcons
    does not find yet (documented, must stay absent rather than appear with another count)."""
    got = families(ann)
    for key, count in (missing or {}).items():
        if key in got:  # found since this test was written: it must have the derived count
            assert got.pop(key) == count, key
    assert got == expected
    rep = ann.verify(probes=2)
    assert rep.ok, [(f.name, f.max_ratio) for f in rep.families if not f.passed]
    assert rep.max_ratio_exact < 1e-9


def annotate_spec(spec):
    lm = load_spec(spec)
    return fxcons.annotate(lm.model, lm.example_inputs, head=lm.head, example_kwargs=lm.example_kwargs or None,
                           frontend=lm.frontend)


# ----------------------------------------------------------------------------- pre-LN ViT (timm)

def vit_expected(L):
    """timm VisionTransformer, 32×32 image, 8×8 patches (16 patches + class token = 17 tokens),
    E = 16, 2 heads of d = 8, MLP 32, 10 classes, no dropout, classification head."""
    exp = {
        # stream (§3.4, eps): patch conv, class token, position embedding and every block's
        # output projections write it; only LayerNorms read it
        ("scale", tuple(sorted(["patch_embed.proj", "cls_token", "pos_embed"]
                               + [f"blocks.{i}.{m}" for i in range(L) for m in ("attn.proj", "mlp.fc2")]))): 1,
        ("rescale", ("head", "norm")): E,  # final norm's (γ_j, β_j) against head column j
        ("translation", ("head",)): E + 1,  # softmax head: column sums and Σb
        ("translation", ("pos_embed",)): 17,  # one row sum per token (LayerNorm after)
    }
    for i in range(L):
        b = f"blocks.{i}"
        exp.update({
            ("attention_qk", (f"{b}.attn.qkv",)): H * tri(8),  # fused qkv: q and k rows of one Linear
            ("attention_vo", (f"{b}.attn.proj", f"{b}.attn.qkv")): H * tri(8),
            ("translation", (f"{b}.attn.qkv",)): H * 8,  # key-bias entries
            ("rescale", (f"{b}.attn.qkv", f"{b}.norm1")): E,
            ("rescale", (f"{b}.mlp.fc1", f"{b}.norm2")): E,  # fc1 → GELU → fc2: nothing more
            ("translation", (f"{b}.attn.proj",)): E + 1,  # 1ᵀW per input feature, Σb (LayerNorm next)
            ("translation", (f"{b}.mlp.fc2",)): 2 * E + 1,
        })
    # LAWS.md laws the translation pass does not find yet: the patch conv's 1ᵀW (3·8·8) and Σb,
    # the class token's sum, and class token − pos_embed[0] (§3.6, they reach the stream only
    # through their sum)
    missing = {("translation", ("patch_embed.proj",)): 3 * 8 * 8 + 1, ("translation", ("cls_token",)): 1,
               ("translation", ("cls_token", "pos_embed")): E}
    return exp, missing


@pytest.mark.parametrize("L", [1, 2])
def test_pre_ln_vit(L):
    m = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=E, depth=L,
                                                         num_heads=H, mlp_ratio=2, num_classes=10)
    ann = fxcons.annotate(m, (torch.randn(2, 3, 32, 32),), head="classification")
    check(ann, *vit_expected(L))


# ----------------------------------------------------------------------------- GPT-2 (tied)

def gpt2_expected(L):
    """GPT-2, E = 16, 2 heads of d = 8, vocab 50, 16 positions, Conv1D layout, dropout 0.1
    everywhere (training), lm_head tied to wte, softmax head."""
    writers = ["transformer.wte", "transformer.wpe", "transformer.ln_f"] + \
        [f"transformer.h.{i}.{m}" for i in range(L) for m in ("attn.c_proj", "mlp.c_proj")]
    # stream scale α (eps): every writer (wte too) by α; the tied lm_head then scales the logits
    # by α and ln_f's (γ_f, β_f) by 1/α undoes it. ln_f against wte's columns alone is no law.
    exp = {("scale", tuple(sorted(writers))): 1}
    for i in range(L):
        h = f"transformer.h.{i}"
        exp.update({
            ("attention_qk", (f"{h}.attn.c_attn",)): H * tri(8),  # c_attn columns (Conv1D: W is in×out)
            ("attention_vo", (f"{h}.attn.c_attn", f"{h}.attn.c_proj")): H * tri(8),
            ("translation", (f"{h}.attn.c_attn",)): H * 8,  # key bias inside the fused bias
            ("rescale", (f"{h}.attn.c_attn", f"{h}.ln_1")): E,
            ("rescale", (f"{h}.ln_2", f"{h}.mlp.c_fc")): E,
        })
    # Σ_v wte[v] − Σ_t wpe[t] (16, classification head, §3.6): not found yet. No LayerNorm
    # translation for c_proj / wpe: the residual dropout masks a shift coordinate by coordinate.
    return exp, {("translation", ("transformer.wpe", "transformer.wte")): E}


@pytest.mark.parametrize("L", [1, 2])
def test_gpt2_tied(L):
    ann = annotate_spec(f"hf:gpt2?n_layer={L}&n_embd={E}&n_head={H}&vocab_size=50&n_positions=16")
    assert ann.frontend == "export" and ann.tied == {"transformer.wte.weight": ("lm_head.weight",)}
    check(ann, *gpt2_expected(L))
    # tied parameter with conflicting uses: no per-row sum of wte, no ln_f-vs-wte rescaling
    for f in ann.families:
        assert set(f.params) != {"transformer.ln_f.weight", "transformer.ln_f.bias", "transformer.wte.weight"}
        assert not (f.kind == "translation" and f.params == ["transformer.wte.weight"])


# ----------------------------------------------------------------------------- LLaMA

def llama_expected(L):
    """LLaMA, hidden 16, 4 query heads and 2 key/value heads of d = 4 (GQA), RoPE, SwiGLU
    (intermediate 24), RMSNorm written with pow/mean/add eps/rsqrt/mul, untied lm_head, no
    biases, no dropout."""
    stream = ["model.embed_tokens"] + [f"model.layers.{i}.{m}" for i in range(L)
                                       for m in ("self_attn.o_proj", "mlp.down_proj")]
    exp = {
        ("scale", tuple(sorted(stream))): 1,  # RMSNorm forgets the stream's scale (eps)
        ("rescale", ("lm_head", "model.norm")): 16,
        ("translation", ("lm_head",)): 16,  # softmax head: column sums (no bias); RMSNorm: none
    }
    for i in range(L):
        p = f"model.layers.{i}"
        a = f"{p}.self_attn"
        exp.update({
            # RoPE: only the plane scalings survive: 2 groups × d/2 = 2 planes
            ("rescale", (f"{a}.k_proj", f"{a}.q_proj")): 2 * 2,
            ("attention_vo", (f"{a}.o_proj", f"{a}.v_proj")): 2 * tri(4),  # one law per group
            ("rescale", (f"{p}.input_layernorm", f"{a}.k_proj", f"{a}.q_proj", f"{a}.v_proj")): 16,
            ("rescale", (f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj", f"{p}.post_attention_layernorm")): 16,
            ("rescale", (f"{p}.mlp.down_proj", f"{p}.mlp.up_proj")): 24,  # SwiGLU: W₃ (up) unit only
        })
    return exp, {}


@pytest.mark.parametrize("L", [1, 2])
def test_llama(L):
    ann = annotate_spec(f"hf:llama?num_hidden_layers={L}&hidden_size=16&intermediate_size=24"
                        "&num_attention_heads=4&num_key_value_heads=2&vocab_size=50&max_position_embeddings=16")
    check(ann, *llama_expected(L))
    assert not [f for f in ann.families if f.kind == "attention_qk"]  # RoPE
    assert not any("gate_proj" in p and f.kind == "rescale" and "down_proj" in " ".join(f.params)
                   for f in ann.families for p in f.params)  # silu(xW₁): W₁ never rescales


# ----------------------------------------------------------------------------- BERT (post-LN)

def bert_expected(L):
    """BERT, post-LN, E = 16, 2 heads of d = 8, intermediate 24, vocab 50 (padding_idx 0),
    16 positions, 2 token types, dropout 0.1, masked-LM head tied to the word embeddings."""
    exp = {
        # the last block's LayerNorm is read only by the MLM transform Linear
        ("rescale", (f"bert.encoder.layer.{L - 1}.output.LayerNorm", "cls.predictions.transform.dense")): E,
        # embeddings → LayerNorm directly (no dropout in between): row sums; the word table is
        # also the tied decoder, so only its total sum (softmax head); token type ids are all 0
        ("translation", ("bert.embeddings.position_embeddings",)): 16,
        ("translation", ("bert.embeddings.token_type_embeddings",)): 2,
        ("translation", ("bert.embeddings.word_embeddings",)): 1,
        ("translation", ("cls.predictions",)): 1,  # decoder bias: Σb (softmax head)
        # shift transfer: word + token_type + position embeddings are summed, so moving c from
        # every token-type row to every position row changes nothing: per feature,
        # Σ_t tt[t, i] − Σ_p pos[p, i] (E). The word table (padding_idx, and tied) takes no part.
        ("translation", ("bert.embeddings.position_embeddings", "bert.embeddings.token_type_embeddings")): E,
    }
    prev = "bert.embeddings.LayerNorm"
    for i in range(L):
        lay = f"bert.encoder.layer.{i}"
        s = f"{lay}.attention.self"
        exp.update({
            ("attention_qk", (f"{s}.key", f"{s}.query")): H * tri(8),
            ("attention_vo", (f"{lay}.attention.output.dense", f"{s}.value")): H * tri(8),
            ("translation", (f"{s}.key",)): H * 8,  # key bias
            # post-LN: each LayerNorm input is the previous LayerNorm's output (affine) plus a
            # sub-block's output projection; one global scale each (eps), its readers compensate
            ("scale", tuple(sorted([prev, f"{lay}.attention.output.dense", f"{s}.query", f"{s}.key",
                                    f"{s}.value"]))): 1,
            ("scale", (f"{lay}.attention.output.LayerNorm", f"{lay}.intermediate.dense",
                       f"{lay}.output.dense")): 1,
        })
        prev = f"{lay}.output.LayerNorm"
    # not a law: the embedding LayerNorm's input scale. The word embeddings have padding_idx:
    # the lookup gives row 0 no gradient, so they cannot rescale with the other writers.
    return exp, {}


@pytest.mark.parametrize("L", [1, 2])
def test_bert_post_ln(L):
    ann = annotate_spec(f"hf:bert?num_hidden_layers={L}&hidden_size={E}&num_attention_heads={H}"
                        "&intermediate_size=24&vocab_size=50&max_position_embeddings=16")
    check(ann, *bert_expected(L))


# ----------------------------------------------------------------------------- norms (§3.4)

def test_group_norm_per_group_scale():
    """conv1 → GroupNorm(2 groups of 2 channels) → ReLU → conv2 (1×1) → mean pool."""
    class GN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.gn, self.c2 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c2(self.gn(self.c1(x)).relu()).mean((2, 3))

    ann = fxcons.annotate(GN(), (torch.randn(2, 3, 5, 5),))
    exp = {
        ("scale", ("c1",)): 2,  # Σ_{c∈g} ‖W1[c]‖² + b1_c², one per group (eps)
        ("rescale", ("c2", "gn")): 4,  # γ_c, β_c against conv2's input channel c (through ReLU)
        ("translation", ("c1",)): 1,  # Σ b1 (the translation pass's candidate: all channels)
    }
    # LAWS.md §3.5 gives Σ_{c∈g} b1_c per group: 2 laws, of which only their sum is found yet
    check(ann, exp)
    (sc,) = [f for f in ann.families if f.kind == "scale"]
    assert sc.exactness == "eps" and [t.index.tolist() for t in sc.terms] == [[[0, 1], [2, 3]]] * 2


def test_norms_written_with_primitive_ops():
    """LayerNorm spelled (h − μ)/sqrt(var + eps)·g + b and nn.RMSNorm: the `+ eps` is the eps
    approximation, not a breaker."""
    class Prim(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.d, self.c = torch.nn.Linear(5, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 2)
            self.g, self.b = torch.nn.Parameter(torch.ones(6)), torch.nn.Parameter(torch.zeros(6))
            self.r = torch.nn.RMSNorm(6)

        def forward(self, x):
            h = self.a(x)
            mu = h.mean(-1, keepdim=True)
            var = ((h - mu) ** 2).mean(-1, keepdim=True)
            h = (h - mu) / torch.sqrt(var + 1e-5) * self.g + self.b
            return self.c(self.r(self.d(h)).relu())

    ann = fxcons.annotate(Prim(), (torch.randn(4, 5),))
    exp = {
        ("scale", ("a",)): 1,  # ‖a.W‖² + ‖a.b‖² (eps: the hand-written LayerNorm forgets it)
        ("rescale", ("b", "d", "g")): 6,  # (g_j, b_j) against d's column j
        ("scale", ("d",)): 1,  # RMSNorm input
        ("rescale", ("c", "r")): 6,  # RMSNorm weight_j against c's column j (through ReLU)
    }
    # the hand-written mean subtraction also makes a's 1ᵀW (5) and Σb (1) linear laws (§3.5)
    check(ann, exp, {("translation", ("a",)): 6})
    assert {f.exactness for f in ann.families if f.kind == "scale"} == {"eps"}


# ----------------------------------------------------------------------------- acceptance zoo

def _small(name):
    import torchvision
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    x = torch.randn(2, 3, 32, 32)
    if name == "torchvision_vit":
        return VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=10), x
    if name == "torchvision_swin":
        return SwinTransformer([4, 4], 16, [1, 1], [2, 2], [4, 4], num_classes=10), x
    if name == "timm_deit":
        return timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), x
    if name == "timm_convnext":
        return timm.create_model("convnext_tiny", depths=(1, 1, 1, 1), dims=(8, 8, 16, 16)), x
    del torchvision
    raise KeyError(name)


@pytest.mark.parametrize("name", ["torchvision_vit", "torchvision_swin", "timm_deit", "timm_convnext"])
def test_small_vision_transformers_pass_the_oracle(name):
    m, x = _small(name)
    ann = fxcons.annotate(m, (x,), head="classification")
    rep = ann.verify(probes=2)
    assert rep.ok and rep.max_ratio_exact < 1e-9
    counts = ann.counts()
    if name != "timm_convnext":
        assert counts["attention_qk"] > 0 and counts["attention_vo"] > 0
    if name == "torchvision_swin":  # its attention is a torch.fx.wrap'ed function: export sees inside
        assert ann.frontend == "export"
        # 2 stages of 1 block, 2 heads each, d = 8 then 16, with biases
        assert counts["attention_qk"] == 2 * tri(8) + 2 * tri(16) == counts["attention_vo"]


def test_torchvision_vit_translation_laws_hand_derived():
    """torchvision's ViT (nn.MultiheadAttention as a leaf, a class token expanded and
    concatenated, ``x.dim()`` asserts in every block): every stream writer's translation laws.
    32×32 image, 8×8 patches: T = 16 + 1 tokens, d = 16, MLP 32, 2 layers. The stream is read
    only by LayerNorms, so for each writer alone (LAWS.md §3.5): conv_proj's 3·8·8 column sums
    and bias sum, the class token's sum, pos_embedding's T row sums, and per layer out_proj's d
    column sums + bias sum, fc2's 32 column sums + bias sum, plus the d key-bias entries (§3.3);
    with a classification head, the head's d column sums and bias sum."""
    m, x = _small("torchvision_vit")
    T, d, L = 17, 16, 2
    for head, extra in ((None, 0), ("classification", d + 1)):
        ann = fxcons.annotate(m, (x,), head=head)
        assert ann.counts()["translation"] == 3 * 8 * 8 + 1 + 1 + T + L * ((d + 1) + (32 + 1) + d) + extra
    values = ann.evaluate(m)
    fams = {tuple(f.params): f for f in ann.families if f.kind == "translation"}
    tok, pos = fams[("class_token",)], fams[("encoder.pos_embedding",)]
    torch.testing.assert_close(values[tok.name], m.class_token.sum().reshape(1))
    torch.testing.assert_close(values[pos.name], m.encoder.pos_embedding.sum(-1).reshape(-1))
    for i, layer in enumerate(m.encoder.layers):
        out = fams[(f"encoder.layers.encoder_layer_{i}.self_attention.out_proj.weight",)]
        torch.testing.assert_close(values[out.name], layer.self_attention.out_proj.weight.sum(0))
    rep = ann.verify(probes=2)
    assert rep.ok and rep.max_ratio_exact < 1e-10


@pytest.mark.parametrize("spec", ["torchvision:vit_b_16", "torchvision:swin_t", "timm:vit_tiny_patch16_224",
                                  "timm:deit_tiny_patch16_224", "timm:convnext_tiny", "timm:eva02_tiny_patch14_224", "hf:gpt2?n_layer=2",
                                  "hf:bert?num_hidden_layers=2", "hf:vit?num_hidden_layers=2", "hf:llama",
                                  "hf:t5?num_layers=2"])
def test_full_size_models(spec):
    ann = annotate_spec(spec)
    rep = ann.verify(probes=1)
    assert rep.ok, [(f.name, f.max_ratio) for f in rep.families if not f.passed]
