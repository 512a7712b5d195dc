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

extension PostgresJobStore {
    /// A position in a job's metric rows in commit order (seq, shard, name, step): a following page starts after it.
    public struct MetricCommitCursor: Sendable, Equatable {
        public var seq: Int64
        public var shard: Int32
        public var name: String
        public var step: Int64
        public init(seq: Int64, shard: Int32, name: String, step: Int64) {
            self.seq = seq
            self.shard = shard
            self.name = name
            self.step = step
        }
    }

    /// Metric rows of a job (optionally one shard, one name) in commit order — (seq, shard, name, step), schema v7 —
    /// after `since`, at most `limit`: the JSON array, its row count and the cursor of its last row. A row committed
    /// after a page was read has a larger seq than every row of that page, so polling with the last cursor returns
    /// every point exactly once (a point rewritten by a replay keeps its seq and is not returned again).
    public func metricsByCommitJSON(
        jobID: Int64, shard: Int32?, name: String?, limit: Int, since: MetricCommitCursor?
    ) throws -> (json: String, count: Int, last: MetricCommitCursor?) {
        // `seq >= $5` repeats the row comparison's first column for the BRIN index on seq (a row comparison alone
        // does not use it): a poll reads the block ranges written since the cursor, not the job's whole series.
        let r = try db.execute(
            """
            SELECT coalesce(json_agg(json_build_object('shard', m.shard_idx, 'name', m.name, 'step', m.step,
                                                       'value', m.value, 'attempt', m.attempt, 'seq', m.seq)
                                     ORDER BY m.seq, m.shard_idx, m.name, m.step), '[]'::json)::text AS metrics,
                   count(*) AS n,
                   (array_agg(m.seq ORDER BY m.seq DESC, m.shard_idx DESC, m.name DESC, m.step DESC))[1] AS last_seq,
                   (array_agg(m.shard_idx ORDER BY m.seq DESC, m.shard_idx DESC, m.name DESC, m.step DESC))[1] AS last_shard,
                   (array_agg(m.name ORDER BY m.seq DESC, m.shard_idx DESC, m.name DESC, m.step DESC))[1] AS last_name,
                   (array_agg(m.step ORDER BY m.seq DESC, m.shard_idx DESC, m.name DESC, m.step DESC))[1] AS last_step
            FROM (SELECT * FROM tessera_metrics
                  WHERE job_id = $1 AND ($2::int IS NULL OR shard_idx = $2) AND ($3::text IS NULL OR name = $3)
                    AND seq >= $5::bigint
                    AND ($6::int IS NULL OR (seq, shard_idx, name, step) > ($5::bigint, $6::int, $7::text, $8::bigint))
                  ORDER BY seq, shard_idx, name, step LIMIT $4) m
            """,
            [
                .int(jobID), shard.map { .int(Int64($0)) } ?? .null, name.map { .text($0) } ?? .null, .int(Int64(limit)),
                .int(since?.seq ?? 0), since.map { .int(Int64($0.shard)) } ?? .null, since.map { .text($0.name) } ?? .null,
                since.map { .int($0.step) } ?? .null,
            ]
        )
        var last: MetricCommitCursor?
        if let seq = r.int(0, "last_seq"), let s = r[0, "last_shard"].flatMap({ Int32($0) }), let name = r[0, "last_name"],
            let step = r.int(0, "last_step")
        {
            last = MetricCommitCursor(seq: seq, shard: s, name: name, step: step)
        }
        return (r[0, "metrics"]!, Int(r.int(0, "n") ?? 0), last)
    }
}
