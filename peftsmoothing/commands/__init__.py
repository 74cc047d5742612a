"""Sub-commands of the ``peftsmoothing`` command line, one module each.

Every module exposes ``register(subparsers)``, which adds its parser and sets ``func`` (a
callable taking the parsed ``argparse.Namespace`` and returning an exit status) and, optionally,
``user_errors``: the exception types that ``peftsmoothing.cli.main`` turns into a one-line
``peftsmoothing COMMAND: error: ...`` message and exit status 1 instead of a traceback.
"""

COMMANDS = ("methods", "train", "certify", "predict", "report", "card", "demo")
