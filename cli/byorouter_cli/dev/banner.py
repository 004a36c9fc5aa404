"""What `byorouter dev` prints once the stack is up: a banner for people, JSON for scripts."""

from __future__ import annotations

from typing import Any

from byorouter_cli.dev.demo import DemoFacts
from byorouter_cli.dev.stack import Stack


def ready_facts(stack: Stack, demo: DemoFacts, tunnel_model: str | None = None) -> dict[str, Any]:
    """The `--json` output: the demo app's facts and where each front door is."""
    return {
        **demo,
        "tunnel_model": tunnel_model,
        "connect_url": stack.connect_url,
        "tunnel_url": stack.tunnel_url,
        "nats_url": stack.nats_url,
        "example_app_url": (stack.example_app_url if stack.with_example_app else None),
        "state_dir": str(stack.state_dir),
    }


def banner(stack: Stack, demo: DemoFacts, tunnel_model: str | None = None) -> str:
    key, conn, api = demo["app_api_key"], demo["connection_id"], demo["api_url"]
    nats_login = (
        f" (log in as admin: password in {stack.nats_users_file})" if stack.nats_auth else ""
    )
    example = ""
    if stack.with_example_app:
        example = f"""
  Example app              {stack.example_app_url}
                           (Connect API Keys: any OpenAI key will do with the base URL
                           {stack.upstream_base_url} under "Advanced", the fake upstream)"""
    return f"""
BYORouter is running. Ctrl-C stops everything.

  API (OpenAI-compatible)  {api}/v1
  Connect UI               {stack.connect_url}
  Tunnel endpoint          {stack.tunnel_url}
  NATS                     {stack.nats_url}{nats_login}
  Logs                     {stack.logs_dir}/
  Demo app                 client id {demo["client_id"]} (details in {stack.demo_file}){example}

Try it with curl:

  curl {api}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" \\
    -H "X-Byorouter-Connection: {conn}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{demo["model"]}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

or with the openai Python SDK:

  from openai import OpenAI
  client = OpenAI(base_url="{api}/v1", api_key="{key}",
                  default_headers={{"X-Byorouter-Connection": "{conn}"}})
  reply = client.chat.completions.create(
      model="{demo["model"]}", messages=[{{"role": "user", "content": "Hello"}}])
  print(reply.choices[0].message.content)
{_tunnel_lines(stack, tunnel_model)}"""


def _tunnel_lines(stack: Stack, tunnel_model: str | None) -> str:
    if tunnel_model is None:
        return ""
    return f"""
Through a tunnel: a `byorouter-tunnel` client (log: {stack.log_file("tunnel-client")}) serves
the same fake model as if it ran on a user's own machine. Ask for "{tunnel_model}" in either
example above; the request is sealed end to end between the router and that client.
"""
