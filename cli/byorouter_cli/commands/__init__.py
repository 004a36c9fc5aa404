"""The `byorouter` subcommands, one module per resource they manage."""
