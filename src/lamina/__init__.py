"""lamina: an open, license-clean LLM stack for the Llama family."""

__version__ = "0.1.0"


def load(model: str, **kwargs):
    """Load a model reference (directory, GGUF, Meta checkpoint or catalog name) for generation.
    See `lamina.serve.llm.LLM`."""
    from .serve.llm import load as _load
    return _load(model, **kwargs)


__all__ = ["load", "__version__"]
