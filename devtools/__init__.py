"""Tools for developing and showing the hub, never deployed with it: a fake Ollama fleet and the demo.

They need the development requirements (`requirements-dev.txt`: aiohttp for the fake servers).
"""
