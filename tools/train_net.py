#!/usr/bin/env python
"""Caffe's `caffe train` under its old name here: the same as `ssdh train`
(ssdh_port.commands.train), kept for Caffe users' scripts."""
import sys

from ssdh_port import cli
from ssdh_port.commands import command_main

if __name__ == "__main__":
    sys.exit(cli.run(command_main("train")))
