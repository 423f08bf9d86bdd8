/**
 * Errors thrown by {@link WorkerConnector}. The PowerSync SDK retries after any thrown error
 * (credentials and uploads alike), so these carry what an app may want to show or log.
 */
export class WorkerConnectorError extends Error {
  /**
   * A stable code: the worker's own `code` (`session_expired`, `payload_too_large`,
   * `invalid_body`, ...), the outcome that stopped an upload (`retryable_error`, `not_attempted`),
   * or one of this package's: `network_error`, `timeout`, `signed_out`, `unexpected_response`,
   * `http_<status>` (an error answer without a code).
   */
  readonly code: string;
  /** The HTTP status of the worker's answer; `null` when there was none (network error, timeout, signed out). */
  readonly status: number | null;
  /** The worker's `request_id` (also its `X-Request-Id` header), to find the request in the worker's logs. */
  readonly requestId: string | undefined;
  /** How long the worker asked the client to wait before retrying (`Retry-After` / `retry_after_ms`), in ms. */
  readonly retryAfterMs: number | undefined;
  /** How many transactions of the failed upload request were completed before this error (a final prefix). */
  readonly completedTransactions: number;
  /** The underlying error (e.g. what `fetch` threw), if any. */
  override readonly cause: unknown;

  constructor(
    message: string,
    details: {
      code: string;
      status?: number | null;
      requestId?: string | undefined;
      retryAfterMs?: number | undefined;
      completedTransactions?: number;
      cause?: unknown;
    },
  ) {
    super(message);
    this.name = 'WorkerConnectorError';
    this.code = details.code;
    this.status = details.status ?? null;
    this.requestId = details.requestId;
    this.retryAfterMs = details.retryAfterMs;
    this.completedTransactions = details.completedTransactions ?? 0;
    this.cause = details.cause;
  }
}
