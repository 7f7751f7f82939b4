#!/usr/bin/env python
"""Weights between .caffemodel and .pt under the tool's old name: the same as
`ssdh convert` (ssdh_port.commands.convert)."""
import sys

from ssdh_port import cli
from ssdh_port.commands import command_main

if __name__ == "__main__":
    sys.exit(cli.run(command_main("convert")))
