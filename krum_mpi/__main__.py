import sys

if sys.argv[1:2] == ["run"]:   # stop signals handled from the first moment (see krum_mpi/run/stop.py)
    from .run.stop import process_stop
    process_stop()

from .cli import main  # noqa: E402  (after the handlers, on purpose)

sys.exit(main())
