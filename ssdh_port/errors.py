"""The package's one base exception.

Every error the library raises for bad input (a file, a layer, a field, an
argument) is an SSDHError, or a subclass that says which part raised it; the
message names what was wrong and what was expected. The command-line tools catch
SSDHError (and OSError) and end with one line `tool: message`, exit status 1.
SSDHError derives from ValueError so that callers who caught ValueError before
keep working.
"""


class SSDHError(ValueError):
    """Bad input to the library; the message names the file, layer, field or argument."""
