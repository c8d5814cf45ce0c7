"""The `ctmwa-batch` command line and its subcommands."""
