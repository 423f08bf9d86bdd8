/// PowerSync backend connector for powersync-supabase-worker (Flutter and Dart apps).
///
/// ```dart
/// final connector = WorkerConnector(
///   workerUrl: 'https://powersync-supabase-worker.example.workers.dev',
///   getSessionToken: () async => Supabase.instance.client.auth.currentSession?.accessToken,
/// );
/// await db.connect(connector: connector);
/// ```
library powersync_supabase_worker;

export 'src/connector.dart';
export 'src/protocol.dart';
