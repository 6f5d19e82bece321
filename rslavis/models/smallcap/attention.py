"""SmallCap's reduced cross-attention: GPT-2's (or XGLM's) own attention class with query/key/value
widths divided by the ``attention_size`` divisor, for :mod:`rslavis.models.smallcap.causal`."""

from torch import nn

from rslavis.common.errors import ConfigError

# SmallCap's attention sizes (millions of cross-attention parameters in GPT-2 base) -> width divisor
ATTENTION_SIZES = {28.0: 1, 14.0: 2, 7.0: 4, 3.5: 8, 1.75: 16}


def _gpt2_attention_class():
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    return GPT2Attention


def make_reduced_cross_attention(config, layer_idx, reduce):
    """GPT-2's cross-attention with query/key/value widths ``hidden / reduce`` (same heads, forward unchanged)."""
    from transformers.pytorch_utils import Conv1D

    attn = _gpt2_attention_class()(config, is_cross_attention=True, layer_idx=layer_idx)
    width = attn.embed_dim // reduce
    if width < attn.num_heads or width % attn.num_heads:
        raise ConfigError(
            f"model.attention_size: dividing the decoder width {attn.embed_dim} by {reduce} gives {width}, "
            f"which is not a multiple of the {attn.num_heads} heads; pick a larger attention_size."
        )
    attn.q_attn = Conv1D(width, attn.embed_dim)
    attn.c_attn = Conv1D(2 * width, attn.embed_dim)
    attn.c_proj = Conv1D(attn.embed_dim, width)
    attn.split_size = width  # GPT2Attention splits keys/values and shapes heads from these
    attn.head_dim = width // attn.num_heads
    attn.scaling = attn.head_dim**-0.5 if attn.scale_attn_weights else 1.0
    if attn.scale_attn_by_inverse_layer_idx:
        attn.scaling /= float(layer_idx + 1)
    for conv in (attn.q_attn, attn.c_attn, attn.c_proj):
        nn.init.normal_(conv.weight, std=config.initializer_range)
        nn.init.zeros_(conv.bias)
    return attn


def make_reduced_xglm_cross_attention(config, layer_idx, reduce):
    """XGLM's cross-attention with query/key/value widths ``d_model / reduce``; output back to ``d_model``."""
    from transformers.models.xglm.modeling_xglm import XGLMAttention

    d_model, heads = config.d_model, config.attention_heads
    width = d_model // reduce
    if width < heads or width % heads:
        raise ConfigError(
            f"model.attention_size: dividing the decoder width {d_model} by {reduce} gives {width}, "
            f"which is not a multiple of the {heads} heads; pick a larger attention_size."
        )
    # built at the reduced width, then its input/output projections widened back to d_model
    attn = XGLMAttention(width, heads, dropout=config.attention_dropout, is_decoder=True, layer_idx=layer_idx)
    attn.q_proj, attn.k_proj, attn.v_proj = (nn.Linear(d_model, width) for _ in range(3))
    attn.out_proj = nn.Linear(width, d_model)
    for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
        nn.init.normal_(lin.weight, std=config.init_std)
        nn.init.zeros_(lin.bias)
    return attn
