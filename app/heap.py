"""Keeping a process's start-up objects out of Python's full garbage collections."""

import gc


def settle_heap() -> None:
    """Once start-up is done. What exists now (modules, the app, its routes and schemas,
    some 140,000 objects) lives as long as the process: keep it out of the cyclic
    collector's full passes, which otherwise stop the process for 30-120 ms every few
    seconds under load: the lookups' and the custodians' reads' p99. The API's workers,
    `cpr worker`, and anything measuring the service's reads in-process
    (bench/custodian.py) call it."""
    gc.collect()
    gc.freeze()
