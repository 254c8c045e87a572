"""LLaVA-1.5 training: arguments, data, trainer and checkpoint saving (python -m llava.train.train)."""
