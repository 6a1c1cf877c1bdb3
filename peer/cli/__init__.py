"""Subcommands of ``python -m peer``. Each module here defines ``register(subparsers)``; it is found automatically,
so adding a subcommand never touches a central list."""
