"""Anthropic's Messages API behind the OpenAI-shaped provider protocol.

`request.py` translates an OpenAI chat request into a Messages request, `response.py` a message
or its stream back into OpenAI's chat completion (chunks), and `provider.py` makes the calls.
"""
