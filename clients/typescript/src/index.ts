/**
 * PowerSync backend connector for powersync-supabase-worker.
 *
 * @packageDocumentation
 */
export { QUEUE_HEADER, WorkerConnector } from './connector.js';
export type {
  FatalErrorReport,
  FetchInitLike,
  FetchLike,
  FetchResponseLike,
  UnchangedReport,
  UploadQueue,
  WorkerConnectorOptions,
} from './connector.js';
export { WorkerConnectorError } from './errors.js';
export { WorkerStorageAdapter, subjectOf } from './files.js';
export type { FileFetchInit, FileFetchLike, FileFetchResponse, WorkerStorageAdapterOptions } from './files.js';
export {
  interpretUploadResponse,
  parseRetryAfter,
  planUploadBody,
  sendableBefore,
  sentTransactionIds,
  uploadBodyText,
} from './protocol.js';
export type {
  FailedOperation,
  TransactionLike,
  TransactionResult,
  TransactionStatus,
  UploadBody,
  UploadEntry,
  UploadInterpretation,
  UploadTransaction,
} from './protocol.js';
