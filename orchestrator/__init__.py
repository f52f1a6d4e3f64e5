"""cph-orchestrator: roll property changes out to fleets of Huawei Cloud Phones.

The package is layered (see README): ``cli``/``daemon`` on top, then ``rollouts`` (what both run:
plan to engine, journaled runs, status, reports, exit codes), then ``engine``, then ``store`` and
``cph`` (the API client), with ``simulator`` a stand-alone faithful CPH server for tests and demos.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
