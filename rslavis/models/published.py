"""Published architecture values (the ``config.json`` of public checkpoints), without any weights.

Used to build full-size models on the meta device (``--dry-run`` tests) or with random
weights (``bench/gpu_smoke.py``): sizes and speed at real scale with nothing downloaded.
"""

# Salesforce/instructblip-* and blip2-*: EVA ViT-g/14 and the Q-Former
EVA_VIT_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16, image_size=224, patch_size=14, qkv_bias=True, layer_norm_eps=1e-6)
INSTRUCTBLIP_QFORMER = dict(vocab_size=30523, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, cross_attention_frequency=2, max_position_embeddings=512, encoder_hidden_size=1408)
# google/flan-t5-xl
FLAN_T5_XL = dict(
    model_type="t5", vocab_size=32128, d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, num_decoder_layers=24,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)
# lmsys/vicuna-7b (LLaMA-7B), as in Salesforce/instructblip-vicuna-7b (one added pad token)
VICUNA_7B = dict(model_type="llama", vocab_size=32001, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6)
# facebook/opt-2.7b
OPT_2_7B = dict(model_type="opt", vocab_size=50272, hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=2560)
# TinyLlama/TinyLlama-1.1B-Chat-v1.0
TINYLLAMA_1_1B = dict(model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
# openai-community/gpt2
GPT2_BASE = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)

IMAGE_TOKEN_INDEX = {"flant5xl": 32100, "vicuna7b": 32000}


def instructblip_config(llm="flant5xl"):
    """``InstructBlipConfig`` of Salesforce/instructblip-flan-t5-xl (``flant5xl``) or -vicuna-7b (``vicuna7b``)."""
    from transformers import InstructBlipConfig

    text = {"flant5xl": FLAN_T5_XL, "vicuna7b": VICUNA_7B}[llm]
    return InstructBlipConfig(
        vision_config=EVA_VIT_G, qformer_config=INSTRUCTBLIP_QFORMER, text_config=dict(text), num_query_tokens=32, image_token_index=IMAGE_TOKEN_INDEX[llm]
    )
