"""The `ssdh` commands for the tests: in-process through cli.run, as the
executable runs them (the same parser, error handler and exit status), with
stdout, stderr and the library's log captured; and the real executable in a
subprocess for the one smoke test per command that checks the process itself."""
import contextlib
import dataclasses
import io
import logging
import os
import subprocess
import sys

from ssdh_port import cli
from ssdh_port.commands import command_main


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def ssdh(command, *args, cwd=None):
    """Run `ssdh COMMAND ARGS` in this process; -> Result (returncode, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package = logging.getLogger("ssdh_port")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.run(command_main(command), [str(a) for a in args], name=f"ssdh {command}")
            except SystemExit as exit:  # argparse's usage errors (status 2) and --help (0)
                code = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.chdir(previous)
        package.removeHandler(handler)
        package.setLevel(level)
    return Result(code, out.getvalue(), err.getvalue())


def ssdh_process(command, *args, cwd=None, env=None, timeout=600):
    """The same through `python -m ssdh_port` in a new process."""
    return subprocess.run([sys.executable, "-m", "ssdh_port", command, *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "SSDH_PROGRESS": "0", **(env or {})})
