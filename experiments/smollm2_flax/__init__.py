"""SmolLM2-135M-Instruct in Flax, from its GGUF file, and the adversarial-search experiment on it."""
