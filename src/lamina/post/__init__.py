"""Post-training: chat data, supervised fine-tuning, LoRA adapters, preference and reinforcement
learning, synthetic data. Each module is imported directly (`from lamina.post.sft import ...`)."""
