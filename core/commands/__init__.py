"""The subcommands, one module each (``add_arguments(parser)`` + ``run(args) -> int``), dispatched by
``mobileclip_export.cli``. They sit above every other package, so no folder imports them.
"""
