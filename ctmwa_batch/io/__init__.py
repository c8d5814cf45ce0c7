"""Where data comes from and goes to: object stores, partitions and their commit, image fetching, tables."""
