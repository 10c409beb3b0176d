import sys

if sys.argv[1:2] == ["run"]:   # stop signals handled from the first moment (see krum_mpi/run/stop.py)
    try:
        from .run.stop import process_stop
        process_stop()
    except KeyboardInterrupt:   # Ctrl-C while the handlers were being installed: nothing was written yet
        print("krum-mpi: stopped before start (SIGINT before the run began; nothing written): run the same "
              "command again", file=sys.stderr, flush=True)
        sys.exit(3)

from .cli import main  # noqa: E402  (after the handlers, on purpose)

sys.exit(main())
