"""RS-MoE: instruction router and lightweight LLM experts (model ``rs_moe``)."""
