"""Memory governance: the limit, usage, pressure levels and admission, leak trend."""
