"""InstructBLIP (``instructblip``): frozen ViT, instruction-aware Q-Former, T5 or decoder-only LLM."""
