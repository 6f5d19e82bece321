"""Today's image-text-to-text VLMs through transformers (model ``hf_vlm``)."""
