"""Triton kernels and the torch-only pieces they share with the PyTorch implementations; nothing here imports
`llmlab.models` (`models` imports `kernels`, never the reverse)."""
