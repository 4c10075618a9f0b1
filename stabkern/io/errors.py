"""The one error type for bad user input (files, specs, data): its message names the problem and the fix."""


class InputError(ValueError):
    """Bad user input: a missing or corrupt file, an unknown architecture, data of the wrong shape...

    The message is one line saying what is wrong and how to fix it; the command line prints it and
    exits with status 2. A ValueError, so library callers that catch ValueError keep working.
    """


def first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's run to paragraphs), or its type's name."""
    text = str(err).strip().splitlines()
    return text[0].split(". ")[0].rstrip(".") if text else type(err).__name__
