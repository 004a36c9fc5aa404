"""Fake upstream LLM providers that speak each provider's real wire format, for tests and benches.

`byorouter_fakes.openai.FakeOpenAI` runs in-process; `python -m byorouter_fakes.openai` runs it as
a server of its own. Nothing is imported here, so `python -m` on a submodule starts cleanly.
"""
