"""ncalm: pre-pre-training language models on neural cellular automata, in JAX."""
