"""Bounded, validated handling of what a user hands in: files, YAML text, sizes, echoed values.

- ``files.check_regular``: a path is a regular file (checked with ``os.stat`` before any open, so a
  FIFO never blocks and a device is never read); ``files.check_folder`` likewise for folders.
- ``yaml_text.load``: YAML without aliases or duplicate keys (an alias bomb is refused, not expanded).
- ``show.show``: a value as a short one-line repr for an error message, whatever its size or depth.
"""
