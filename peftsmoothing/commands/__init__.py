"""Sub-commands of the ``peftsmoothing`` command line, one module each.

Every module exposes ``register(subparsers)``, which adds its parser and sets ``func`` (a
callable taking the parsed ``argparse.Namespace`` and returning an exit status).
"""

COMMANDS = ("methods", "train", "certify", "report", "demo")
