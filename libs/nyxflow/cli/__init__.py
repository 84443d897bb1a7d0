"""The `nyxflow` command line."""
