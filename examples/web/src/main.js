// The web demo (docs/web.md): a to-do list in the browser with @powersync/web and our connector
// (clients/typescript). Every sync and upload goes through the worker: the connector gets the
// PowerSync token from <worker>/powersync-token and uploads the local writes to
// <worker>/powersync-upload; the SDK streams the user's rows from the PowerSync service the
// token names.
//
// Settings come from the page's address:
//   ?worker=<url>      the worker (default http://127.0.0.1:8787, `make dev`'s)
//   #session=<token>   a Supabase session access token (`make dev` prints such an address); kept
//                      in this browser's localStorage and removed from the address bar
// The page exposes `window.demo` (the database, what the connector reported) for the browser
// tests and for poking at it from the console.
import { column, PowerSyncDatabase, Schema, Table } from '@powersync/web';
import { WorkerConnector } from '@powersync-supabase-worker/connector';

// The demo schema (tests/sql/test_schema.sql) as the SDK stores it: booleans as 0/1.
const schema = new Schema({
  lists: new Table({ created_at: column.text, name: column.text, owner_id: column.text }),
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
  }),
});

const SESSION_KEY = 'powersync-worker-demo.session';
const params = new URLSearchParams(location.search);
// The address may choose the worker and hand over a session only on a page served from this
// machine (`make dev`, the tests). A hosted copy takes its worker from the build
// (`VITE_WORKER_URL`): else a link `?worker=https://evil.example` would send a returning
// user's session and queued writes there, and `#session=` would sign them in as someone else.
const local = ['127.0.0.1', 'localhost', '[::1]'].includes(location.hostname);
const workerUrl =
  (local && params.get('worker')) || import.meta.env.VITE_WORKER_URL || 'http://127.0.0.1:8787';
// How long the SDK waits before retrying a failed upload or a lost connection (its default is 5 s).
const retryDelayMs = Number(params.get('retryDelayMs') || 2000);

const $ = (id) => document.getElementById(id);
$('worker-url').textContent = workerUrl;

// --- The session ---------------------------------------------------------------------------------

const fromHash = local ? new URLSearchParams(location.hash.slice(1)).get('session') : null;
if (fromHash) {
  localStorage.setItem(SESSION_KEY, fromHash);
  history.replaceState(null, '', location.pathname + location.search);
}
let session = localStorage.getItem(SESSION_KEY);

/** The `sub` of a session token, read without verifying it (the worker verifies it). */
function userIdOf(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(payload)).sub || null;
  } catch {
    return null;
  }
}

$('sign-in').addEventListener('submit', (event) => {
  event.preventDefault();
  const token = $('token-input').value.trim();
  if (!userIdOf(token)) {
    alert('That is not a session token (a JWT with a sub).');
    return;
  }
  localStorage.setItem(SESSION_KEY, token);
  location.reload();
});

const demo = {
  workerUrl,
  userId: null,
  db: null,
  /** One entry per transaction the worker rejected for good (onFatalError's report). */
  fatal: [],
  /** One entry per transaction the worker applied but whose PATCH/DELETE changed no row. */
  unchanged: [],
  /** What the last upload request answered: {at, status, code, results} or {at, error}. */
  lastUpload: null,
  uploads: 0,
  ready: null,
};
window.demo = demo;

if (!session || !userIdOf(session)) {
  $('signed-out').hidden = false;
} else {
  demo.ready = start(session);
}

// --- The database and the connector ---------------------------------------------------------------

async function start(token) {
  const userId = userIdOf(token);
  demo.userId = userId;
  $('user').textContent = userId;
  $('signed-in').hidden = false;

  // One local database per user: another user signing in on this browser never sees these rows.
  const db = new PowerSyncDatabase({ schema, database: { dbFilename: `todos-${userId}.db` } });
  demo.db = db;

  // Records what each upload request answered, without changing it (the connector's `fetch` option).
  const recordingFetch = async (url, init) => {
    const isUpload = url.endsWith('/powersync-upload');
    try {
      const response = await fetch(url, init);
      if (isUpload) {
        const body = await response.clone().json().catch(() => null);
        demo.uploads += 1;
        demo.lastUpload = {
          at: new Date(),
          status: response.status,
          code: body?.code ?? null,
          results: Array.isArray(body?.results) ? body.results.map((r) => r?.status) : null,
        };
        renderLastUpload();
      }
      return response;
    } catch (error) {
      if (isUpload) {
        demo.lastUpload = { at: new Date(), error: String(error?.message ?? error) };
        renderLastUpload();
      }
      throw error;
    }
  };

  const connector = new WorkerConnector({
    workerUrl,
    getSessionToken: () => session,
    fetch: recordingFetch,
    onFatalError: ({ transactionId, failedOperation, failedEntry }) => {
      // The transaction leaves the upload queue after this returns (throw to keep it queued).
      demo.fatal.push({
        transactionId,
        code: failedOperation?.code ?? null,
        message: failedOperation?.message ?? null,
        entry: failedEntry ? { op: failedEntry.op, table: failedEntry.table, id: failedEntry.id } : null,
      });
      renderFatal();
    },
    onUnchanged: ({ transactionId, unchangedEntries }) => {
      demo.unchanged.push({
        transactionId,
        entries: unchangedEntries.map((e) => ({ op: e.op, table: e.table, id: e.id })),
      });
    },
  });
  demo.connector = connector;

  await db.init();
  db.registerListener({ statusChanged: renderStatus });
  renderStatus(db.currentStatus);
  watchRows(db);
  setInterval(() => refreshQueue(db), 500);
  wireActions(db, connector, userId);
  await db.connect(connector, { retryDelayMs });
  return db;
}

// --- Rendering -------------------------------------------------------------------------------------

function renderStatus(status) {
  const el = $('sync-status');
  const flow = status.dataFlowStatus ?? {};
  const error = flow.downloadError ?? flow.uploadError;
  let state = status.connected ? 'connected' : status.connecting ? 'connecting' : 'offline';
  let text = state;
  if (status.connected && flow.downloading) text += ', downloading';
  if (flow.uploading) text += ', uploading';
  if (error) text += ` (${error.message ?? error})`;
  el.dataset.state = state;
  el.textContent = text;
  $('last-synced').textContent = status.lastSyncedAt ? status.lastSyncedAt.toLocaleTimeString() : 'never';
  $('toggle-connection').textContent = status.connected || status.connecting ? 'Go offline' : 'Go online';
}

async function refreshQueue(db) {
  const stats = await db.getUploadQueueStats();
  const el = $('queue-count');
  el.dataset.count = String(stats.count);
  el.textContent = stats.count === 1 ? '1 change waiting' : `${stats.count} changes waiting`;
}

function renderLastUpload() {
  const u = demo.lastUpload;
  const el = $('last-upload');
  if (!u) return;
  const time = u.at.toLocaleTimeString();
  if (u.error) {
    el.dataset.outcome = 'network_error';
    el.textContent = `${time}: no answer (${u.error}); kept queued, retried`;
  } else if (u.results) {
    el.dataset.outcome = u.results.join(',');
    el.textContent = `${time}: HTTP ${u.status}, ${u.results.length} transaction(s): ${u.results.join(', ')}`;
  } else {
    el.dataset.outcome = u.code ?? String(u.status);
    el.textContent = `${time}: HTTP ${u.status} ${u.code ?? ''}; kept queued, retried`;
  }
}

function renderFatal() {
  $('fatal-panel').hidden = demo.fatal.length === 0;
  const list = $('fatal-list');
  list.replaceChildren(
    ...demo.fatal.map((f) => {
      const li = document.createElement('li');
      const what = f.entry ? `${f.entry.op} ${f.entry.table}/${f.entry.id}` : `transaction ${f.transactionId}`;
      li.textContent = `${what}: ${f.code ?? 'rejected'} ${f.message ?? ''}`;
      return li;
    }),
  );
}

let lists = [];
let todos = [];

function watchRows(db) {
  db.watch('SELECT * FROM lists ORDER BY created_at, id', [], {
    onResult: (r) => { lists = r.rows?._array ?? []; renderLists(db); },
    onError: (e) => console.warn('watch lists', e),
  });
  db.watch('SELECT * FROM todos ORDER BY created_at, id', [], {
    onResult: (r) => { todos = r.rows?._array ?? []; renderLists(db); },
    onError: (e) => console.warn('watch todos', e),
  });
}

// One element per list, kept across renders and moved only when the order changes: a half-typed
// to-do keeps its text and its focus when rows arrive (moving an element, even to where it is
// already, takes the focus from the field in it, and later keystrokes go nowhere).
const listElements = new Map();

function renderLists(db) {
  const container = $('lists');
  const shown = new Set(lists.map((list) => list.id));
  for (const [id, el] of listElements) {
    if (!shown.has(id)) {
      el.remove();
      listElements.delete(id);
    }
  }
  let previous = null;
  for (const list of lists) {
    let el = listElements.get(list.id);
    if (!el) {
      el = listElement(db, list.id);
      listElements.set(list.id, el);
    }
    el.querySelector('.name').textContent = list.name;
    const mine = todos.filter((t) => t.list_id === list.id);
    el.querySelector('.todos').replaceChildren(...mine.map((t) => todoElement(db, t)));
    const at = previous ? previous.nextSibling : container.firstChild;
    if (el !== at) container.insertBefore(el, at); // the query's order
    previous = el;
  }
}

function listElement(db, listId) {
  const el = document.createElement('div');
  el.className = 'list';
  el.dataset.id = listId;
  el.innerHTML = `
    <h3><span class="name"></span><button type="button" class="delete" title="Delete list">×</button></h3>
    <ul class="todos"></ul>
    <form class="new-todo">
      <input name="description" placeholder="New to-do" required />
      <input name="priority" type="number" value="1" title="Priority (the table accepts 0 to 5)" />
      <button type="submit">Add</button>
    </form>`;
  el.querySelector('.delete').addEventListener('click', () =>
    db.writeTransaction(async (tx) => {
      await tx.execute('DELETE FROM todos WHERE list_id = ?', [listId]);
      await tx.execute('DELETE FROM lists WHERE id = ?', [listId]);
    }),
  );
  el.querySelector('.new-todo').addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = event.target;
    const description = form.description.value.trim();
    const priority = form.priority.value === '' ? null : Number(form.priority.value);
    form.description.value = '';
    await db.execute(
      'INSERT INTO todos (id, created_at, description, completed, created_by, list_id, priority) VALUES (?, ?, ?, 0, ?, ?, ?)',
      [crypto.randomUUID(), new Date().toISOString(), description, demo.userId, listId, priority],
    );
  });
  return el;
}

function todoElement(db, todo) {
  const li = document.createElement('li');
  li.dataset.id = todo.id;
  li.className = todo.completed ? 'done' : '';
  const box = document.createElement('input');
  box.type = 'checkbox';
  box.checked = !!todo.completed;
  box.addEventListener('change', () =>
    db.execute('UPDATE todos SET completed = ?, completed_at = ?, completed_by = ? WHERE id = ?', box.checked
      ? [1, new Date().toISOString(), demo.userId, todo.id]
      : [0, null, null, todo.id]),
  );
  const description = document.createElement('span');
  description.className = 'description';
  description.textContent = todo.description;
  const priority = document.createElement('span');
  priority.className = 'priority';
  priority.textContent = todo.priority == null ? '' : `priority ${todo.priority}`;
  const del = document.createElement('button');
  del.type = 'button';
  del.className = 'delete';
  del.title = 'Delete';
  del.textContent = '×';
  del.addEventListener('click', () => db.execute('DELETE FROM todos WHERE id = ?', [todo.id]));
  li.append(box, description, priority, del);
  return li;
}

// --- Actions ---------------------------------------------------------------------------------------

function wireActions(db, connector, userId) {
  $('new-list').addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = $('new-list-name').value.trim();
    $('new-list-name').value = '';
    await db.execute('INSERT INTO lists (id, created_at, name, owner_id) VALUES (?, ?, ?, ?)',
      [crypto.randomUUID(), new Date().toISOString(), name, userId]);
  });
  // Offline and back: local writes keep working and wait in the upload queue.
  $('toggle-connection').addEventListener('click', async () => {
    const s = db.currentStatus;
    if (s.connected || s.connecting) await db.disconnect();
    else await db.connect(connector, { retryDelayMs });
  });
  $('sign-out').addEventListener('click', async () => {
    // Clears this user's local database (queued writes included) and forgets the session.
    await db.disconnectAndClear();
    localStorage.removeItem(SESSION_KEY);
    session = null;
    location.reload();
  });
}
