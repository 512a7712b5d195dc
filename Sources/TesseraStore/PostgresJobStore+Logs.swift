// Read queries for shard logs (`logs`) and for following a job's metrics (`metrics` with `since`): keyset pages over
// an insertion-ordered column, so a client polling with the last cursor it saw gets every new row exactly once.

import LibPQ
import TesseraCore

extension PostgresJobStore {
    /// A job's state and shard count, read before the rows of a following page: every row a shard wrote is
    /// committed before its SHARD_DONE, so once this says the job is finished the page after it misses nothing.
    public func jobProgress(jobID: Int64) throws -> (state: String, shards: Int)? {
        let r = try db.execute("SELECT state::text AS state, shard_count FROM tessera_jobs WHERE id = $1", [.int(jobID)])
        guard r.rowCount == 1, let state = r[0, "state"], let n = r.int(0, "shard_count") else { return nil }
        return (state, Int(n))
    }

    /// The job's log lines (optionally one shard's) with `id > after`, in id (insertion) order, at most `limit`:
    /// the JSON array, its row count and the id of its last row.
    public func logsJSON(jobID: Int64, shard: Int32?, after: Int64, limit: Int) throws -> (json: String, count: Int, last: Int64?) {
        let r = try db.execute(
            """
            SELECT coalesce(json_agg(json_build_object('id', l.id, 'shard', l.shard_idx, 'attempt', l.attempt,
                                                       'time', l.logged_at, 'level', l.level, 'message', l.message)
                                     ORDER BY l.id), '[]'::json)::text AS logs,
                   count(*) AS n, max(l.id) AS last
            FROM (SELECT * FROM tessera_shard_logs
                  WHERE job_id = $1 AND ($2::int IS NULL OR shard_idx = $2) AND id > $3
                  ORDER BY id LIMIT $4) l
            """,
            [.int(jobID), shard.map { .int(Int64($0)) } ?? .null, .int(after), .int(Int64(limit))])
        return (r[0, "logs"]!, Int(r.int(0, "n") ?? 0), r.int(0, "last"))
    }
}

