"""Model loading (PyPI GGUF, hub, local, random-init) and model code of the reproduced papers."""
