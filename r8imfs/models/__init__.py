"""Model file formats, pure: headers of safetensors and GGUF files from bytes.

No I/O here (the h11 shape): a parser is given the bytes read so far and
either returns the parsed header or raises ``Incomplete`` saying how many
bytes from the start of the file it needs. The caller (``ops.browse``, or a
test over a local file) does the reading, with range reads when it can.
"""
