"""Bounded, validated handling of what a user hands in: files, YAML text, sizes, echoed values.

- ``files.regular_file_problem``: what a path is when it is not a regular file (``os.stat`` before any
  open, so a FIFO never blocks and a device is never read); ``files.folder_problem`` for folders.
- ``config_file.read``: a TOML or YAML config into a dict, with those checks and bounded errors.
- ``yaml_text.load``: YAML without aliases or duplicate keys (an alias bomb is refused, not expanded).
- ``schema``: every config key with its default, choices and bounds (the one schema).
- ``typed``: the frozen dataclasses generated from the schema, one per section, and ``Config``
  (what ``config.load`` returns; ``to_dict`` gives the resolved plain dict back).
- ``show.show``: a value as a short one-line repr for an error message, whatever its size or depth.
"""
