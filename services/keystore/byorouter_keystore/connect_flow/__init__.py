"""Keystore's half of the Connect flow: consent and authorization codes, manage links and sessions.

`consent` stores a person's keys as a new connection and issues the code the app exchanges for
it; `manage` lets that person change or disconnect it later; `one_time` makes, stores and expires
the one-time secrets both hand out.
"""
