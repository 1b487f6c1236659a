"""The config: ``config.yaml`` parsed into frozen dataclasses (``schema``, pure); the addon that
loads and reloads it is addons.routing_config."""
