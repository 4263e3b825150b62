"""Hugging Face transformers models built from configs (random weights, no network).

``build_hf(name, opts)`` backs the ``hf:NAME[?key=val&...]`` model spec. Each name maps to a
Config class constructed with the published defaults of one checkpoint (gpt2, bert, vit, t5;
never downloaded) or with tiny sizes of our own (llama, roberta, distilbert, qwen2, mistral,
gemma, opt, gpt_neox, phi, bloom, falcon), and a model class; options override config fields (``hf:gpt2?n_layer=2&n_embd=64``). Three options are
not config fields:

* ``attn``: ``sdpa`` (default) or ``eager`` (explicit matmul-softmax-matmul attention);
* ``task``: ``base`` for the bare backbone instead of the default head model;
* ``batch`` / ``seq``: example input size (token ids, batch 2 x seq 8 by default).

Models are in training mode (dropout active, as LAWS.md §1 analyses training) with
``use_cache=False``. Language-model and classifier heads set ``head="classification"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import SpecError
from .specs import LoadedModel


@dataclass(frozen=True)
class _Recipe:
    config: str  # transformers Config class name
    defaults: dict  # the checkpoint's published config values (tiny configs: our own sizes)
    model: str  # model class with its head
    base: str  # bare backbone class
    inputs: str  # "tokens", "pixels" or "seq2seq"
    checkpoint: str  # what the defaults reproduce (documentation only)
    attn: str = "sdpa"  # default attention implementation (Bloom has no sdpa path)


RECIPES: dict[str, _Recipe] = {
    "gpt2": _Recipe("GPT2Config", {}, "GPT2LMHeadModel", "GPT2Model", "tokens", "gpt2"),
    "bert": _Recipe("BertConfig", {}, "BertForMaskedLM", "BertModel", "tokens", "bert-base-uncased"),
    "vit": _Recipe("ViTConfig", {"num_labels": 1000}, "ViTForImageClassification", "ViTModel", "pixels",
                   "google/vit-base-patch16-224"),
    "llama": _Recipe("LlamaConfig", {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
                                     "num_hidden_layers": 2, "num_attention_heads": 4,
                                     "num_key_value_heads": 2, "max_position_embeddings": 64},
                     "LlamaForCausalLM", "LlamaModel", "tokens", "tiny LlamaConfig"),
    "t5": _Recipe("T5Config", {"d_ff": 2048, "d_kv": 64, "d_model": 512, "num_heads": 8, "num_layers": 6,
                               "feed_forward_proj": "relu", "tie_word_embeddings": True},
                  "T5ForConditionalGeneration", "T5Model", "seq2seq", "t5-small"),
}
#: tiny decoder / encoder configs of other families (our own sizes; the architecture is what counts)
_TINY = {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "max_position_embeddings": 64}
RECIPES.update({
    "roberta": _Recipe("RobertaConfig", {**_TINY, "intermediate_size": 128, "max_position_embeddings": 72},
                       "RobertaForMaskedLM", "RobertaModel", "tokens", "tiny RobertaConfig"),
    "distilbert": _Recipe("DistilBertConfig", {"vocab_size": 128, "dim": 64, "n_layers": 2, "n_heads": 4,
                                               "hidden_dim": 128, "max_position_embeddings": 64},
                          "DistilBertForMaskedLM", "DistilBertModel", "tokens", "tiny DistilBertConfig"),
    "qwen2": _Recipe("Qwen2Config", {**_TINY, "intermediate_size": 128, "num_key_value_heads": 2},
                     "Qwen2ForCausalLM", "Qwen2Model", "tokens", "tiny Qwen2Config (q/k/v biases, GQA, RoPE)"),
    "mistral": _Recipe("MistralConfig", {**_TINY, "intermediate_size": 128, "num_key_value_heads": 1,
                                         "sliding_window": 4},
                       "MistralForCausalLM", "MistralModel", "tokens", "tiny MistralConfig (MQA, sliding window)"),
    "gemma": _Recipe("GemmaConfig", {**_TINY, "intermediate_size": 128, "num_key_value_heads": 1, "head_dim": 16},
                     "GemmaForCausalLM", "GemmaModel", "tokens", "tiny GemmaConfig"),
    "opt": _Recipe("OPTConfig", {**_TINY, "ffn_dim": 128, "word_embed_proj_dim": 64},
                   "OPTForCausalLM", "OPTModel", "tokens", "tiny OPTConfig"),
    "gpt_neox": _Recipe("GPTNeoXConfig", {**_TINY, "intermediate_size": 128, "rotary_pct": 0.5},
                        "GPTNeoXForCausalLM", "GPTNeoXModel", "tokens", "tiny GPTNeoXConfig (partial rotary)"),
    "phi": _Recipe("PhiConfig", {**_TINY, "intermediate_size": 128, "partial_rotary_factor": 0.5},
                   "PhiForCausalLM", "PhiModel", "tokens", "tiny PhiConfig (parallel block)"),
    "bloom": _Recipe("BloomConfig", {"vocab_size": 128, "hidden_size": 64, "n_layer": 2, "n_head": 4},
                     "BloomForCausalLM", "BloomModel", "tokens", "tiny BloomConfig (ALiBi)", attn="eager"),
    "falcon": _Recipe("FalconConfig", {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2,
                                       "num_attention_heads": 4, "alibi": True, "multi_query": True,
                                       "new_decoder_architecture": False, "bias": True},
                      "FalconForCausalLM", "FalconModel", "tokens", "tiny FalconConfig (ALiBi, MQA)"),
})
ALIASES = {"bert-base-uncased": "bert", "google/vit-base-patch16-224": "vit", "t5-small": "t5",
           "openai-community/gpt2": "gpt2", "google-t5/t5-small": "t5"}
_INPUT_OPTS = ("attn", "task", "batch", "seq")


def build_hf(name: str, opts: dict[str, Any] | None = None) -> LoadedModel:
    """Build ``name`` (gpt2, bert, vit, llama, t5) from its config, random weights, training mode."""
    try:
        import transformers
    except ImportError:
        raise SpecError("transformers is not installed: pip install transformers") from None
    key = ALIASES.get(name, name)
    if key not in RECIPES:
        raise SpecError(f"hf:{name} is not available offline; choose one of {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[key]
    opts = dict(opts or {})
    attn = opts.pop("attn", recipe.attn)
    if attn not in ("sdpa", "eager"):
        raise SpecError(f"hf option attn must be 'sdpa' or 'eager', got {attn!r}")
    task = opts.pop("task", "head")
    if task not in ("head", "base"):
        raise SpecError(f"hf option task must be 'head' or 'base', got {task!r}")
    batch, seq = int(opts.pop("batch", 2)), opts.pop("seq", None)
    config_cls = getattr(transformers, recipe.config)
    known = set(config_cls().to_dict())
    fields = {**recipe.defaults, **opts}
    if "use_cache" in known:
        fields["use_cache"] = False
    unknown = sorted(k for k in opts if k not in known and not hasattr(config_cls, k))
    if unknown:
        raise SpecError(f"hf:{key} has no config field {', '.join(unknown)} (see transformers.{recipe.config})")
    model_cls = getattr(transformers, recipe.base if task == "base" else recipe.model)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    try:  # a config that validates its fields, or a model that rejects the combination
        config = config_cls(**fields)
        config._attn_implementation = attn
        model = model_cls(config).train()
    except Exception as e:  # noqa: BLE001 - config validation raises its own exception types
        raise SpecError(f"hf:{key} cannot be built with {opts}: {type(e).__name__}: {_first_line(e)}") from None
    seq = _sequence_length(config, key, seq)
    args, kwargs = _INPUTS[recipe.inputs](config, batch, seq)
    head = "classification" if task == "head" else None
    return LoadedModel(model, args, head=head, example_kwargs=kwargs, frontend="export", name=f"hf:{key}")


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[-1][:200] if lines else ""


def _sequence_length(config, key: str, seq) -> int:
    """8 tokens, or fewer when the model has fewer positions (RoBERTa's start after the padding
    index); an explicit ``seq`` beyond them is an error."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (getattr(config, "pad_token_id", 0) or 0) + 1
    if seq is None:
        return min(8, limit) if isinstance(limit, int) and limit > 0 else 8
    if isinstance(limit, int) and int(seq) > limit:
        raise SpecError(f"hf:{key}: seq={seq} is longer than the model's {limit} positions")
    return int(seq)


def _tokens(config, batch: int, seq: int):
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    return (ids,), {}


def _pixels(config, batch: int, seq: int):
    x = torch.randn(batch, config.num_channels, config.image_size, config.image_size)
    return (x,), {}


def _seq2seq(config, batch: int, seq: int):
    (ids,), _ = _tokens(config, batch, seq)
    return (ids,), {"decoder_input_ids": ids.flip(-1).clone()}


_INPUTS: dict[str, Callable] = {"tokens": _tokens, "pixels": _pixels, "seq2seq": _seq2seq}
