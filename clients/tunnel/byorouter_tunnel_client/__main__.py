"""`python -m byorouter_tunnel_client`: the same as the `byorouter-tunnel` command."""

from byorouter_tunnel_client.cli import main

if __name__ == "__main__":
    main()
