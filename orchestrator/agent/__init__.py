"""The agent: the pure loop core, its Celery-free shell, chat, model providers and prompts."""
