"""Real search engines for the integration tests (see opensearch_node.py)."""
