"""byorouter-tunnel: connects a model server on your own machine to BYORouter, outbound only."""

__version__ = "0.1.0"
