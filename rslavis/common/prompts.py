"""Prompt prefixes on caption text (LAVIS's ``blip_caption`` prompt, e.g. "a photo of ")."""


def strip_prompt(caption, prompt):
    """``caption`` without a leading ``prompt`` (case and surrounding spaces ignored), as LAVIS
    strips the text processor's prompt from generated captions before scoring."""
    p = str(prompt or "").strip()
    text = str(caption)
    if p and text[: len(p)].lower() == p.lower():
        return text[len(p) :].strip()
    return text
