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
