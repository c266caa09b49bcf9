"""The AgentCom LLM Registry sidecar: reports a GPU host's resources and its local Ollama to the hub."""
