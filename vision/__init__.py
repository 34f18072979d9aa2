"""Ollama Vision pass-through: requests a real Ollama serves (vision, embeddings, model management)
are forwarded and their answers streamed back byte for byte."""
