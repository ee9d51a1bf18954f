"""The vLLM integration: everything that imports vLLM lives in this package (internals via compat)."""
