"""LLaVA's ``deepspeed llava/train/train_mem.py ...`` entry. The attention backend is chosen by
``--attn_implementation`` (sdpa by default; flash_attention_2 when flash-attn is installed), never by patching."""

from llava.train.train import main

if __name__ == "__main__":
    main()
