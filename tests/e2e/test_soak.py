"""The model-based fault soak, bounded (issue 11, "The proof"): for each mode, simulated clients
upload random transactions through the worker while a proxy injects faults between the worker
and PostgREST (errors, hangs past the timeout, resets, answers lost after the write); at the
end PostgreSQL must equal the model of what the worker reported (nothing lost, nothing applied
twice; in atomic mode also with writes landing after the worker gave up on them), and every
fatal transaction must have exactly one dead letter and no other dead letter exist. Some
transactions carry an always-refused entry at a random position, and one table has no
grants for the API roles until the driver grants them during the run (its writes must wait, not
be discarded). The workers run with UPLOAD_CONFLICT_DETECTION=true and the clients send previous
values with a share of their PATCHes and DELETEs (their local copy, which a refused write leaves
behind the server): every `conflict` reported must be a real one in the model (never a
transaction's own earlier, lost-answer application), and no real one may be applied. Design and
reasoning: tests/soak/driver.py. The long run: `make soak`.

SOAK_OPERATIONS (default 2000 per mode) and SOAK_SEED override. Under `make test` the seed is
fixed (DEFAULT_SEED): the run asserts that rare events happened (late writes, conflicts, re-sent
compared transactions), which one random seed in many may not produce, and a CI run must be
repeatable. SOAK_SEED=random draws one (printed); `make soak` explores random seeds at length.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.conftest import make_token
import random

from tests.soak.driver import (LEDGER_MODES, MODE_SPECS, MODES, Generator, Ids, SoakConfig, client_ids,
                               has_dependent_pattern, rid, run_soak, workloads)
from tests.soak.stack import start_stack

OPERATIONS = int(os.environ.get("SOAK_OPERATIONS", "2000"))
DEFAULT_SEED = 20261205
SEED_TEXT = os.environ.get("SOAK_SEED") or str(DEFAULT_SEED)
SEED = None if SEED_TEXT == "random" else int(SEED_TEXT)


@pytest.fixture(scope="module")
def soak_stack(pg, standin, base_vars, start_worker):
    proxy, workers = start_stack(pg, standin.url, base_vars, start_worker, MODES)
    yield proxy, workers
    proxy.stop()


def soak(mode: str, soak_stack, pg):
    proxy, workers = soak_stack
    iss = f"{proxy.url}/auth/v1"
    report = run_soak(SoakConfig(mode, operations=OPERATIONS, seed=SEED,
                                   fault_phase_seconds=30, drain_seconds=30), workers[mode].url, proxy,
                      pg.dsn, lambda sub: make_token(sub, iss=iss))
    print(report.summary())
    assert report.operations >= OPERATIONS
    assert report.proxy["faults"] > 0
    assert report.ok, report.summary()
    # the run exercised what it claims: refusals inserted first, in the middle and last, and
    # writes that waited for the missing grant, which came during the run
    assert {"first", "middle", "last"} <= set(report.injected_fatal), report.summary()
    assert report.granted is not None and report.granted["operations"] < report.operations, report.summary()
    assert report.grant_retries > 0, report.summary()
    assert report.dependent_deletes or report.dependent_transactions == 0, report.summary()
    # conflict detection was exercised: compared entries, real conflicts (each checked against the
    # model), and compared transactions completed after being sent again
    assert report.compared_entries > 0 and report.conflicts > 0, report.summary()
    assert report.compared_resent > 0, report.summary()
    if mode in LEDGER_MODES:
        # writes that landed after the worker gave up on them (the ledger makes them harmless),
        # some of which, or re-sends after a lost answer, met a transaction the ledger holds as
        # dead-lettered: answered as recorded, nothing applied
        assert report.proxy["by_kind"]["late"] > 0, report.summary()
        assert report.proxy["dead_letter_answers"] > 0, report.summary()
    else:
        # none in the REST modes: there a late write can undo a later one (docs/upload.md)
        assert report.proxy["by_kind"]["late"] == 0, report.summary()
    if MODE_SPECS[mode].fallback:
        # atomic calls the statement timeout cancelled, whose transactions then went through
        # REST requests under the ledger's mark, among the other faults and late calls
        assert report.proxy["by_kind"]["statement_timeout"] > 0, report.summary()
        assert report.applied_via_rest > 0, report.summary()
    else:
        assert report.proxy["by_kind"]["statement_timeout"] == 0, report.summary()


def test_workload_without_dependent_patterns_never_contains_one():
    """The REST modes' workload leaves out the known gap's patterns entirely (a PATCH of a list
    rewritten to a DELETE once re-created the first pattern, and a bounded soak failed on it),
    also with the always-refused entries inserted at random positions."""
    transactions = 0
    for seed in range(40):
        master = random.Random(seed)
        ids = [Ids(rid(master), [rid(master) for _ in range(3)], [rid(master) for _ in range(6)],
                   rid(master), rid(master), [rid(master) for _ in range(3)]) for _ in range(6)]
        for i, me in enumerate(ids):
            generator = Generator(random.Random(f"{seed}:{i}"), me, [o for o in ids if o is not me], False,
                                  SoakConfig("rls").fatal_rate)
            for tid in range(120):
                entries = generator.transaction(tid).entries
                transactions += 1
                assert not has_dependent_pattern(entries), (seed, i, tid, entries)
    assert transactions == 40 * 6 * 120


def test_workload_holds_at_least_the_operations_asked_for_whatever_the_seed():
    """The soak asserts it completed OPERATIONS entries, so its workload must hold that many:
    seed 522860893 once made 1,999 of 2,000 (each client's share was rounded down)."""
    for seed in [522860893, *range(200)]:
        for mode in ("rls", "atomic", "auto"):
            cfg = SoakConfig(mode, operations=2000)
            queues = workloads(cfg, seed, client_ids(seed, cfg.clients), mode == "atomic")
            assert sum(len(t.entries) for queue in queues for t in queue) >= 2000, (seed, mode)


def test_rls_mode_under_random_faults_loses_no_write(soak_stack, pg):
    soak("rls", soak_stack, pg)


def test_service_mode_under_random_faults_loses_no_write(soak_stack, pg):
    soak("service", soak_stack, pg)


def test_atomic_mode_under_random_faults_and_late_writes_loses_no_write(soak_stack, pg):
    soak("atomic", soak_stack, pg)


def test_default_mode_falling_back_to_rest_after_statement_timeouts_loses_no_write(soak_stack, pg):
    """UPLOAD_ATOMIC unset, the default: the atomic function, and after a statement timeout the
    same transaction through REST requests under the ledger's mark, while the other faults and
    late atomic calls go on."""
    soak("auto", soak_stack, pg)


def test_default_mode_in_service_mode_falling_back_to_rest_loses_no_write(soak_stack, pg):
    """The same in service mode: the atomic function with the service key and the owner column,
    its REST fallback with the ownership checks."""
    soak("service-auto", soak_stack, pg)


def test_default_mode_without_a_dead_letter_table_loses_no_write(soak_stack, pg):
    """Rejections recorded in the atomic function's ledger only (no UPLOAD_DEAD_LETTER_TABLE), also
    those of transactions that went through the REST fallback."""
    soak("auto-no-dead-letters", soak_stack, pg)
