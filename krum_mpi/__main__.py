import sys

if sys.argv[1:2] == ["run"]:   # stop signals handled from the first moment (see krum_mpi/run/stop.py)
    try:
        from .run.stop import process_stop
        process_stop()
    except KeyboardInterrupt:
        # Ctrl-C while the handlers were being installed: a stop like any other, recorded, so that
        # every rank stops at the same step (a rank leaving alone here left the others waiting in MPI)
        import signal

        from .run.stop import process_stop
        process_stop().signal = signal.SIGINT

from .cli import main  # noqa: E402  (after the handlers, on purpose)

sys.exit(main())
