"""``python -m npa_train`` runs the ``npa-train`` CLI."""

from npa_train.cli import main

if __name__ == "__main__":
    main()
