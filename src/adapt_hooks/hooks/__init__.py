"""What a guard installs on a model and restores: the forward hooks that follow each prompt, the
attention function that sees each decode step, and the wrapper that follows beam search."""
