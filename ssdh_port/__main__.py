"""python -m ssdh_port COMMAND ...: the `ssdh` command (ssdh_port.commands)."""
from ssdh_port.commands import entry_point

entry_point()
