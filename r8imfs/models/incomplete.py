"""What a header parser raises when it needs more of the file than it was given."""

from __future__ import annotations


class Incomplete(Exception):
    """Not an error for the user: read ``need`` bytes from the start and parse again.

    ``need`` is the parser's best knowledge: exact for safetensors (the JSON's
    end), a lower bound for GGUF (whose header is a chain of variable-length
    records); the reader may ask for more than that to save round trips.
    """

    def __init__(self, need: int) -> None:
        super().__init__(f"need {need} bytes")
        self.need = need
