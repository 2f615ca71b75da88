/**
 * The sample snapshot of docs/monitor-api.md (sample-snapshot.json, made by core/snapshot.py and
 * checked against its schema by tests/test_snapshot.py), a fresh copy per call.
 */
import { Snapshot } from '../src/schema';
import data from './sample-snapshot.json';

export function sample(): Snapshot {
  return JSON.parse(JSON.stringify(data)) as Snapshot;
}
