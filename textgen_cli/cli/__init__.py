"""The command line: parses arguments and dispatches to the layers below (`app.py`); the chat
session and the batch input/output files of `textgen generate`."""
