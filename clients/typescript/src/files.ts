import type { AttachmentRecord, RemoteStorageAdapter } from '@powersync/common';

import { WorkerConnectorError } from './errors.js';
import { fetchWithin } from './fetching.js';
import { parseRetryAfter } from './protocol.js';

/** What {@link WorkerStorageAdapter} passes to `fetch`: worker requests (JSON) and the signed URLs (bytes). */
export interface FileFetchInit {
  method: 'GET' | 'POST' | 'PUT';
  headers: Record<string, string>;
  body?: string | ArrayBuffer;
  signal?: AbortSignal;
  /** `'manual'` for the PUT to a signed upload URL: a redirect there is no upload (fetch would
   * re-send it as a body-less GET, whose 200 would read as stored). */
  redirect?: 'manual';
}

/** The subset of a `fetch` response the adapter reads. The global `Response` satisfies it. */
export interface FileFetchResponse {
  readonly status: number;
  readonly headers: { get(name: string): string | null };
  text(): Promise<string>;
  arrayBuffer(): Promise<ArrayBuffer>;
}

/** A `fetch` implementation: `globalThis.fetch`, or any function with this shape. */
export type FileFetchLike = (url: string, init: FileFetchInit) => Promise<FileFetchResponse>;

/** Options of {@link WorkerStorageAdapter}. */
export interface WorkerStorageAdapterOptions {
  /** Base URL of the worker (as for `WorkerConnector`). Required; no default. */
  workerUrl: string;
  /** The user's current session token, `null`/`undefined` when signed out (as for `WorkerConnector`). Required. */
  getSessionToken: () => Promise<string | null | undefined> | string | null | undefined;
  /** The Storage bucket attachments go to. Required; no default. */
  bucket: string;
  /**
   * The object path of an attachment. Default: `<user id>/<attachment.filename>`, the user id
   * being the session token's `sub` (the worker's default path template in service mode, and
   * the usual storage policy's folder in rls mode).
   */
  pathOf?: (attachment: AttachmentRecord, userId: string) => string;
  /** The `fetch` to use. Default: `globalThis.fetch`, looked up at each request. */
  fetch?: FileFetchLike;
  /** Abort a request to the worker after this many ms; 0 = never. Default 60000. */
  requestTimeoutMs?: number;
  /**
   * Abort the transfer of a file's bytes (the PUT or GET of a signed URL) after this many ms;
   * 0 = never. Default 900000 (15 minutes: a 50 MB file at about 0.5 Mbit/s). It covers sending
   * or receiving the whole file, so keep it above what the largest file takes on a slow link.
   */
  transferTimeoutMs?: number;
}

/**
 * A `RemoteStorageAdapter` for PowerSync's attachments (`AttachmentQueue` of `@powersync/common`)
 * that moves files through the worker's file endpoints: the worker checks the session and signs
 * a Supabase Storage URL, the bytes go straight to Storage. No Supabase client or key in the app.
 *
 * Every failure throws a {@link WorkerConnectorError} (`code` = the worker's, e.g.
 * `file_denied`, `file_too_large`, `storage_unavailable`; or `network_error`, `timeout`,
 * `signed_out`, `storage_http_<status>` for the signed URL itself), and the attachment queue
 * retries later, as the SDK does for uploads. Uploads replace an object at the same path, so an
 * upload retried after a lost answer is harmless; deleting a file that is gone succeeds.
 */
export class WorkerStorageAdapter implements RemoteStorageAdapter {
  private readonly baseUrl: string;
  private readonly options: WorkerStorageAdapterOptions;
  private readonly timeoutMs: number;
  private readonly transferTimeoutMs: number;

  constructor(options: WorkerStorageAdapterOptions) {
    if (!options.workerUrl) throw new TypeError('workerUrl is required');
    if (typeof options.getSessionToken !== 'function') throw new TypeError('getSessionToken is required');
    if (!options.bucket) throw new TypeError('bucket is required');
    const milliseconds = (name: string, value: number) => {
      if (!Number.isInteger(value) || value < 0) throw new TypeError(`${name} must be a non-negative integer, got ${value}`);
      return value;
    };
    this.baseUrl = options.workerUrl.replace(/\/+$/, '');
    this.options = options;
    this.timeoutMs = milliseconds('requestTimeoutMs', options.requestTimeoutMs ?? 60_000);
    this.transferTimeoutMs = milliseconds('transferTimeoutMs', options.transferTimeoutMs ?? 900_000);
  }

  async uploadFile(fileData: ArrayBuffer, attachment: AttachmentRecord): Promise<void> {
    const file = {
      ...(await this.file(attachment)),
      content_type: attachment.mediaType || 'application/octet-stream',
      size: fileData.byteLength,
      upsert: true,
    };
    const entry = await this.ask('upload', { files: [file] }, file.session);
    const headers = (entry['headers'] ?? {}) as Record<string, string>;
    const { status, text } = await this.transfer(
      String(entry['url']),
      { method: 'PUT', headers, body: fileData, redirect: 'manual' },
      'PUT signed upload URL',
      async (response) => ({ status: response.status, text: await response.text() }),
    );
    if (!ok(status)) throw storageError('upload', status, text);
    // Storage answers a stored upload `{"Key": "<bucket>/<path>"}`; a 2xx without it came from
    // something in front of Storage (a captive portal, a proxy's page): the file is not stored.
    if (!storedKey(text)) {
      throw new WorkerConnectorError(
        `storage upload: HTTP ${status} without Storage's {"Key": ...}: the file was not stored; will retry`,
        { code: 'storage_unexpected_response', status },
      );
    }
  }

  async downloadFile(attachment: AttachmentRecord): Promise<ArrayBuffer> {
    const file = await this.file(attachment);
    const entry = await this.ask('download', { files: [file] }, file.session);
    const answer = await this.transfer(
      String(entry['url']),
      { method: 'GET', headers: {} },
      'GET signed download URL',
      async (response): Promise<{ bytes: ArrayBuffer } | { status: number; text: string }> =>
        response.status === 200 ? { bytes: await response.arrayBuffer() } : { status: response.status, text: await response.text() },
    );
    if (!('bytes' in answer)) throw storageError('download', answer.status, answer.text);
    return answer.bytes;
  }

  async deleteFile(attachment: AttachmentRecord): Promise<void> {
    const file = await this.file(attachment);
    await this.ask('delete', { files: [file] }, file.session);
  }

  /** The bucket and path of an attachment, with the session token it is asked for with. */
  private async file(attachment: AttachmentRecord): Promise<{ bucket: string; path: string; session: string }> {
    const session = await this.options.getSessionToken();
    if (!session) throw new WorkerConnectorError('signed out: no session token for files', { code: 'signed_out' });
    const userId = subjectOf(session);
    const path = this.options.pathOf ? this.options.pathOf(attachment, userId) : `${userId}/${attachment.filename}`;
    return { bucket: this.options.bucket, path, session };
  }

  /** One request to a file endpoint; answers the entry of the (only) file, or throws. */
  private async ask(
    op: 'upload' | 'download' | 'delete',
    body: { files: Record<string, unknown>[] },
    session: string,
  ): Promise<Record<string, unknown>> {
    const files = body.files.map(({ session: _session, ...file }) => file);
    const response = await this.send(
      `${this.baseUrl}/powersync-files/${op}`,
      {
        method: 'POST',
        headers: { Authorization: `Bearer ${session}`, 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ files }),
      },
      `POST /powersync-files/${op}`,
      async (response) => ({ status: response.status, headers: response.headers, text: await response.text() }),
    );
    const answer = parseJson(response.text) as Record<string, unknown> | undefined;
    const entry = (answer?.['files'] as Record<string, unknown>[] | undefined)?.[0];
    if (response.status === 200 && entry && (op === 'delete' || typeof entry['url'] === 'string')) return entry;
    const code = typeof answer?.['code'] === 'string' ? answer['code'] : response.status === 200 ? 'unexpected_response' : `http_${response.status}`;
    const message = typeof answer?.['error'] === 'string' ? answer['error'] : `answered ${response.status}`;
    throw new WorkerConnectorError(`/powersync-files/${op}: ${message}`, {
      code,
      status: response.status,
      requestId: (answer?.['request_id'] as string | undefined) ?? response.headers.get('X-Request-Id') ?? undefined,
      retryAfterMs: parseRetryAfter(response.headers.get('Retry-After')),
    });
  }

  /**
   * One request to the worker, its answer read by `read` within `requestTimeoutMs` too: a server
   * that sends its head and then nothing is a `timeout`, not a request that never ends.
   */
  private send<T>(url: string, init: FileFetchInit, what: string, read: (response: FileFetchResponse) => Promise<T>): Promise<T> {
    return fetchWithin(this.options.fetch, url, init, this.timeoutMs, `${what} (requestTimeoutMs)`, read);
  }

  /** The transfer of a file's bytes to or from a signed URL, within `transferTimeoutMs`. */
  private transfer<T>(url: string, init: FileFetchInit, what: string, read: (response: FileFetchResponse) => Promise<T>): Promise<T> {
    return fetchWithin(this.options.fetch, url, init, this.transferTimeoutMs, `${what} (transferTimeoutMs)`, read);
  }
}

/** The `sub` of a JWT, read without verifying it (the worker verifies; this only names a folder). */
export function subjectOf(token: string): string {
  const payload = token.split('.')[1];
  try {
    const base64 = payload!.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const json = JSON.parse(new TextDecoder().decode(bytes)) as { sub?: unknown };
    if (typeof json.sub === 'string' && json.sub) return json.sub;
  } catch {
    // fall through
  }
  throw new WorkerConnectorError('the session token has no sub (user id) to name the folder with; pass pathOf', {
    code: 'session_without_sub',
  });
}

/**
 * Storage's refusal of a signed URL. Storage answers its errors with HTTP 400 and the status it
 * means in the body's `statusCode` (a string): `413` over the bucket's size limit, `415` a type
 * the bucket does not allow, `403` an expired or invalid signature; the code names that one.
 */
function storageError(what: string, status: number, text: string): WorkerConnectorError {
  const inner = Number((parseJson(text) as { statusCode?: unknown } | undefined)?.statusCode);
  const meant = status === 400 && Number.isInteger(inner) && inner >= 400 && inner <= 599 ? inner : status;
  return new WorkerConnectorError(`Storage refused the ${what} (${meant}): ${text.slice(0, 200)}`, {
    code: `storage_http_${meant}`,
    status,
  });
}

function ok(status: number): boolean {
  return status >= 200 && status < 300;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** Whether `text` is Storage's answer to a stored upload: a JSON object with a string `Key`. */
function storedKey(text: string): boolean {
  const body = parseJson(text);
  return typeof body === 'object' && body !== null && typeof (body as { Key?: unknown }).Key === 'string';
}
