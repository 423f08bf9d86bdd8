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
import { AttachmentQueue, AttachmentTable, column, NodeFileSystemAdapter, PowerSyncDatabase, Schema, Table } from '@powersync/node';
import { WorkerConnector, WorkerStorageAdapter } from '@powersync-supabase-worker/connector';

// The demo schema (tests/sql/test_schema.sql), as the SDK sees it: booleans are 0/1 and JSON
// columns are text, as in every PowerSync app. `trackPrevious` (open's option): the SDK records
// each PATCH's and DELETE's previous values (`CrudEntry.previousValues`), for conflict detection.
const tablesOf = (trackPrevious) => ({
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
// With the SDK's attachment queue: its local-only `attachments` table too.
const schemaOf = (trackPrevious, withAttachments) =>
  new Schema(withAttachments ? { ...tablesOf(trackPrevious), attachments: new AttachmentTable() } : tablesOf(trackPrevious));

let db = null;
let connector = null;
let sessionToken = null;
const fatalReports = [];
const credentials = []; // {at, expiresAt} per successful fetchCredentials
const uploadErrors = [];
const uploads = []; // {at, ms} per uploadData call that finished without throwing
// The attachment queue (commands attachments, saveFile, watch, ...): what the app wants locally,
// whether its network is "offline" (every request of the storage adapter fails as fetch does
// without a network), and every request the adapter made ({method, url kind, status or error}).
let queue = null;
let wanted = [];
let onWatched = null;
let offline = false;
const fileRequests = [];

const commands = {
  async open({ path, workerUrl, token, maxTransactionsPerRequest, withAttachments = false, trackPrevious = false }) {
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
    db = new PowerSyncDatabase({ schema: schemaOf(trackPrevious, withAttachments), database: { dbFilename: path } });
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

  // Starts the SDK's AttachmentQueue with our WorkerStorageAdapter (files through the worker).
  async attachments({ workerUrl, bucket, directory, syncIntervalMs = 500 }) {
    const remoteStorage = new WorkerStorageAdapter({
      workerUrl,
      bucket,
      getSessionToken: async () => sessionToken,
      fetch: async (url, init) => {
        const kind = url.startsWith(workerUrl) ? new URL(url).pathname : `signed ${init.method}`;
        if (offline) {
          fileRequests.push({ kind, error: 'offline' });
          throw new TypeError('fetch failed (offline)');
        }
        const response = await fetch(url, init);
        fileRequests.push({ kind, status: response.status });
        return response;
      },
    });
    queue = new AttachmentQueue({
      db,
      localStorage: new NodeFileSystemAdapter(directory),
      remoteStorage,
      syncIntervalMs,
      watchAttachments: (onUpdate) => {
        onWatched = onUpdate;
        onUpdate(wanted);
      },
    });
    await queue.startSync();
    return true;
  },

  async offline({ value }) {
    offline = value;
    return true;
  },

  // Saves a file locally (queued for upload) and marks it wanted.
  async saveFile({ id, base64, mediaType, fileExtension }) {
    wanted = [...wanted.filter((w) => w.id !== id), { id, fileExtension, mediaType }];
    const data = Uint8Array.from(Buffer.from(base64, 'base64')).buffer;
    const record = await queue.saveFile({ data, fileExtension, mediaType, id });
    await onWatched?.(wanted);
    return { id: record.id, filename: record.filename, state: record.state };
  },

  // The attachments the app references (as a query over its rows would give them).
  async watch({ items }) {
    wanted = items;
    await onWatched?.(wanted);
    return true;
  },

  async deleteAttachment({ id }) {
    wanted = wanted.filter((w) => w.id !== id);
    await queue.deleteFile({ id });
    return true;
  },

  async attachmentRecords() {
    return db.getAll('select id, filename, local_uri, state, has_synced, size, media_type from attachments order by id');
  },

  // The bytes of a local attachment file, base64.
  async readLocal({ id }) {
    const row = await db.getOptional('select local_uri from attachments where id = ?', [id]);
    if (!row?.local_uri) return null;
    const data = await queue.localStorage.readFile(row.local_uri);
    return Buffer.from(data).toString('base64');
  },

  async fileRequests() {
    return fileRequests;
  },

  async records() {
    return { fatalReports, credentials, uploadErrors, uploads };
  },

  async close() {
    if (queue) await queue.stopSync();
    queue = null;
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
