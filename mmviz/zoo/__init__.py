"""Built-in models that need no download: ``tiny_llava`` builds a random-weight LLaVA-1.5 in code."""

from mmviz.zoo.tiny import tiny_llava, tiny_tokenizer

__all__ = ["tiny_llava", "tiny_tokenizer"]
