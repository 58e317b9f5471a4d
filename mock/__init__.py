"""`tradeoff mock-server`: an OpenAI-compatible server whose timing is exactly known (no engine)."""
