"""Allows ``python -m orchestrator`` as well as the ``cph-orchestrator`` console script."""

from orchestrator.cli import main

if __name__ == "__main__":
    main()
