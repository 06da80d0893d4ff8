"""lamina: an open, license-clean LLM stack for the Llama family."""

from .version import __version__


def load(model: str, **kwargs):
    """Load a model reference (directory, GGUF, Meta checkpoint or catalog name) for generation.
    See `lamina.serve.llm.LLM`. (serve is imported on first use: `import lamina` stays light.)"""
    from .serve import llm
    return llm.load(model, **kwargs)


__all__ = ["load", "__version__"]
