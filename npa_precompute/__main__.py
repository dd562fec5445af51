"""``python -m npa_precompute`` runs the ``npa-precompute`` command line."""

from npa_precompute.cli import main

if __name__ == "__main__":
    main()
