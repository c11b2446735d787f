"""Errors raised by kosmosg_core.

Every message says what was expected, where we looked and what to do, because the people who
see them are ComfyUI users picking files from a dropdown, not developers reading a traceback.
"""


class KosmosGError(Exception):
    """Base class: a problem with the user's input, never a bug in our code."""


class CheckpointError(KosmosGError):
    """The checkpoint file is missing, damaged, refused, or not a Kosmos-G checkpoint."""


class RefusedPickleError(CheckpointError):
    """The checkpoint's pickle asked to call something outside the allow-list."""


class TokenizerError(KosmosGError):
    """The SentencePiece model or fairseq dict.txt is missing or malformed."""


class PromptError(KosmosGError):
    """The prompt and the images do not fit together (counts, references, length)."""


class ImageError(KosmosGError):
    """An image could not be turned into pixels the vision tower accepts."""


class DownloadError(KosmosGError):
    """A download failed (offline, HTTP error, interrupted) or did not verify; a rerun resumes or retries."""


class InputFileError(KosmosGError):
    """An input file is missing, not a regular file, too large, or not the kind of file expected."""


class OutputPathError(KosmosGError):
    """An output would overwrite an input or a finished result, or cannot be written."""


class LimitError(KosmosGError):
    """A declared size (pixels, tokens, layers, bytes) is beyond what the input can legitimately need."""


DEBUG_FLAG = "--debug"
DEBUG_ENV = "KOSMOSG_DEBUG"


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` folded onto one line (messages may quote file content)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def guarded_main(run, argv: list[str] | None = None, program: str = "kosmosg") -> int:
    """Run a command-line entry point so every failure ends as one line on stderr, not a traceback.

    ``run(argv)`` does the work. Input problems (:class:`KosmosGError`, and the OS/decoding errors
    a bad file raises) exit 2; anything else is named as a bug to report, exit 1. ``--debug``
    anywhere on the command line (or ``KOSMOSG_DEBUG=1``) re-raises, so the traceback shows.
    """
    import os
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return run(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except KosmosGError as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, UnicodeError, ValueError, MemoryError, RecursionError, EOFError) as exc:
        if debug:
            raise
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        print(f"error: {type(exc).__name__}{where}: {one_line(exc)}. Check the files and values given "
              f"(rerun with {DEBUG_FLAG} for details).", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, still one line
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {one_line(exc)}. This is a bug in {program}: "
              f"rerun with {DEBUG_FLAG} and report the traceback.", file=sys.stderr)
        return 1
