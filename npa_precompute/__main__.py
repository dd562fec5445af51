"""``python -m npa_precompute`` runs the ``npa-precompute`` command line.

The command line is imported only when run, not when a spawned worker process imports this
module as its ``__mp_main__`` (which it does first, before its parent-death signal is set).
"""

if __name__ == "__main__":
    from npa_precompute.cli import main

    main()
