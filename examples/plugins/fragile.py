"""Plugin used by the exceptions example: fails in the ways real plugins fail."""


class PluginError(Exception):
    """Raised by the plugin for bad input."""


def parse_port(text):
    try:
        port = int(text)
    except ValueError as exc:
        raise PluginError(f"not a port number: {text!r}") from exc
    if not 0 < port < 65536:
        raise PluginError(f"port out of range: {port}")
    return port
