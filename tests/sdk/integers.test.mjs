// The official Node SDK (@powersync/node) with our connector, no worker: what the connector sends
// for an integer the local database holds exactly but a JS number cannot (|n| > 2^53). SQLite holds
// 9007199254740993 exactly and PowerSync writes it exactly into ps_crud's JSON text, but the SDK's
// CrudEntry parses that text with JSON.parse (9007199254740992); the connector reads the digits
// again (clients/typescript/src/integers.ts). `make test-sdk` runs it (after `make sdk`).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { column, PowerSyncDatabase, Schema, Table } from '@powersync/node';
import { WorkerConnector } from '@powersync-supabase-worker/connector';

const BIG = '9007199254740993'; // 2^53 + 1

async function withDatabase(trackPrevious, body) {
  const dir = mkdtempSync(join(tmpdir(), 'audit-bigint-'));
  const schema = new Schema({
    todos: new Table({ description: column.text, priority: column.integer }, trackPrevious ? { trackPrevious: true } : {}),
  });
  const db = new PowerSyncDatabase({ schema, database: { dbFilename: join(dir, 'app.db') } });
  try {
    await db.init();
    await body(db);
  } finally {
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A connector whose fetch records each upload body and answers every transaction `success`. */
function recordingConnector() {
  const bodies = [];
  const connector = new WorkerConnector({
    workerUrl: 'https://worker.example.test',
    getSessionToken: () => 'session',
    reportQueue: false,
    fetch: async (_url, init) => {
      bodies.push(init.body);
      const sent = JSON.parse(init.body);
      const results = sent.transactions.map((t) => ({ status: 'success', transaction_id: t.transaction_id }));
      return new Response(JSON.stringify({ results }), { status: 200, headers: { 'Content-Type': 'application/json' } });
    },
  });
  return { connector, bodies };
}

test('a PUT of an integer above 2^53 is uploaded as the value the local database holds', async () => {
  await withDatabase(false, async (db) => {
    await db.execute(`INSERT INTO todos (id, description, priority) VALUES ('r1', 'x', ${BIG})`);
    const [local] = await db.getAll('SELECT CAST(priority AS TEXT) AS p FROM todos');
    assert.equal(local.p, BIG, 'SQLite holds it exactly');
    const [raw] = await db.getAll('SELECT data FROM ps_crud');
    assert.ok(raw.data.includes(BIG), `ps_crud holds it exactly: ${raw.data}`);

    const { connector, bodies } = recordingConnector();
    await connector.uploadData(db);
    assert.equal(bodies.length, 1);
    assert.ok(bodies[0].includes(`"priority":${BIG}`), `uploaded: ${bodies[0]}`);
  });
});

test('the previous values of a DELETE carry the integer the row held (conflict detection compares them)', async () => {
  await withDatabase(true, async (db) => {
    await db.execute(`INSERT INTO todos (id, description, priority) VALUES ('r1', 'x', ${BIG})`);
    const first = recordingConnector();
    await first.connector.uploadData(db); // the PUT, answered success: out of the queue
    await db.execute("DELETE FROM todos WHERE id = 'r1'");
    const [raw] = await db.getAll('SELECT data FROM ps_crud');
    assert.ok(raw.data.includes(BIG), `ps_crud's old values hold it exactly: ${raw.data}`);

    const { connector, bodies } = recordingConnector();
    await connector.uploadData(db);
    const entry = JSON.parse(bodies[0].replace(/:(\d{16,})/g, ':"$1"')).transactions[0].crud[0];
    assert.equal(entry.op, 'DELETE');
    assert.equal(entry.previous_values?.priority, BIG, `previous_values sent: ${bodies[0]}`);
  });
});
