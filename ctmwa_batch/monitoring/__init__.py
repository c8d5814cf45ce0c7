"""Whether the scores are healthy: drift against a baseline and the health report."""
