"""``atalaia gateway``: OpenAI Chat Completions and Anthropic Messages proxy that emits inference events."""
