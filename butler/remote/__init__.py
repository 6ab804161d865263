"""Remote repositories: the client side of the repository HTTP API."""
