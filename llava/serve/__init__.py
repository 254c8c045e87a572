"""Serving entry points; ``cli`` chats with a LLaVA-DRIP model about one image in the terminal."""
