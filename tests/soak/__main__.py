"""`make soak`: the long model-based fault soak, with its own PostgreSQL, stand-in and workers.

    python -m tests.soak [--operations 20000] [--clients 6] [--seed N] [--modes rls,service,atomic]
                         [--previous-rate 0.6] [--deploys N]

--deploys N (opt-in; not part of `make test`): N times during each mode's run the mode's worker is
stopped (its requests in flight killed) and started again with a random subset of the settings an
operator may change while writes are queued (tests/soak/driver.py, "deploys"); each stopped
worker's log is kept in a directory the run prints.

Prints one report per mode (operations, faults by kind, retries, fatal count, the final
difference, which must be zero) and exits 1 if any mode found a difference.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import (ANON_KEY, JWT_SECRET, SERVICE_KEY, SQL_FILES,  # noqa: E402
                                SessionKeys, complete_vars, make_token)
from tests.postgrest_standin.standin import StandIn  # noqa: E402
from tests.soak.driver import MODES, SoakConfig, run_soak, worker_vars  # noqa: E402
from tests.soak.stack import TIMEOUT_MS, start_stack  # noqa: E402
from tests.support.pg import TempPostgres  # noqa: E402
from tests.support.worker import JwksServer, WorkerProcess  # noqa: E402


def powersync_key() -> dict:
    from cryptography.hazmat.primitives import serialization
    keys = SessionKeys()
    pem = keys.rsa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return {"kid": "soak-1", "private_pem": pem}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.splitlines()[0])
    p.add_argument("--operations", type=int, default=int(os.environ.get("SOAK_OPERATIONS", "20000")),
                   help="CRUD entries per mode (default 20000)")
    p.add_argument("--clients", type=int, default=int(os.environ.get("SOAK_CLIENTS", "6")))
    p.add_argument("--seed", type=int, default=int(os.environ["SOAK_SEED"]) if os.environ.get("SOAK_SEED") else None)
    p.add_argument("--modes", default=os.environ.get("SOAK_MODES", ",".join(MODES)))
    p.add_argument("--previous-rate", type=float, default=float(os.environ.get("SOAK_PREVIOUS_RATE", "0.6")),
                   help="share of PATCHes and DELETEs sent with previous values (conflict detection; default 0.6)")
    p.add_argument("--rates", default=os.environ.get("SOAK_RATES"),
                   help="proxy fault rates, e.g. hang=0.01,late=0.01 (default: tests/soak/proxy.py DEFAULT_RATES)")
    p.add_argument("--deploys", type=int, default=int(os.environ.get("SOAK_DEPLOYS", "0")),
                   help="restarts of each mode's worker with changed settings during its run (default 0)")
    args = p.parse_args(argv)
    rates = None
    if args.rates:
        try:
            rates = {k.strip(): float(v) for k, v in (kv.split("=") for kv in args.rates.split(","))}
        except ValueError:
            p.error(f"bad --rates {args.rates}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m}")

    # SIGTERM (timeout, CI cancel) cleans up like Ctrl-C: workers and PostgreSQL are stopped
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    workers: list[WorkerProcess] = []
    reports = []
    with TempPostgres() as pg:
        for f in SQL_FILES:
            pg.run_sql_file(f)
        standin = StandIn(pg.dsn, JWT_SECRET, anon_key=ANON_KEY, service_key=SERVICE_KEY, pool_size=12)
        standin.start(port=0)
        jwks = JwksServer()
        proxy = None
        try:
            base = complete_vars(standin.url, jwks.url, powersync_key())

            def start_worker(vars):
                w = WorkerProcess(vars)
                workers.append(w)
                return w

            proxy, by_mode = start_stack(pg, standin.url, base, start_worker, modes)
            iss = f"{proxy.url}/auth/v1"
            logs = Path(tempfile.mkdtemp(prefix="soak-deploys-")) if args.deploys else None
            if logs:
                print(f"soak: worker logs of the deploys in {logs}", flush=True)

            def redeploy(mode, changes):
                """A deploy: the mode's worker stopped (log kept) and started again at its address."""
                old = by_mode[mode]
                generation = sum(1 for f in logs.glob(f"{mode}-g*.log"))
                os.link(old.log_path, logs / f"{mode}-g{generation}.log")  # kept past stop(), its last lines too
                old.stop()
                v = {**old.vars}
                for k, value in changes.items():
                    if value is None:
                        v.pop(k, None)
                    else:
                        v[k] = value
                by_mode[mode] = start_worker_at(v, old.port)

            def start_worker_at(v, port):
                w = WorkerProcess(v, port=port)
                workers.append(w)
                return w

            for m in modes:
                cfg = SoakConfig(m, operations=args.operations, clients=args.clients, seed=args.seed,
                                 previous_rate=args.previous_rate, rates=rates, deploys=args.deploys)
                report = run_soak(cfg, by_mode[m].url, proxy, pg.dsn, lambda sub: make_token(sub, iss=iss),
                                  redeploy=lambda changes, m=m: redeploy(m, changes),
                                  worker_settings=worker_vars(m, base, proxy.url, TIMEOUT_MS))
                if logs:
                    (logs / f"{m}-last.log").write_text(by_mode[m].output())
                print(report.summary(), flush=True)
                reports.append(report)
        finally:
            for w in workers:
                w.stop()
            if proxy is not None:
                proxy.stop()
            jwks.stop()
            standin.stop()
    print(f"soak: {len(reports)} mode(s) in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{r.mode} {'ok' if r.ok else 'FAILED'}" for r in reports), flush=True)
    return 0 if reports and all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
