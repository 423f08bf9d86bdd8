import 'package:powersync_core/powersync_core.dart';
import 'package:powersync_supabase_worker/powersync_supabase_worker.dart';
import 'package:test/test.dart';

import 'fakes.dart';

void main() {
  group('planEntry', () {
    test('data from opData, none for DELETE; previous values for PATCH and DELETE only', () {
      final put = CrudEntry(1, UpdateType.put, 'todos', 'a', 1, {'x': 1}, previousValues: {'x': 0}, metadata: 'm');
      final delete = CrudEntry(2, UpdateType.delete, 'todos', 'b', 1, {'ignored': true}, previousValues: {'x': null});
      final patch = CrudEntry(3, UpdateType.patch, 'lists', 'c', null, null);
      expect(planEntry(put), {'op': 'PUT', 'table': 'todos', 'id': 'a', 'data': {'x': 1}, 'metadata': 'm'});
      expect(planEntry(delete), {'op': 'DELETE', 'table': 'todos', 'id': 'b', 'previous_values': {'x': null}});
      expect(planEntry(patch), {'op': 'PATCH', 'table': 'lists', 'id': 'c'});
    });
  });

  group('uploadBodyText', () {
    test('non-finite numbers as their words, everything else as jsonEncode writes it', () {
      final body = {
        'data': {'a': double.infinity, 'b': double.negativeInfinity, 'c': double.nan, 'd': 1.5, 'e': null, 'f': 'x'},
      };
      expect(uploadBodyText(body), '{"data":{"a":"Infinity","b":"-Infinity","c":"NaN","d":1.5,"e":null,"f":"x"}}');
    });
  });

  group('sendableBefore', () {
    test('k for a 400 invalid_body at transactions[k] with 0 < k < sent, else null', () {
      int? at(Object? field, {int status = 400, String code = 'invalid_body'}) =>
          sendableBefore(status, {'code': code, 'field': field}, 5);
      expect(at('transactions[3].crud[0].op'), 3);
      expect(at('transactions[1]'), 1);
      for (final none in [
        at('transactions[0].crud[0].op'),
        at('transactions[5].crud[0]'),
        at('client_id'),
        at(7),
        at('transactions[2]', status: 413),
        at('transactions[2]', code: 'other'),
        sendableBefore(400, null, 5),
      ]) {
        expect(none, isNull);
      }
    });
  });

  group('parseRetryAfter', () {
    test('seconds and HTTP dates; anything else is null', () {
      expect(parseRetryAfter('5'), 5000);
      expect(parseRetryAfter('Sun, 06 Nov 1994 08:49:37 GMT', now: DateTime.utc(1994, 11, 6, 8, 49, 30)), 7000);
      expect(parseRetryAfter('Sun, 06 Nov 1994 08:49:37 GMT', now: DateTime.utc(2000)), 0);
      expect(parseRetryAfter('soon'), isNull);
      expect(parseRetryAfter(null), isNull);
    });

    test('more seconds than an int holds are no usable wait, never a FormatException', () {
      expect(parseRetryAfter('99999999999999999999'), isNull);
      expect(parseRetryAfter('000000000086400'), 86400000);
    });
  });

  group('interpretUploadResponse', () {
    test('only 200 and 503 carry results', () {
      final v = interpretUploadResponse(401, {'code': 'session_expired'}, [1]);
      expect([v.completable, v.next, v.reasonCode], [0, 'retry', 'session_expired']);
      // a body with final results completes nothing under any other status
      for (final status in [201, 204, 400, 401, 403, 404, 409, 413, 429, 500, 502, 504]) {
        final other = interpretUploadResponse(status, results([['success', 1]]), [1]);
        expect(other.completable, 0, reason: 'HTTP $status');
      }
    });

    test('the leading final results are completable, conflict included', () {
      final v = interpretUploadResponse(
          200, results([['success', 1], ['conflict', 2], ['fatal_error', null]]), [1, 2, null]);
      expect([v.completable, v.next], [3, 'done']);
    });

    test('a final prefix followed only by not_attempted continues at once', () {
      final v = interpretUploadResponse(503, results([['success', 1], ['not_attempted', 2]]), [1, 2]);
      expect([v.completable, v.next], [1, 'continue']);
    });

    test('results not matching what was sent are not trusted', () {
      expect(interpretUploadResponse(200, results([['success', 2]]), [1]).completable, 0);
      expect(interpretUploadResponse(200, null, [1]).reasonMessage, contains('not JSON'));
    });

    test('unchanged indexes are sorted, unique, non-negative integers', () {
      final v = interpretUploadResponse(
          200,
          results([
            ['success', 1, {
              'unchanged': [3, 1, 3, -1, 'x']
            }]
          ]),
          [1]);
      expect(v.results!.single.unchanged, [1, 3]);
    });
  });
}
