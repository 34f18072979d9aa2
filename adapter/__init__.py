"""vllm-ollama-adapter: Ollama's API in front of vLLM's OpenAI server."""

__version__ = "0.1.0"
