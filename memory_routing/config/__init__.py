"""Stage 0, the config: ``config.yaml`` parsed into frozen dataclasses (``schema``, pure) and the
addon that loads and reloads it (``holder``)."""
