// A PowerSync app in a box, for the end-to-end tests: the official Node SDK (@powersync/node)
// with the demo schema, connected through our connector (clients/typescript) to the worker.
// The Python tests drive it over stdin/stdout, one JSON object per line:
//
//   -> {"id": 1, "cmd": "execute", "args": {"sql": "insert ...", "params": [...]}}
//   <- {"id": 1, "ok": true, "result": ...}        or {"id": 1, "ok": false, "error": "..."}
//
// Everything the SDK and the connector do is the real thing; the driver only records what the
// connector reports (fatal outcomes, credential fetches, upload errors) so tests can assert on it.
import { createInterface } from 'node:readline';
import { column, PowerSyncDatabase, Schema, Table } from '@powersync/node';
import { WorkerConnector } from '@powersync-supabase-worker/connector';

// The demo schema (tests/sql/test_schema.sql), as the SDK sees it: booleans are 0/1 and JSON
// columns are text, as in every PowerSync app. `trackPrevious` (open's option): the SDK records
// each PATCH's and DELETE's previous values (`CrudEntry.previousValues`), for conflict detection.
const schemaOf = (trackPrevious) => new Schema({
  lists: new Table({ created_at: column.text, name: column.text, owner_id: column.text }, trackPrevious ? { trackPrevious: true } : {}),
  todos: new Table({
    created_at: column.text,
    completed_at: column.text,
    description: column.text,
    completed: column.integer,
    created_by: column.text,
    completed_by: column.text,
    list_id: column.text,
    tags: column.text,
    priority: column.integer,
  }, trackPrevious ? { trackPrevious: true } : {}),
});

let db = null;
let connector = null;
let sessionToken = null;
const fatalReports = [];
const credentials = []; // {at, expiresAt} per successful fetchCredentials
const uploadErrors = [];
const uploads = []; // {at, ms} per uploadData call that finished without throwing

const commands = {
  async open({ path, workerUrl, token, maxTransactionsPerRequest, trackPrevious = false }) {
    sessionToken = token;
    const base = new WorkerConnector({
      workerUrl,
      getSessionToken: async () => sessionToken,
      onFatalError: (report) => {
        fatalReports.push(report);
      },
      ...(maxTransactionsPerRequest ? { maxTransactionsPerRequest } : {}),
    });
    // Record what the SDK asks of the connector, without changing what it does.
    connector = {
      async fetchCredentials() {
        const c = await base.fetchCredentials();
        if (c) credentials.push({ at: Date.now(), expiresAt: c.expiresAt?.getTime() ?? null, token: c.token });
        return c;
      },
      async uploadData(database) {
        const start = Date.now();
        try {
          await base.uploadData(database);
          uploads.push({ at: start, ms: Date.now() - start });
        } catch (e) {
          uploadErrors.push({ at: start, message: String(e?.message ?? e) });
          throw e;
        }
      },
    };
    db = new PowerSyncDatabase({ schema: schemaOf(trackPrevious), database: { dbFilename: path } });
    await db.init();
    return true;
  },

  async connect({ retryDelayMs = 300, crudUploadThrottleMs = 50, timeoutMs = 30000 }) {
    await db.connect(connector, { retryDelayMs, crudUploadThrottleMs });
    await db.waitForFirstSync(AbortSignal.timeout(timeoutMs));
    return status();
  },

  async disconnect() {
    await db.disconnect();
    return true;
  },

  async setToken({ token }) {
    sessionToken = token;
    return true;
  },

  async execute({ sql, params = [] }) {
    const r = await db.execute(sql, params);
    return { rowsAffected: r.rowsAffected };
  },

  // Several statements in one local transaction: one PowerSync CRUD transaction.
  async transaction({ statements }) {
    await db.writeTransaction(async (tx) => {
      for (const [sql, params = []] of statements) await tx.execute(sql, params);
    });
    return true;
  },

  async query({ sql, params = [] }) {
    return db.getAll(sql, params);
  },

  async status() {
    return status();
  },

  async queue() {
    const stats = await db.getUploadQueueStats();
    return { count: stats.count };
  },

  // Waits until the upload queue is empty and the SDK has synced past what it uploaded.
  async drained({ timeoutMs = 30000 }) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { count } = await db.getUploadQueueStats();
      const s = db.currentStatus;
      if (count === 0 && !s.dataFlowStatus.uploading && !s.dataFlowStatus.downloading) return status();
      if (Date.now() > deadline) throw new Error(`queue not drained after ${timeoutMs} ms: ${count} entries left`);
      await new Promise((r) => setTimeout(r, 100));
    }
  },

  // Waits until `sql` returns exactly `rows` (compared as JSON).
  async waitFor({ sql, params = [], rows, timeoutMs = 30000 }) {
    const want = JSON.stringify(rows);
    const deadline = Date.now() + timeoutMs;
    let got;
    for (;;) {
      got = await db.getAll(sql, params);
      if (JSON.stringify(got) === want) return got;
      if (Date.now() > deadline) throw new Error(`waitFor timed out; last rows: ${JSON.stringify(got)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  },

  async records() {
    return { fatalReports, credentials, uploadErrors, uploads };
  },

  async close() {
    if (db) await db.close();
    db = null;
    return true;
  },
};

function status() {
  const s = db.currentStatus;
  return {
    connected: s.connected,
    hasSynced: s.hasSynced ?? null,
    lastSyncedAt: s.lastSyncedAt?.toISOString() ?? null,
    downloadError: s.dataFlowStatus.downloadError ? String(s.dataFlowStatus.downloadError.message) : null,
    uploadError: s.dataFlowStatus.uploadError ? String(s.dataFlowStatus.uploadError.message) : null,
  };
}

const rl = createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  const reply = (o) => process.stdout.write(JSON.stringify({ id: msg.id, ...o }) + '\n');
  const fn = commands[msg.cmd];
  if (!fn) return reply({ ok: false, error: `unknown command ${msg.cmd}` });
  try {
    reply({ ok: true, result: await fn(msg.args ?? {}) });
  } catch (e) {
    reply({ ok: false, error: String(e?.stack ?? e) });
  }
});
rl.on('close', async () => {
  try {
    if (db) await db.close();
  } finally {
    process.exit(0);
  }
});
